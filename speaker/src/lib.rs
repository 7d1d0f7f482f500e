//! The ferrolb speaker: standalone planning and runtime, the L4 forwarder,
//! metrics and the announcement seam. Layer 2 and BGP announcement join as
//! their issues land.

pub mod announce;
pub mod bfd;
pub mod bgp;
pub mod forwarder;
pub mod host;
pub mod l2;
pub mod metrics;
pub mod plan;
pub mod standalone;
