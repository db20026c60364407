#![no_main]
//! See `twinrx::fuzz::snmp` (src/fuzz.rs).
libfuzzer_sys::fuzz_target!(|data: &[u8]| twinrx::fuzz::snmp(data));
