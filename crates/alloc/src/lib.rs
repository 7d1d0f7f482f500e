//! ferrolb's IP allocator.
//!
//! Pools are sorted interval sets over 128-bit integers, so an IPv6 /64 or
//! larger costs the same as an IPv4 /30. Allocation takes the lowest free
//! address of the best pool in O(log n); memory is proportional to what is
//! allocated, not to pool size. Counters are exact 128-bit numbers.
//!
//! The allocator is pure: no I/O, no clock, no Kubernetes types. The
//! controller and standalone mode translate their objects into
//! [`Request`]s.

mod allocator;
mod error;
mod free;
mod request;

pub use allocator::{Allocator, FamilyStats, PoolStats, RestoreReport};
pub use error::AllocError;
pub use request::{Assignment, FamilyPolicy, Port, Request, ServiceKey};
