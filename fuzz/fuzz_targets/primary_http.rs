//! `cargo fuzz run primary_http`: see `fuzz_common::http` for the input format and the oracle.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_common::http::run(data));
