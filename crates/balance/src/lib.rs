//! Pure forwarding logic, free of sockets and clocks, so it can be tested
//! exhaustively in-process:
//!
//! - [`select`]: which backend gets the next connection (weighted round
//!   robin, least connections, Maglev), with retries that skip backends
//!   that just failed.
//! - [`maglev`]: the Maglev consistent-hashing table, identical on every
//!   host for the same backend set.
//! - [`health`]: the per-backend rise/fall state machine fed by active
//!   probes and by failed connects.
//! - [`proxy_protocol`]: PROXY protocol v1 and v2 headers.
//! - [`hash`]: the fixed, seedless hash they share.

pub mod hash;
pub mod health;
pub mod maglev;
pub mod proxy_protocol;
pub mod select;
