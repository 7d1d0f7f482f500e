//! The allocator proper. State: per pool and family a free set; per
//! allocated address who holds it; per service what it holds.

use crate::free::FreeSet;
use crate::{AllocError, Assignment, Request, ServiceKey};
use ferrolb_config::Pool;
use ferrolb_ipset::{is_buggy, to_u128, Family};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

/// Exact address counts of one pool and family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FamilyStats {
    /// Addresses that may be handed out.
    pub total: u128,
    /// Addresses held by at least one service.
    pub used: u128,
    /// `total - used`.
    pub free: u128,
}

/// Exact counts of one pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolStats {
    /// Pool name.
    pub name: String,
    /// IPv4 counts.
    pub v4: FamilyStats,
    /// IPv6 counts.
    pub v6: FamilyStats,
}

/// What [`Allocator::restore`] did with each existing assignment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RestoreReport {
    /// Services whose addresses were kept as they were.
    pub kept: Vec<ServiceKey>,
    /// Services whose addresses could not be kept, oldest first, with the
    /// reason (for a duplicate: the older holder). They hold nothing now.
    pub rejected: Vec<(ServiceKey, AllocError)>,
}

struct PoolState {
    pool: Pool,
    /// The name as handed out in assignments, shared rather than copied.
    name: std::sync::Arc<str>,
    free: [FreeSet; 2],
    used: [u128; 2],
}

/// Who holds an address. Sharing key, selector and ports are read from the
/// holders' requests rather than copied here: memory per address stays small.
struct IpUse {
    pool: usize,
    /// Sorted; usually one holder, and a Vec avoids a B-tree node per address.
    holders: Vec<ServiceKey>,
}

struct Held {
    request: Request,
    assignment: Assignment,
}

fn fi(family: Family) -> usize {
    match family {
        Family::V4 => 0,
        Family::V6 => 1,
    }
}

/// Hands out addresses from pools. Pure: no I/O, no clock, no Kubernetes
/// types. Every operation is O(log n) in the number of allocated addresses
/// (plus the number of pools).
pub struct Allocator {
    /// Pools in preference order: priority (lowest first, unset last), then
    /// pools restricted to namespaces or Service labels before unrestricted
    /// ones (as MetalLB tries the pools that select a Service first), then name.
    pools: Vec<PoolState>,
    index: HashMap<String, usize>,
    ips: BTreeMap<IpAddr, IpUse>,
    /// Boxed so B-tree nodes stay small: a request is ~230 bytes and nodes hold eleven slots.
    services: BTreeMap<ServiceKey, Box<Held>>,
    /// Sharing key -> addresses currently held under it.
    shared: HashMap<String, BTreeSet<IpAddr>>,
}

impl Allocator {
    /// An allocator over `pools` with nothing allocated.
    pub fn new(pools: &[Pool]) -> Allocator {
        let mut sorted: Vec<&Pool> = pools.iter().collect();
        let open = |p: &Pool| {
            p.namespaces.is_empty()
                && p.namespace_selector.is_none()
                && p.service_selector.is_none()
        };
        sorted.sort_by(|a, b| {
            (a.priority.is_none(), a.priority, open(a), &a.name).cmp(&(
                b.priority.is_none(),
                b.priority,
                open(b),
                &b.name,
            ))
        });
        let pools: Vec<PoolState> = sorted
            .into_iter()
            .map(|p| PoolState {
                free: Family::ALL
                    .map(|f| FreeSet::new(f, p.addresses.intervals(f), p.avoid_buggy_ips)),
                used: [0, 0],
                name: p.name.as_str().into(),
                pool: p.clone(),
            })
            .collect();
        let index = pools
            .iter()
            .enumerate()
            .map(|(i, p)| (p.pool.name.clone(), i))
            .collect();
        Allocator {
            pools,
            index,
            ips: BTreeMap::new(),
            services: BTreeMap::new(),
            shared: HashMap::new(),
        }
    }

    /// What `key` holds, if anything.
    pub fn assignment(&self, key: &ServiceKey) -> Option<&Assignment> {
        self.services.get(key).map(|h| &h.assignment)
    }

