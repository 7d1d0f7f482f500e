//! Encoding and validated decoding of BGP messages. Decoding errors carry
//! the NOTIFICATION to send (RFC 4271 section 6) and, for UPDATE attribute
//! errors, the RFC 7606 action: most attribute errors only withdraw the
//! routes of that UPDATE instead of resetting the session.
//!
//! - `encode`: one message to bytes.
//! - `pack`: many prefixes into as few UPDATEs as fit in 4096 bytes.
//! - `decode`: bytes to one message, every length and attribute checked.

mod decode;
mod encode;
mod pack;

pub use decode::decode;
pub use encode::encode;
pub use pack::{pack, pack_withdrawals};

use crate::message::*;

/// Largest BGP message (RFC 4271; ferrolb does not negotiate extended messages).
pub const MAX_LEN: usize = 4096;
/// Header length: marker, length, type.
pub const HEADER_LEN: usize = 19;

/// What a session negotiated that changes the wire format (not the
/// session itself: that is `fsm::Session`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Wire {
    /// Both sides sent the 4-octet AS capability: AS_PATH carries 4-octet ASNs.
    pub four_octet: bool,
}

/// What to do about a decoding error (RFC 7606).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Send the NOTIFICATION and close the session.
    SessionReset,
    /// Keep the session; treat the UPDATE's routes as withdrawn.
    TreatAsWithdraw,
}

/// A message that could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason} (NOTIFICATION {code}/{subcode})")]
pub struct DecodeError {
    /// NOTIFICATION error code.
    pub code: u8,
    /// NOTIFICATION subcode.
    pub subcode: u8,
    /// NOTIFICATION data.
    pub data: Vec<u8>,
    /// What went wrong, for logs.
    pub reason: &'static str,
    /// What the session should do.
    pub action: Action,
    /// For `TreatAsWithdraw`: the routes the UPDATE announced.
    pub routes: Vec<Prefix>,
}

impl DecodeError {
    pub(crate) fn reset(code: u8, subcode: u8, data: Vec<u8>, reason: &'static str) -> DecodeError {
        DecodeError {
            code,
            subcode,
            data,
            reason,
            action: Action::SessionReset,
            routes: Vec::new(),
        }
    }

    /// The NOTIFICATION to send for a session reset.
    pub fn notification(&self) -> Notification {
        Notification {
            code: self.code,
            subcode: self.subcode,
            data: self.data.clone(),
        }
    }
}

// Message header errors (1), OPEN errors (2), UPDATE errors (3).
const HDR: u8 = 1;
const OPEN_ERR: u8 = 2;
const UPD: u8 = 3;

// Attribute type codes.
const ORIGIN: u8 = 1;
const AS_PATH: u8 = 2;
const NEXT_HOP: u8 = 3;
const MED: u8 = 4;
const LOCAL_PREF: u8 = 5;
const COMMUNITIES: u8 = 8;
const MP_REACH: u8 = 14;
const MP_UNREACH: u8 = 15;
const AS4_PATH: u8 = 17;
const LARGE_COMMUNITIES: u8 = 32;

// Attribute flags.
const OPTIONAL: u8 = 0x80;
const TRANSITIVE: u8 = 0x40;
const EXTENDED: u8 = 0x10;

pub(crate) fn frame(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.extend_from_slice(&[0xff; 16]);
    out.extend_from_slice(&((HEADER_LEN + body.len()) as u16).to_be_bytes());
    out.push(kind);
    out.extend_from_slice(body);
    out
}
