//! The property the configuration fuzz target checks, shared with the
//! stable test that replays the committed corpus (`tests/fuzz_corpus.rs`).

use ferrolb_config::Config;

/// Any text: never a panic; an error lists at least one problem; a valid
/// configuration summarises without a panic.
pub fn check(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    match Config::from_yaml(&text) {
        Ok(c) => {
            let _ = c.summary();
            let _ = c.refusal();
        }
        Err(e) => assert!(!e.0.is_empty(), "an error without a problem"),
    }
}
