//! Host settings the announcers depend on: in layer 2 mode the kernel must
//! never answer ARP for a VIP itself; in both modes a VIP must be local so
//! traffic that reaches the node is accepted (an AnyIP `local` route on `lo`).

use std::collections::BTreeSet;
use std::net::IpAddr;

/// Why the host is not ready to serve the VIPs.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// A sysctl is below what layer 2 mode needs and could not be raised.
    #[error("net.ipv4.conf.{scope}.{name} is {effective} on this node (the kernel uses the larger of conf/all and conf/{scope}); layer 2 mode needs at least {wanted}, and writing {path} failed ({source}). In Kubernetes the DaemonSet's privileged init container `arp-sysctls` (`ferrolb-speaker prepare-node`) sets it before the speaker starts: check that it ran (kubectl -n ferrolb-system describe pod); on a plain host run the speaker as root or set it yourself. Without arp_ignore>=1 and arp_announce>=2 every node's kernel answers ARP for the VIPs and they fight")]
    Sysctl {
        /// The interface (`all` for every one).
        scope: String,
        /// `arp_ignore` or `arp_announce`.
        name: &'static str,
        /// The value in force.
        effective: u8,
        /// The least value that works.
        wanted: u8,
        /// The file that could not be written.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A sysctl could not be put back (cleanup-node needs a privileged container).
    #[error("cannot reset {path} to 0 ({source}); cleanup-node must run privileged (deploy/uninstall/cleanup.yaml), or pass --keep-arp-sysctls")]
    Reset {
        /// The file.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The local routes could not be added or removed.
    #[error("cannot change the local routes of {vips} (a local route on lo in table local, set through rtnetlink; needs root or CAP_NET_ADMIN): {detail}")]
    Route {
        /// The VIPs, as a list for the message.
        vips: String,
        /// What the kernel said.
        detail: String,
    },
}

/// The two ARP sysctls layer 2 mode needs and their least working values:
/// `arp_ignore=1` (answer only for addresses on the receiving interface, so
/// the VIPs on `lo` are never answered by the kernel) and `arp_announce=2`
/// (never use a VIP as the source of the kernel's own requests). Higher
/// values are stricter and work too.
pub const ARP_SYSCTLS: [(&str, u8); 2] = [("arp_ignore", 1), ("arp_announce", 2)];

/// The value the kernel applies to an interface: for both ARP sysctls it is
/// the larger of `conf/all` and `conf/<iface>` (Documentation/networking/ip-sysctl.rst).
pub fn effective(all: u8, iface: u8) -> u8 {
    all.max(iface)
}

/// What must be written so that every interface in `values` (interface,
/// its own value) gets at least `wanted`, given `conf/all`'s value: nothing
/// when the effective values suffice (a read-only `/proc/sys` then does not
/// matter), else `all` alone, which covers every interface, present and future.
pub fn missing(all: u8, values: &[(String, u8)], wanted: u8) -> Option<(String, u8)> {
    values
        .iter()
        .find(|(_, v)| effective(all, *v) < wanted)
        .map(|(scope, v)| (scope.clone(), effective(all, *v)))
}

fn read(path: &str) -> u8 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Makes sure the kernel applies `arp_ignore>=1` and `arp_announce>=2` on
/// `interfaces` (and on every interface when `interfaces` is empty, for
/// `prepare-node`): reads the values in force and writes `conf/all` only
/// when one is too low, so an unprivileged speaker after the init container
/// writes nothing.
pub fn prepare_arp(interfaces: &[String]) -> Result<(), HostError> {
    for (name, wanted) in ARP_SYSCTLS {
        let all_path = format!("/proc/sys/net/ipv4/conf/all/{name}");
        let all = read(&all_path);
        let values: Vec<(String, u8)> = if interfaces.is_empty() {
            vec![("all".to_string(), all)]
        } else {
            interfaces
                .iter()
                .map(|i| {
                    (
                        i.clone(),
                        read(&format!("/proc/sys/net/ipv4/conf/{i}/{name}")),
                    )
                })
                .collect()
        };
        if let Some((scope, effective)) = missing(all, &values, wanted) {
            std::fs::write(&all_path, wanted.to_string()).map_err(|source| HostError::Sysctl {
                scope,
                name,
                effective,
                wanted,
                path: all_path.clone(),
                source,
            })?;
        }
    }
    Ok(())
}

/// Puts both ARP sysctls of `conf/all` back to the kernel's defaults (0),
/// for `cleanup-node` after an uninstall.
pub fn reset_arp() -> Result<(), HostError> {
    for (name, _) in ARP_SYSCTLS {
        let path = format!("/proc/sys/net/ipv4/conf/all/{name}");
        std::fs::write(&path, "0").map_err(|source| HostError::Reset {
            path: path.clone(),
            source,
        })?;
    }
    Ok(())
}

/// Makes VIPs local from a task of its own: the caller hands over the
/// wanted set and goes on; the netlink writes run on a blocking thread, so a
/// slow or stuck netlink socket delays no heartbeat and no answer. Only the
/// newest set matters, so a burst of changes is one write.
pub struct LocalRouteWorker {
    tx: tokio::sync::watch::Sender<Vec<IpAddr>>,
}

impl LocalRouteWorker {
    /// Starts the worker on the current runtime.
    pub fn spawn() -> LocalRouteWorker {
        let (tx, mut rx) = tokio::sync::watch::channel(Vec::new());
        tokio::spawn(async move {
            let mut routes = LocalRoutes::default();
            while rx.changed().await.is_ok() {
                let vips = rx.borrow_and_update().clone();
                let done = tokio::task::spawn_blocking(move || {
                    let r = routes.ensure(vips);
                    (routes, r)
                })
                .await;
                match done {
                    Ok((r, result)) => {
                        routes = r;
                        if let Err(e) = result {
                            tracing::error!(error = %e, "VIP traffic will not be accepted on this node");
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "the local route worker failed; VIPs are no longer made local");
                        return;
                    }
                }
            }
        });
        LocalRouteWorker { tx }
    }

    /// Wants exactly `vips` local (added now, forgotten when absent).
    pub fn want(&self, vips: Vec<IpAddr>) {
        self.tx.send_replace(vips);
    }
}

/// The VIPs an announcer made local on this host: each `ensure` adds only
/// new ones, in batches of rtnetlink requests, so 10,000 VIPs cost a few
/// system calls.
///
/// An announcer never removes a route: a VIP it stops announcing may still
/// carry connections the forwarder drains, and another announcer (layer 2
/// beside BGP) may still need it. [`RouteJanitor`] removes the routes of VIPs
/// that no Service uses any more, after a grace period.
#[derive(Debug, Default)]
pub struct LocalRoutes {
    done: BTreeSet<IpAddr>,
}

impl LocalRoutes {
    /// Makes every VIP in `vips` local (AnyIP route on `lo` in table local)
    /// and forgets the VIPs not in it, so one that comes back after the
    /// janitor removed its route is made local again.
    /// Every node may hold these routes: in layer 2 mode `arp_ignore=1` keeps
    /// the kernel from answering for them, in BGP mode only routers send here.
    pub fn ensure(&mut self, vips: impl IntoIterator<Item = IpAddr>) -> Result<(), HostError> {
        let wanted: BTreeSet<IpAddr> = vips.into_iter().collect();
        self.done.retain(|v| wanted.contains(v));
        let new: Vec<IpAddr> = wanted
            .iter()
            .copied()
            .filter(|v| !self.done.contains(v))
            .collect();
        self.add(new)
    }

    /// The incremental form of [`LocalRoutes::ensure`]: `gone` are forgotten
    /// (made local again if they come back), `wanted` made local if new.
    pub fn change(
        &mut self,
        gone: impl IntoIterator<Item = IpAddr>,
        wanted: impl IntoIterator<Item = IpAddr>,
    ) -> Result<(), HostError> {
        for v in gone {
            self.done.remove(&v);
        }
        let new: BTreeSet<IpAddr> = wanted
            .into_iter()
            .filter(|v| !self.done.contains(v))
            .collect();
        self.add(new.into_iter().collect())
    }

    fn add(&mut self, new: Vec<IpAddr>) -> Result<(), HostError> {
        if new.is_empty() {
            return Ok(());
        }
        let failed = |detail: String| HostError::Route {
            vips: list(&new),
            detail,
        };
        let refused = crate::netlink::add_local_routes(&new).map_err(|e| failed(e.to_string()))?;
        if !refused.is_empty() {
            let bad: Vec<IpAddr> = refused.iter().map(|(v, _)| *v).collect();
            return Err(HostError::Route {
                vips: list(&bad),
                detail: refused[0].1.to_string(),
            });
        }
        self.done.extend(new);
        Ok(())
    }
}

/// How long a VIP that no Service uses keeps its local route by default: the
/// forwarder's default drain time and more, so connections draining through a
/// removed Service finish first.
pub const DEFAULT_ROUTE_LINGER: std::time::Duration = std::time::Duration::from_secs(60);

/// Which of ferrolb's local routes to remove: pure, so the grace period is
/// tested without a kernel.
#[derive(Debug, Default)]
pub struct Retirement {
    gone_since: std::collections::BTreeMap<IpAddr, std::time::Instant>,
}

impl Retirement {
    /// Given the VIPs of every Service this speaker handles and ferrolb's
    /// routes now in the kernel, the routes to delete: those whose VIP has
    /// been unused for at least `linger`.
    pub fn due(
        &mut self,
        handled: &BTreeSet<IpAddr>,
        routes: &[IpAddr],
        now: std::time::Instant,
        linger: std::time::Duration,
    ) -> Vec<IpAddr> {
        self.gone_since
            .retain(|v, _| !handled.contains(v) && routes.contains(v));
        routes
            .iter()
            .filter(|v| !handled.contains(v))
            .filter(|v| {
                let since = *self.gone_since.entry(**v).or_insert(now);
                now.saturating_duration_since(since) >= linger
            })
            .copied()
            .collect()
    }
}

/// Removes the local routes of VIPs that left this node for good (no
/// Service this speaker handles uses them) once they have been unused for
/// the linger time, including routes a previous run of the speaker left
/// behind. It takes part in announcing as one more [`crate::announce::Announcer`]:
/// it sees every change of the handled Services.
pub struct RouteJanitor {
    handled: tokio::sync::watch::Sender<Option<BTreeSet<IpAddr>>>,
    services: crate::announce::Table,
}

impl RouteJanitor {
    /// Starts the janitor's task; it sweeps every `linger / 4` (100 ms to
    /// 10 s) and on every change, once the first list of Services is in.
    pub fn start(linger: std::time::Duration) -> RouteJanitor {
        let (tx, mut rx) = tokio::sync::watch::channel::<Option<BTreeSet<IpAddr>>>(None);
        let period = (linger / 4).clamp(
            std::time::Duration::from_millis(100),
            std::time::Duration::from_secs(10),
        );
        tokio::spawn(async move {
            let mut retirement = Retirement::default();
            let mut warn = ferrolb_ops::RateLimit::new(std::time::Duration::from_secs(60));
            let mut tick = tokio::time::interval(period);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    changed = rx.changed() => if changed.is_err() { return },
                }
                let Some(handled) = rx.borrow_and_update().clone() else {
                    continue;
                };
                let result = tokio::task::spawn_blocking(move || {
                    crate::netlink::ferrolb_local_routes().map(|routes| (handled, routes))
                })
                .await;
                let (handled, routes) = match result {
                    Ok(Ok(x)) => x,
                    Ok(Err(e)) => {
                        if warn.allow(std::time::Instant::now()).is_some() {
                            tracing::warn!(error = %e, "cannot list this node's local routes; stale VIP routes stay");
                        }
                        continue;
                    }
                    Err(_) => return,
                };
                let due = retirement.due(&handled, &routes, std::time::Instant::now(), linger);
                if due.is_empty() {
                    continue;
                }
                match crate::netlink::delete_local_routes(&due) {
                    Ok(refused) if refused.is_empty() => {
                        tracing::info!(vips = %list(&due), "removed the local routes of VIPs no Service uses any more");
                    }
                    Ok(refused) => {
                        tracing::warn!(vips = %list(&refused.iter().map(|(v, _)| *v).collect::<Vec<_>>()), error = %refused[0].1, "cannot remove local routes")
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot remove local routes"),
                }
            }
        });
        RouteJanitor {
            handled: tx,
            services: crate::announce::Table::default(),
        }
    }
}