    /// Every service holding addresses, in key order.
    pub fn assignments(&self) -> impl Iterator<Item = (&ServiceKey, &Assignment)> {
        self.services.iter().map(|(k, h)| (k, &h.assignment))
    }

    /// The services holding `ip`.
    pub fn holders(&self, ip: IpAddr) -> Vec<&ServiceKey> {
        self.ips
            .get(&ip)
            .map(|u| u.holders.iter().collect())
            .unwrap_or_default()
    }

    /// Exact counters for every pool, in preference order.
    pub fn stats(&self) -> Vec<PoolStats> {
        self.pools
            .iter()
            .map(|p| {
                let fam = |f: Family| {
                    let total = p.pool.usable(f);
                    let used = p.used[fi(f)];
                    FamilyStats {
                        total,
                        used,
                        free: total - used,
                    }
                };
                PoolStats {
                    name: p.pool.name.clone(),
                    v4: fam(Family::V4),
                    v6: fam(Family::V6),
                }
            })
            .collect()
    }

    /// Gives a service its addresses, or confirms the ones it has.
    ///
    /// A service that already holds valid addresses keeps them (a
    /// PreferDualStack service may gain the missing family). Requested
    /// addresses are honoured exactly. On failure nothing changes: a service
    /// keeps what it held before.
    pub fn allocate(&mut self, req: &Request) -> Result<Assignment, AllocError> {
        // Reconcile loops ask again and again; an unchanged request keeps what it has.
        if let Some(held) = self.services.get(&req.key) {
            if held.request == *req {
                return Ok(held.assignment.clone());
            }
        }
        let previous = self
            .services
            .get(&req.key)
            .map(|h| (h.request.clone(), h.assignment.clone()));
        self.release(&req.key);
        let result = self.allocate_fresh(req, previous.as_ref().map(|(_, a)| a));
        if result.is_err() {
            if let Some((old_req, old)) = previous {
                // Nothing else changed since the release, so the old addresses are still claimable.
                let restored = self.claim(&old_req, &old.ips);
                debug_assert!(
                    restored.is_ok(),
                    "re-claiming released addresses cannot fail"
                );
            }
        }
        result
    }

    fn allocate_fresh(
        &mut self,
        req: &Request,
        previous: Option<&Assignment>,
    ) -> Result<Assignment, AllocError> {
        if !req.requested_ips.is_empty() {
            return self.claim(req, &req.requested_ips);
        }
        let (wanted, _) = req.wanted_families();
        if let Some(prev) = previous {
            if self.check_claim(req, &prev.ips).is_ok() {
                let mut ips = prev.ips.clone();
                // PreferDualStack may gain its second family from the same pool; nothing moves.
                let pool = self.index[&*prev.pool];
                for family in &wanted {
                    if ips.len() < wanted.len() && !ips.iter().any(|ip| Family::of(*ip) == *family)
                    {
                        if let Some(ip) = self.pick(pool, *family, req) {
                            ips.push(ip);
                        }
                    }
                }
                return self.claim(req, &ips);
            }
        }
        self.auto(req)
    }

    /// Chooses addresses for a service without requested IPs.
    fn auto(&mut self, req: &Request) -> Result<Assignment, AllocError> {
        let candidates = self.candidates(req)?;
        let (wanted, required) = req.wanted_families();
        for family in &wanted[..required] {
            if !candidates
                .iter()
                .any(|&p| self.pools[p].pool.addresses.has_family(*family))
            {
                return Err(AllocError::FamilyUnavailable {
                    service: req.key.clone(),
                    family: *family,
                });
            }
        }
        // First choice: every wanted family from the best pool that has them all.
        for &p in &candidates {
            let picks: Vec<Option<IpAddr>> = wanted.iter().map(|f| self.pick(p, *f, req)).collect();
            if picks.iter().all(Option::is_some) {
                let ips: Vec<IpAddr> = picks.into_iter().flatten().collect();
                return self.claim(req, &ips);
            }
        }
        // PreferDualStack falls back to one family, the primary first.
        if required < wanted.len() {
            for family in &wanted {
                for &p in &candidates {
                    if let Some(ip) = self.pick(p, *family, req) {
                        return self.claim(req, &[ip]);
                    }
                }
            }
        }
        let family = wanted[0];
        let pools: Vec<&str> = candidates
            .iter()
            .filter(|&&p| self.pools[p].pool.addresses.has_family(family))
            .map(|&p| self.pools[p].pool.name.as_str())
            .collect();
        let family = if pools.is_empty() && wanted.len() > 1 {
            wanted[1]
        } else {
            family
        };
        Err(AllocError::Exhausted {
            family,
            pools: pools.join(", "),
        })
    }

