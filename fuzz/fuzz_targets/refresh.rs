//! `cargo fuzz run refresh`: see `fuzz_common::refresh` for the input format and the oracle.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_common::refresh::run(data));
