//! `cargo fuzz run cjson`: see `fuzz_common::cjson` for the input format and the oracle.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_common::cjson::run(data));