    /// Pools this service may auto-allocate from, in preference order.
    fn candidates(&self, req: &Request) -> Result<Vec<usize>, AllocError> {
        if let Some(name) = &req.requested_pool {
            let p = *self
                .index
                .get(name)
                .ok_or_else(|| AllocError::UnknownPool { pool: name.clone() })?;
            self.allowed(p, req)
                .map_err(|reason| AllocError::PoolNotAllowed {
                    pool: name.clone(),
                    service: req.key.clone(),
                    reason,
                })?;
            return Ok(vec![p]);
        }
        let mut reasons = Vec::new();
        let mut out = Vec::new();
        for (i, p) in self.pools.iter().enumerate() {
            if !p.pool.auto_assign {
                reasons.push(format!("{} has autoAssign off", p.pool.name));
            } else if let Err(r) = self.allowed(i, req) {
                reasons.push(format!("{}: {r}", p.pool.name));
            } else {
                out.push(i);
            }
        }
        if out.is_empty() {
            let reason = if reasons.is_empty() {
                "no pool is configured".to_string()
            } else {
                reasons.join("; ")
            };
            return Err(AllocError::NoPool {
                service: req.key.clone(),
                reason,
            });
        }
        Ok(out)
    }

    /// Whether pool `p`'s namespace and selector restrictions admit the service.
    fn allowed(&self, p: usize, req: &Request) -> Result<(), String> {
        let pool = &self.pools[p].pool;
        // Named namespaces and selected ones add up (MetalLB's namespaces
        // and namespaceSelectors).
        if !pool.namespaces.is_empty() || pool.namespace_selector.is_some() {
            let named = pool.namespaces.iter().any(|n| **n == *req.key.namespace);
            let selected = pool
                .namespace_selector
                .as_ref()
                .is_some_and(|s| s.matches(&req.namespace_labels));
            if !named && !selected {
                let mut allowed = Vec::new();
                if !pool.namespaces.is_empty() {
                    allowed.push(format!("its namespaces ({})", pool.namespaces.join(", ")));
                }
                if let Some(s) = &pool.namespace_selector {
                    allowed.push(format!("its namespaceSelector ({s})"));
                }
                return Err(format!(
                    "namespace {:?} is not among {}",
                    req.key.namespace,
                    allowed.join(" nor matches ")
                ));
            }
        }
        if let Some(sel) = &pool.service_selector {
            if !sel.matches(&req.labels) {
                return Err(format!(
                    "the service's labels do not match its serviceSelector ({sel})"
                ));
            }
        }
        Ok(())
    }

    /// The address of `family` this service would get from pool `p`: an
    /// address already shared under its sharing key if one fits, else the
    /// lowest free one.
    fn pick(&mut self, p: usize, family: Family, req: &Request) -> Option<IpAddr> {
        if let Some(key) = &req.sharing_key {
            if let Some(ips) = self.shared.get(key) {
                let found = ips.iter().copied().find(|ip| {
                    Family::of(*ip) == family
                        && self.ips[ip].pool == p
                        && self.check_share(*ip, req).is_ok()
                });
                if found.is_some() {
                    return found;
                }
            }
        }
        self.pools[p].free[fi(family)]
            .first()
            .map(|v| family.addr(v))
    }

