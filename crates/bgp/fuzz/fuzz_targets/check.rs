//! The property the decoder fuzz target checks, shared with the stable test
//! that replays the committed corpus (`tests/fuzz_corpus.rs`).

use ferrolb_bgp::{decode, encode, Wire, MAX_LEN};

/// Decodes `data` on a 4-octet and a 2-octet session: never a panic, and
/// whatever is accepted survives encode and decode unchanged.
pub fn check(data: &[u8]) {
    for s in [Wire { four_octet: true }, Wire { four_octet: false }] {
        let Ok(Some((msg, used))) = decode(data, &s) else {
            continue;
        };
        assert!(used <= data.len());
        let again = encode(&msg, &s);
        if again.len() > MAX_LEN {
            // Re-encoding may grow a message (e.g. AS4_PATH added); not a decoder bug.
            continue;
        }
        let (back, n) = decode(&again, &s)
            .expect("re-encoded message decodes")
            .expect("re-encoded message is complete");
        assert_eq!(n, again.len());
        assert_eq!(back, msg);
    }
}
