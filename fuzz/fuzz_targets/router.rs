//! Path normalisation and routing: `gatelet_fuzz::route` (a method selector byte, then a path).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| gatelet_fuzz::route(data));
