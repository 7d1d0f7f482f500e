//! Layer 2 mode's pure logic. Sockets, timers and interfaces live in the
//! speaker; everything that decides lives here and is tested in-process:
//!
//! - [`wire`]: Ethernet, ARP and NDP frames, parsed and emitted.
//! - [`respond`]: what to answer for the VIPs an interface owns, conflict
//!   detection, and the announcement frames.
//! - [`limit`]: per-source answer limits, so a flood cannot starve other askers.
//! - [`election`]: one owner per service, sticky, identical on every node.
//! - [`membership`]: the UDP heartbeat failure detector.
//! - [`vmac`]: the virtual MAC of a VIP group, and collisions between them.

// This crate decodes bytes from the network: a panic here is a remote crash,
// so nothing may unwrap, expect or panic (tests may: clippy.toml).
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod auth;
pub mod election;
pub mod limit;
pub mod membership;
pub mod respond;
pub mod vmac;
pub mod wire;
