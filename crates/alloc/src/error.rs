//! Why an allocation failed, in terms an operator can act on. The
//! controller puts these messages into `AllocationFailed` Events.

use crate::{Port, ServiceKey};
use ferrolb_ipset::Family;
use std::net::IpAddr;

/// A failed allocation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllocError {
    /// Every allowed pool is full for the family.
    #[error("no free {family} address in pool(s) {pools}; add addresses to a pool or free some")]
    Exhausted {
        /// The family asked for.
        family: Family,
        /// The pools tried, comma separated.
        pools: String,
    },
    /// The requested address is in no pool.
    #[error(
        "{ip} is outside every pool; request an address from a pool or add a pool containing it"
    )]
    OutsidePools {
        /// The address asked for.
        ip: IpAddr,
    },
    /// The requested address ends in .0/.255 and its pool avoids those.
    #[error(
        "{ip} ends in .0 or .255 and pool {pool:?} has avoidBuggyIPs set; request another address"
    )]
    BuggyIp {
        /// The address asked for.
        ip: IpAddr,
        /// Its pool.
        pool: String,
    },
    /// The requested address is held by a service it may not share with.
    #[error("{ip} is held by {holder}; to share it, give both services the same sharing key (ferrolb.io/allow-shared-ip) and distinct ports")]
    InUse {
        /// The address asked for.
        ip: IpAddr,
        /// Who holds it.
        holder: ServiceKey,
    },
    /// Both services have the sharing key but expose the same port.
    #[error("{ip} is shared with {holder}, which already exposes {port}; use another port or another IP")]
    PortCollision {
        /// The address.
        ip: IpAddr,
        /// The service exposing the port.
        holder: ServiceKey,
        /// The colliding port.
        port: Port,
    },
    /// Services with externalTrafficPolicy Local must have identical selectors to share.
    #[error("{ip} is shared with {holder}, but with externalTrafficPolicy Local both services must select the same pods")]
    BackendMismatch {
        /// The address.
        ip: IpAddr,
        /// The other service.
        holder: ServiceKey,
    },
    /// The requested pool does not exist.
    #[error("pool {pool:?} does not exist; check the ferrolb.io/address-pool annotation")]
    UnknownPool {
        /// The pool asked for.
        pool: String,
    },
    /// The pool exists but this service may not use it.
    #[error("pool {pool:?} does not allow {service}: {reason}")]
    PoolNotAllowed {
        /// The pool.
        pool: String,
        /// The service.
        service: ServiceKey,
        /// Which restriction failed (namespace or selector).
        reason: String,
    },
    /// No pool is usable by this service at all.
    #[error("no pool allows {service}: {reason}")]
    NoPool {
        /// The service.
        service: ServiceKey,
        /// Why each pool was passed over.
        reason: String,
    },
    /// No allowed pool has the family.
    #[error("no pool that {service} may use has {family} addresses; add {family} addresses to a pool or change ipFamilies")]
    FamilyUnavailable {
        /// The service.
        service: ServiceKey,
        /// The missing family.
        family: Family,
    },
    /// The requested addresses are inconsistent.
    #[error("requested addresses are invalid: {0}")]
    BadRequest(String),
}
