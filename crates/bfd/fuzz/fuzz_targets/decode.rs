//! Fuzzes the BFD control packet decoder (see `check.rs`).
#![no_main]

mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::check(data));
