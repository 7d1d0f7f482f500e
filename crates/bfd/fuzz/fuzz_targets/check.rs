//! The property the BFD fuzz target checks, shared with the stable test
//! that replays the committed corpus (`tests/fuzz_corpus.rs`).

use ferrolb_bfd::Control;

/// Control packets: never a panic; what decodes encodes to a packet that
/// decodes the same.
pub fn check(data: &[u8]) {
    if let Ok(c) = Control::decode(data) {
        let again = c.encode();
        assert_eq!(Control::decode(&again), Ok(c));
    }
}
