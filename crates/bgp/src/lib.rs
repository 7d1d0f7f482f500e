//! ferrolb's native BGP speaker, the pure parts: messages, their codec
//! (`codec`: encode, pack, decode) and the session state machine (`fsm`);
//! the speaker's `bgp` module drives them with sockets. Written in-project rather than
//! taken from bgp-rs (GPL-3.0, unmaintained, wrong AS_PATH width under
//! RFC 6793); see docs/decisions.md.

// This crate decodes bytes from the network: a panic here is a remote crash,
// so nothing may unwrap, expect or panic (tests may: clippy.toml).
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod codec;
pub mod fsm;
pub mod message;

pub use codec::{decode, encode, pack, pack_withdrawals, Action, DecodeError, Wire, MAX_LEN};
pub use message::*;
