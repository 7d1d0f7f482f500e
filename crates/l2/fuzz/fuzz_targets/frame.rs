//! Fuzzes the ARP/NDP frame parser (see `check.rs`).
#![no_main]

#[allow(dead_code)]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::frame(data));
