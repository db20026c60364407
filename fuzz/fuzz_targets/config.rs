#![no_main]
//! See `twinrx::fuzz::config` (src/fuzz.rs).
libfuzzer_sys::fuzz_target!(|data: &[u8]| twinrx::fuzz::config(data));
