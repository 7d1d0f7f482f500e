//! The ferrolb speaker: standalone planning and runtime, the L4 forwarder,
//! metrics, the announcement seam with layer 2 and BGP, and Kubernetes mode.

pub mod announce;
pub mod announcers;
pub mod bfd;
pub mod bgp;
pub mod cluster_status;
pub mod dsr_backend;
pub mod forwarder;
pub mod host;
pub mod kubernetes;
pub mod l2;
pub mod metrics;
pub mod netlink;
pub mod plan;
pub mod standalone;
pub mod status;
