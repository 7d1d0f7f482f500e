//! Fuzzes the PROXY protocol header writers against an independent parser
//! (see `check.rs`).
#![no_main]

#[allow(dead_code)]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::proxy(data));
