//! Fuzzes the netlink reply parsers (see `check.rs`).
#![no_main]

#[allow(dead_code)]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::replies(data));
