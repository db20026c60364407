#![no_main]
//! See `twinrx::fuzz::link` (src/fuzz.rs).
libfuzzer_sys::fuzz_target!(|data: &[u8]| twinrx::fuzz::link(data));
