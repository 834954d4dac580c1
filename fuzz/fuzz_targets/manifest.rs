//! `cargo fuzz run manifest`: see `fuzz_common::manifest` for the input format and the oracle.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_common::manifest::run(data));
