//! Device configuration: `gatelet_fuzz::config` (gatelet.toml text, then NUL and environment lines).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| gatelet_fuzz::config(data));
