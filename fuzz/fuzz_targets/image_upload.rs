//! `cargo fuzz run image_upload`: see `fuzz_common::upload` for the input format and the oracle.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_common::upload::run(data));
