//! Fuzzes the configuration parser and validator (see `check.rs`).
#![no_main]

mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::check(data));
