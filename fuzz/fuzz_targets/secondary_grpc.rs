//! `cargo fuzz run secondary_grpc`: see `fuzz_common::secondary` for the input format and the oracle.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_common::secondary::run(data));
