#![no_main]
//! See `twinrx::fuzz::syslog` (src/fuzz.rs).
libfuzzer_sys::fuzz_target!(|data: &[u8]| twinrx::fuzz::syslog(data));
