//! HTTP head framing guard: `gatelet_fuzz::framing` (two bytes of read split, then the client's bytes).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| gatelet_fuzz::framing(data));