    /// Whether `req` may hold `ip` alongside its current holders.
    fn check_share(&self, ip: IpAddr, req: &Request) -> Result<(), AllocError> {
        let Some(usage) = self.ips.get(&ip) else {
            return Ok(());
        };
        for holder in usage.holders.iter().filter(|k| **k != req.key) {
            let other = &self.services[holder].request;
            if other.sharing_key.is_none() || other.sharing_key != req.sharing_key {
                return Err(AllocError::InUse {
                    ip,
                    holder: holder.clone(),
                });
            }
            if other.backend_key != req.backend_key {
                return Err(AllocError::BackendMismatch {
                    ip,
                    holder: holder.clone(),
                });
            }
            if let Some(port) = req.ports.iter().find(|p| other.ports.contains(p)) {
                return Err(AllocError::PortCollision {
                    ip,
                    holder: holder.clone(),
                    port: *port,
                });
            }
        }
        Ok(())
    }

    /// Checks that `req` may hold exactly `ips`; returns the pool index.
    fn check_claim(&self, req: &Request, ips: &[IpAddr]) -> Result<usize, AllocError> {
        let (wanted, required) = req.wanted_families();
        // A Service that now asks for other addresses (its annotation or
        // spec.loadBalancerIP changed while the controller was away) does not
        // keep the old ones: restore rejects them and allocation gives the
        // requested ones, or fails saying why.
        if !req.requested_ips.is_empty() {
            let held: std::collections::BTreeSet<&IpAddr> = ips.iter().collect();
            let asked: std::collections::BTreeSet<&IpAddr> = req.requested_ips.iter().collect();
            if held != asked {
                return Err(AllocError::BadRequest(format!(
                    "it holds {} but asks for {}",
                    ips.iter()
                        .map(|i| i.to_string())
                        .collect::<Vec<_>>()
                        .join(","),
                    req.requested_ips
                        .iter()
                        .map(|i| i.to_string())
                        .collect::<Vec<_>>()
                        .join(",")
                )));
            }
        }
        let mut pool: Option<usize> = None;
        for (n, ip) in ips.iter().enumerate() {
            let family = Family::of(*ip);
            if ips[..n].iter().any(|o| Family::of(*o) == family) {
                return Err(AllocError::BadRequest(format!(
                    "more than one {family} address ({}, {ip})",
                    ips[..n]
                        .iter()
                        .find(|o| Family::of(**o) == family)
                        .expect("found above")
                )));
            }
            if !wanted.contains(&family) {
                return Err(AllocError::BadRequest(format!(
                    "{ip} is {family}, but the service's ipFamilies/ipFamilyPolicy allow only {}",
                    wanted
                        .iter()
                        .map(|f| f.to_string())
                        .collect::<Vec<_>>()
                        .join(" and ")
                )));
            }
            let p = self
                .pools
                .iter()
                .position(|p| p.pool.addresses.contains(*ip))
                .ok_or(AllocError::OutsidePools { ip: *ip })?;
            let state = &self.pools[p];
            if state.pool.avoid_buggy_ips && is_buggy(*ip) {
                return Err(AllocError::BuggyIp {
                    ip: *ip,
                    pool: state.pool.name.clone(),
                });
            }
            match pool {
                Some(q) if q != p => {
                    return Err(AllocError::BadRequest(format!(
                        "{} and {ip} are in different pools ({} and {}); a service takes all its addresses from one pool",
                        ips[0], self.pools[q].pool.name, state.pool.name
                    )))
                }
                _ => pool = Some(p),
            }
            self.check_share(*ip, req)?;
        }
        let Some(p) = pool else {
            return Err(AllocError::BadRequest("no address given".into()));
        };
        if ips.len() < required {
            return Err(AllocError::BadRequest(format!(
                "RequireDualStack needs one address of each family, got only {}",
                ips[0]
            )));
        }
        if let Some(name) = &req.requested_pool {
            if *name != self.pools[p].pool.name {
                return Err(AllocError::BadRequest(format!(
                    "{} is in pool {:?}, not in the requested pool {name:?}",
                    ips[0], self.pools[p].pool.name
                )));
            }
        }
        self.allowed(p, req)
            .map_err(|reason| AllocError::PoolNotAllowed {
                pool: self.pools[p].pool.name.clone(),
                service: req.key.clone(),
                reason,
            })?;
        Ok(p)
    }

