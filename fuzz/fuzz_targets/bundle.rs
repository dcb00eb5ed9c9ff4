//! Bundle decode and verify: `gatelet_fuzz::bundle` (raw bytes as a bundle file, then their payload signed with the trusted vector key).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| gatelet_fuzz::bundle(data));
