//! Heartbeat authentication: HMAC-SHA256 over the whole datagram with a
//! shared key, so a host on the segment can neither forge a heartbeat (keep
//! a dead owner "alive", claim a VIP for a node) nor, with the replay
//! window of [`crate::membership`], repeat one.
//!
//! Keys come as text, one per line (a Kubernetes Secret's file or
//! `failover.keyFile`): the first line signs, every line verifies, so a key
//! is rotated in three rolling steps without a moment where two nodes
//! disagree (docs/l2.md). A datagram names its key by a 4-byte id, the
//! first bytes of the key's SHA-256, so no key is tried in vain.

use ring::hmac;

/// Length of the MAC appended to a signed heartbeat.
pub const MAC_LEN: usize = 32;

/// Fewest bytes a key may have: 128 bits.
pub const MIN_KEY_BYTES: usize = 16;

/// Why key text is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// A line shorter than [`MIN_KEY_BYTES`].
    #[error("key {line} has {len} bytes; a heartbeat key needs at least {MIN_KEY_BYTES} (make one with `openssl rand -hex 32`)")]
    TooShort {
        /// 1-based line.
        line: usize,
        /// Its length.
        len: usize,
    },
    /// More than two keys: rotation needs two at most, more is a mistake.
    #[error("{0} keys; give one (or two while rotating: the first signs, both verify)")]
    TooMany(usize),
    /// Two lines with the same key.
    #[error("key {0} is given twice")]
    Duplicate(usize),
}

struct Key {
    id: u32,
    key: hmac::Key,
}

/// The keys of one node: none (heartbeats unsigned, anything accepted), or
/// one that signs and up to two that verify.
#[derive(Default)]
pub struct Keys {
    keys: Vec<Key>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key material: only how many and their ids.
        f.debug_struct("Keys")
            .field("ids", &self.keys.iter().map(|k| k.id).collect::<Vec<_>>())
            .finish()
    }
}

impl Clone for Keys {
    fn clone(&self) -> Keys {
        Keys {
            keys: self
                .keys
                .iter()
                .map(|k| Key {
                    id: k.id,
                    key: k.key.clone(),
                })
                .collect(),
        }
    }
}

/// The id a datagram names its key by.
pub fn key_id(material: &[u8]) -> u32 {
    let d = ring::digest::digest(&ring::digest::SHA256, material);
    let b = d.as_ref();
    // A SHA-256 digest is 32 bytes.
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

impl Keys {
    /// No keys: heartbeats go unsigned and every well-formed one is accepted.
    pub fn none() -> Keys {
        Keys::default()
    }

    /// Keys from text, one per line (blank lines and surrounding spaces
    /// ignored); the first signs.
    pub fn from_text(text: &str) -> Result<Keys, KeyError> {
        let lines: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        if lines.len() > 2 {
            return Err(KeyError::TooMany(lines.len()));
        }
        let mut keys: Vec<Key> = Vec::new();
        for (i, l) in lines.iter().enumerate() {
            if l.len() < MIN_KEY_BYTES {
                return Err(KeyError::TooShort {
                    line: i + 1,
                    len: l.len(),
                });
            }
            let id = key_id(l.as_bytes());
            if keys.iter().any(|k| k.id == id) {
                return Err(KeyError::Duplicate(i + 1));
            }
            keys.push(Key {
                id,
                key: hmac::Key::new(hmac::HMAC_SHA256, l.as_bytes()),
            });
        }
        Ok(Keys { keys })
    }

    /// The ids of the keys, the signing one first (two sets with the same
    /// ids hold the same keys: an id is a digest of the key).
    pub fn ids(&self) -> Vec<u32> {
        self.keys.iter().map(|k| k.id).collect()
    }

    /// Whether heartbeats are signed and checked.
    pub fn enabled(&self) -> bool {
        !self.keys.is_empty()
    }

    /// The id of the signing key.
    pub fn signing_id(&self) -> Option<u32> {
        self.keys.first().map(|k| k.id)
    }

    /// The MAC of `data` with the signing key.
    pub fn sign(&self, data: &[u8]) -> Option<[u8; MAC_LEN]> {
        let k = self.keys.first()?;
        let tag = hmac::sign(&k.key, data);
        // HMAC-SHA256 tags are 32 bytes; anything else would be ring's bug, and no signature.
        tag.as_ref().try_into().ok()
    }

    /// Checks `mac` over `data` with key `id`, in constant time.
    pub fn verify(&self, id: u32, data: &[u8], mac: &[u8]) -> Result<(), Refusal> {
        let k = self
            .keys
            .iter()
            .find(|k| k.id == id)
            .ok_or(Refusal::UnknownKey)?;
        hmac::verify(&k.key, data, mac).map_err(|_| Refusal::BadMac)
    }
}

/// Why a datagram was not taken as a heartbeat. Every one is counted by
/// [`Refusal::reason`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Not a ferrolb heartbeat, or truncated.
    #[error("not a ferrolb heartbeat")]
    Malformed,
    /// Keys are configured and the datagram carries no MAC.
    #[error("unsigned heartbeat, but this node requires a key")]
    Unsigned,
    /// Signed with a key this node does not have.
    #[error("signed with a key this node does not have")]
    UnknownKey,
    /// The MAC does not match: forged, or altered on the way.
    #[error("the MAC does not match")]
    BadMac,
    /// From a name that is not a member.
    #[error("from a node that is not a member")]
    UnknownMember,
    /// From an address other than the claimed member's.
    #[error("from an address that is not the member's")]
    WrongSource,
    /// A sequence number (or an earlier run) already seen: a replay.
    #[error("a replay (sequence number already seen, or an older run)")]
    Replay,
}

