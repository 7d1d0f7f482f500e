//! The properties the layer 2 fuzz targets check, shared with the stable
//! test that replays the committed corpora (`tests/fuzz_corpus.rs`).

use ferrolb_l2::auth::Keys;
use ferrolb_l2::membership::Heartbeat;
use ferrolb_l2::wire::{emit, parse};

/// A key for the signed path.
pub const KEY: &str = "fuzzing-key-0123456789abcdef0123";

/// Heartbeats: never a panic, with or without keys; what decodes without a
/// key re-encodes to a heartbeat that decodes the same, and signs and
/// verifies with a key; nothing random verifies with a key.
pub fn heartbeat(data: &[u8]) {
    let none = Keys::none();
    let keys = Keys::from_text(KEY).expect("a valid key");
    if let Ok(hb) = Heartbeat::decode(data, &none) {
        let again = hb.encode(&none);
        assert_eq!(Heartbeat::decode(&again, &none), Ok(hb.clone()));
        let signed = hb.encode(&keys);
        assert_eq!(Heartbeat::decode(&signed, &keys), Ok(hb));
    }
    // A random input that verifies would be a forged MAC.
    if let Ok(hb) = Heartbeat::decode(data, &keys) {
        assert_eq!(hb.encode(&keys), data, "only our own signature verifies");
    }
}

/// ARP and neighbour discovery frames: never a panic; what parses emits
/// bytes that parse to the same frame.
pub fn frame(data: &[u8]) {
    if let Ok(f) = parse(data) {
        let again = emit(&f);
        assert_eq!(parse(&again), Ok(f));
    }
}