impl crate::announce::Announcer for RouteJanitor {
    fn name(&self) -> &'static str {
        "routes"
    }

    fn update(&mut self, changes: &[crate::announce::Change]) {
        let touched = self.services.apply(changes);
        // Health and eligibility changes leave the VIPs as they are: only a
        // change of addresses (rare) rebuilds the set.
        let first = self.handled.borrow().is_none();
        if first || crate::announce::addresses_moved(&touched) {
            let handled = self
                .services
                .iter()
                .flat_map(|s| s.vips.iter().copied())
                .collect();
            self.handled.send_replace(Some(handled));
        }
    }
}

/// `ferrolb-speaker cleanup-node`: removes every local route ferrolb made
/// on this node; returns the VIPs.
pub fn remove_all_local_routes() -> Result<Vec<IpAddr>, HostError> {
    let failed = |vips: &[IpAddr], detail: String| HostError::Route {
        vips: list(vips),
        detail,
    };
    let routes = crate::netlink::ferrolb_local_routes().map_err(|e| failed(&[], e.to_string()))?;
    let refused =
        crate::netlink::delete_local_routes(&routes).map_err(|e| failed(&routes, e.to_string()))?;
    if let Some((_, e)) = refused.first() {
        let bad: Vec<IpAddr> = refused.iter().map(|(v, _)| *v).collect();
        return Err(failed(&bad, e.to_string()));
    }
    Ok(routes)
}

