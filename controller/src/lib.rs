//! ferrolb's Kubernetes controller: gives LoadBalancer Services addresses
//! from the configured pools and writes them into their status.
//!
//! - [`service`] reads a Service into an allocator request (pure).
//! - [`core`] decides: restore, allocate, release, Events (pure).
//! - [`lease`] drives the leader election (`ferrolb-lease` decides) and
//!   fences the writes.
//! - [`run`] is the process: leadership, watches, writes.
//! - [`metrics`] are served on `/metrics`.

pub mod core;
pub mod lease;
pub mod metrics;
pub mod run;
pub mod service;
