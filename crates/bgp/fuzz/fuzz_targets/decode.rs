//! Fuzzes the BGP decoder (see `check.rs` for the property).
#![no_main]

mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::check(data));