fn list(vips: &[IpAddr]) -> String {
    let shown: Vec<String> = vips.iter().take(3).map(ToString::to_string).collect();
    match vips.len() {
        n if n > 3 => format!("{} and {} more", shown.join(", "), n - 3),
        _ => shown.join(", "),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn effective_arp_values_are_the_larger_of_all_and_the_interface() {
        let v = |pairs: &[(&str, u8)]| -> Vec<(String, u8)> {
            pairs.iter().map(|(n, x)| (n.to_string(), *x)).collect()
        };
        // After prepare-node: all=1/2, the interfaces 0: nothing to write.
        assert_eq!(missing(1, &v(&[("eth0", 0), ("eth1", 0)]), 1), None);
        assert_eq!(missing(2, &v(&[("eth0", 0)]), 2), None);
        // Set per interface only: enough too.
        assert_eq!(missing(0, &v(&[("eth0", 1)]), 1), None);
        assert_eq!(missing(0, &v(&[("eth0", 8)]), 1), None, "stricter works");
        // One interface short: conf/all is to be written.
        assert_eq!(
            missing(0, &v(&[("eth0", 1), ("eth1", 0)]), 1),
            Some(("eth1".to_string(), 0))
        );
        assert_eq!(
            missing(1, &v(&[("eth0", 1)]), 2),
            Some(("eth0".to_string(), 1))
        );
        assert_eq!(effective(3, 1), 3);
    }

    #[test]
    fn routes_are_retired_only_after_the_linger_and_only_when_unused() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let linger = Duration::from_secs(60);
        let t0 = Instant::now();
        let mut r = Retirement::default();
        let handled: BTreeSet<IpAddr> = [ip("192.0.2.1")].into();
        let routes = [ip("192.0.2.1"), ip("192.0.2.2")];
        assert!(r.due(&handled, &routes, t0, linger).is_empty());
        assert!(r
            .due(&handled, &routes, t0 + Duration::from_secs(59), linger)
            .is_empty());
        assert_eq!(
            r.due(&handled, &routes, t0 + Duration::from_secs(60), linger),
            vec![ip("192.0.2.2")]
        );
        // A VIP that comes back within the linger starts over when it goes again.
        let mut r = Retirement::default();
        assert!(r.due(&handled, &routes, t0, linger).is_empty());
        let both: BTreeSet<IpAddr> = routes.into_iter().collect();
        assert!(r
            .due(&both, &routes, t0 + Duration::from_secs(30), linger)
            .is_empty());
        assert!(r
            .due(&handled, &routes, t0 + Duration::from_secs(70), linger)
            .is_empty());
        assert_eq!(
            r.due(&handled, &routes, t0 + Duration::from_secs(130), linger),
            vec![ip("192.0.2.2")]
        );
        // A route already gone is forgotten.
        r.due(
            &handled,
            &[ip("192.0.2.1")],
            t0 + Duration::from_secs(131),
            linger,
        );
        assert!(r.gone_since.is_empty());
    }
}
