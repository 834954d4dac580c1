//! `cargo fuzz run verify_roles`: see `fuzz_common::verify` for the input format and the oracle.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_common::verify::run(data));
