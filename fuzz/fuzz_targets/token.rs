//! Token parse and validate: `gatelet_fuzz::token` (a bearer token, or a header and payload the harness signs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| gatelet_fuzz::token(data));