    /// Gives `req` exactly `ips` after checking it may hold them.
    fn claim(&mut self, req: &Request, ips: &[IpAddr]) -> Result<Assignment, AllocError> {
        let p = self.check_claim(req, ips)?;
        self.release(&req.key);
        for ip in ips {
            let usage = self.ips.entry(*ip).or_insert_with(|| IpUse {
                pool: p,
                holders: Vec::new(),
            });
            if usage.holders.is_empty() {
                let family = Family::of(*ip);
                let state = &mut self.pools[p];
                let taken = state.free[fi(family)].take(to_u128(*ip));
                debug_assert!(taken, "an unheld pool address is in the free set");
                state.used[fi(family)] += 1;
            }
            if let Err(at) = usage.holders.binary_search(&req.key) {
                usage.holders.insert(at, req.key.clone());
            }
            if let Some(key) = &req.sharing_key {
                self.shared.entry(key.clone()).or_default().insert(*ip);
            }
        }
        let assignment = Assignment {
            pool: self.pools[p].name.clone(),
            ips: ips.to_vec(),
        };
        self.services.insert(
            req.key.clone(),
            Box::new(Held {
                request: req.clone(),
                assignment: assignment.clone(),
            }),
        );
        Ok(assignment)
    }

    /// Frees what a service holds; returns it.
    pub fn release(&mut self, key: &ServiceKey) -> Option<Assignment> {
        let held = self.services.remove(key)?;
        for ip in &held.assignment.ips {
            let Some(usage) = self.ips.get_mut(ip) else {
                continue;
            };
            usage.holders.retain(|k| k != key);
            if usage.holders.is_empty() {
                let usage = self.ips.remove(ip).expect("present above");
                let family = Family::of(*ip);
                let state = &mut self.pools[usage.pool];
                state.free[fi(family)].put(to_u128(*ip));
                state.used[fi(family)] -= 1;
                if let Some(k) = &held.request.sharing_key {
                    if let Some(set) = self.shared.get_mut(k) {
                        set.remove(ip);
                        if set.is_empty() {
                            self.shared.remove(k);
                        }
                    }
                }
            }
        }
        Some(held.assignment)
    }

    /// Re-takes existing assignments after a restart (from Service status),
    /// oldest first, so that the older of two services claiming one address
    /// keeps it. Valid assignments are kept exactly; the rest are rejected
    /// with the reason and hold nothing. Entries with no address are
    /// ignored. Running it twice with the same input changes nothing.
    pub fn restore(&mut self, existing: Vec<(Request, Vec<IpAddr>)>) -> RestoreReport {
        let mut existing = existing;
        existing.sort_by(|(a, _), (b, _)| (a.created, &a.key).cmp(&(b.created, &b.key)));
        let mut report = RestoreReport::default();
        for (req, ips) in existing {
            if ips.is_empty() {
                continue;
            }
            match self.claim(&req, &ips) {
                Ok(_) => report.kept.push(req.key),
                Err(e) => {
                    self.release(&req.key);
                    report.rejected.push((req.key, e));
                }
            }
        }
        report
    }

    /// Applies new pools: every current assignment is re-checked against
    /// them, oldest first. Those still valid stay exactly as they are; the
    /// rest are released and returned, oldest first, for the caller to
    /// allocate again (in that order, which keeps the outcome deterministic).
    pub fn reconfigure(&mut self, pools: &[Pool]) -> Vec<(ServiceKey, AllocError)> {
        let held: Vec<(Request, Vec<IpAddr>)> = std::mem::take(&mut self.services)
            .into_values()
            .map(|h| (h.request, h.assignment.ips))
            .collect();
        *self = Allocator::new(pools);
        self.restore(held).rejected
    }

    /// The number of services holding addresses.
    pub fn len(&self) -> usize {
        self.services.len()
    }

    /// Whether no service holds an address.
    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
    }

    /// The request a service was last allocated with.
    pub fn request(&self, key: &ServiceKey) -> Option<&Request> {
        self.services.get(key).map(|h| &h.request)
    }
}