impl Refusal {
    /// The metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::Malformed => "malformed",
            Refusal::Unsigned => "unsigned",
            Refusal::UnknownKey => "unknown_key",
            Refusal::BadMac => "bad_mac",
            Refusal::UnknownMember => "unknown_member",
            Refusal::WrongSource => "wrong_source",
            Refusal::Replay => "replay",
        }
    }

    /// Every reason, for metrics that exist from the start.
    pub const ALL: [Refusal; 7] = [
        Refusal::Malformed,
        Refusal::Unsigned,
        Refusal::UnknownKey,
        Refusal::BadMac,
        Refusal::UnknownMember,
        Refusal::WrongSource,
        Refusal::Replay,
    ];
}

#[cfg(test)]
mod tests {
    use super::*;

    const K1: &str = "0123456789abcdef0123456789abcdef";
    const K2: &str = "fedcba9876543210fedcba9876543210";

    #[test]
    fn keys_parse_sign_and_verify() {
        assert!(!Keys::from_text("").unwrap().enabled());
        let one = Keys::from_text(&format!("  {K1}  \n\n")).unwrap();
        let mac = one.sign(b"data").unwrap();
        let id = one.signing_id().unwrap();
        assert_eq!(id, key_id(K1.as_bytes()));
        assert_eq!(one.verify(id, b"data", &mac), Ok(()));
        assert_eq!(one.verify(id, b"datA", &mac), Err(Refusal::BadMac));
        assert_eq!(one.verify(id, b"data", &mac[..31]), Err(Refusal::BadMac));
        assert_eq!(one.verify(id ^ 1, b"data", &mac), Err(Refusal::UnknownKey));
        // Rotation: the new key signs, the old one still verifies.
        let both = Keys::from_text(&format!("{K2}\n{K1}\n")).unwrap();
        assert_eq!(both.verify(id, b"data", &mac), Ok(()));
        assert_ne!(both.signing_id(), Some(id));
        assert_eq!(
            Keys::from_text("short").err(),
            Some(KeyError::TooShort { line: 1, len: 5 })
        );
        assert_eq!(
            Keys::from_text(&format!("{K1}\n{K1}")).err(),
            Some(KeyError::Duplicate(2))
        );
        assert_eq!(
            Keys::from_text(&format!("{K1}\n{K2}\n{K1}x")).err(),
            Some(KeyError::TooMany(3))
        );
        assert!(!format!("{both:?}").contains(K1), "Debug never shows a key");
    }
}
