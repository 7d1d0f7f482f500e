//! What this node does for each Service (its layer 2 owner, BGP to which
//! peers) and which of those changes are news worth an Event. Pure: the
//! runner feeds it the Services a pass touched and carries out what it
//! returns (metric series, log lines, Events), so the rules are tested here
//! in tables instead of through a process.

use crate::announce::{vip_list, ServiceVips};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// One thing this node does for a Service: the mode (`l2`, `bgp`; a
/// metric label) and how an Event says it.
pub type Role = (&'static str, String);

/// What this node does for `v`: "as its layer 2 owner", "over BGP to a, b".
pub fn roles(
    v: &ServiceVips,
    me: &str,
    owned: &BTreeSet<String>,
    bgp_peers: Option<&[String]>,
) -> Vec<Role> {
    let mut out = Vec::new();
    if owned.contains(&v.key) {
        out.push(("l2", "as its layer 2 owner".to_string()));
    }
    if let Some(peers) = bgp_peers {
        if v.eligible(me) && v.healthy {
            out.push(("bgp", format!("over BGP to {}", peers.join(", "))));
        }
    }
    out
}

/// An Event this node sends about a Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Note {
    /// It announces the Service now (the note says how).
    Announced(String),
    /// It no longer announces the Service, which still exists.
    Withdrawn(String),
}

/// One Service whose roles changed in a pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Changed {
    /// The Service.
    pub key: String,
    /// Its roles now (empty: none).
    pub now: Vec<Role>,
    /// The Event to send, when the change is news.
    pub note: Option<Note>,
}

/// The roles of every Service this node announces, across passes.
#[derive(Debug, Default)]
pub struct Roles {
    announcing: BTreeMap<String, Vec<Role>>,
    baseline_taken: bool,
}

/// What a pass sees of the world.
pub struct View<'a> {
    /// This node.
    pub me: &'a str,
    /// The Services this node owns in layer 2.
    pub owned: &'a BTreeSet<String>,
    /// The BGP peers of this node, when BGP runs.
    pub bgp_peers: Option<&'a [String]>,
    /// Every role may have changed by configuration (BGP peers changed,
    /// layer 2 started or stopped).
    pub recheck: bool,
}

impl Roles {
    /// The roles of every Service this node announces.
    pub fn announcing(&self) -> &BTreeMap<String, Vec<Role>> {
        &self.announcing
    }

    /// Recomputes the roles of `keys` (`told` gives each one's entry, or
    /// none for a Service gone or without an address) and returns those
    /// that changed. The first pass is the baseline: BGP advertisements a
    /// restarted speaker resumes are not news (10,000 Services would mean
    /// 10,000 Events per node), nor are BGP roles a reconfiguration changed
    /// for every Service at once; layer 2 ownership, which settles after the
    /// first heartbeats, always is.
    pub fn pass<'k>(
        &mut self,
        keys: impl IntoIterator<Item = &'k String>,
        told: impl Fn(&str) -> Option<&'k Arc<ServiceVips>>,
        view: &View<'_>,
    ) -> Vec<Changed> {
        let baseline = !self.baseline_taken || view.recheck;
        self.baseline_taken = true;
        let mut out = Vec::new();
        for key in keys {
            let entry = told(key);
            let now = entry
                .map(|v| roles(v, view.me, view.owned, view.bgp_peers))
                .unwrap_or_default();
            let before = self.announcing.get(key.as_str());
            if before.map(Vec::as_slice).unwrap_or_default() == now.as_slice() {
                continue;
            }
            // BGP roles in a baseline pass are not news.
            let quiet = baseline && now.iter().all(|(m, _)| *m == "bgp");
            let note = if !now.is_empty() && !quiet {
                let how: Vec<&str> = now.iter().map(|(_, d)| d.as_str()).collect();
                Some(Note::Announced(format!(
                    "node {} announces {} {}",
                    view.me,
                    entry.map(|v| vip_list(v)).unwrap_or_default(),
                    how.join(" and ")
                )))
            } else if now.is_empty() && !baseline {
                // Only about Services that still exist and have an address.
                entry.map(|v| {
                    Note::Withdrawn(format!(
                        "node {} no longer announces {}",
                        view.me,
                        vip_list(v)
                    ))
                })
            } else {
                None
            };
            if now.is_empty() {
                self.announcing.remove(key.as_str());
            } else {
                self.announcing.insert(key.clone(), now.clone());
            }
            out.push(Changed {
                key: key.clone(),
                now,
                note,
            });
        }
        out
    }
}

/// Role Events a Service may get in a burst.
pub const EVENT_BURST: u32 = 5;
/// After a burst, one role Event per Service this often.
pub const EVENT_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

/// A per-Service budget for role Events, as the Kubernetes event recorder's
/// spam filter has: a Service whose endpoints flap every second would
/// otherwise get an Event a second from every node, costing the API server
/// writes and this speaker CPU. A burst of [`EVENT_BURST`] passes, then one
/// per [`EVENT_EVERY`]; the next Event that passes says how many were held
/// back, and the metrics and NodeAnnouncement always show the current state.
#[derive(Debug, Default)]
pub struct EventBudget {
    /// Per Service: tokens left, when they were last counted, Events held back.
    per: BTreeMap<String, (u32, std::time::Instant, u32)>,
}

impl EventBudget {
    /// Whether an Event about `key` may go now; `Some(n)`: yes, with `n`
    /// held back since the last one.
    pub fn allow(&mut self, key: &str, now: std::time::Instant) -> Option<u32> {
        let (tokens, at, held) = self
            .per
            .entry(key.to_string())
            .or_insert((EVENT_BURST, now, 0));
        let earned = (now.duration_since(*at).as_secs_f64() / EVENT_EVERY.as_secs_f64()) as u32;
        if earned > 0 {
            *tokens = (*tokens + earned).min(EVENT_BURST);
            *at += EVENT_EVERY * earned;
        }
        if *tokens == 0 {
            *held += 1;
            return None;
        }
        *tokens -= 1;
        Some(std::mem::take(held))
    }

    /// Forgets Services whose budget is full again and nothing held back
    /// (keeps the map as small as the Services that flap).
    pub fn prune(&mut self, now: std::time::Instant) {
        self.per.retain(|_, (tokens, at, held)| {
            *held > 0 || now.duration_since(*at) < EVENT_EVERY * (EVENT_BURST - *tokens)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flapping_service_gets_a_burst_then_one_event_per_period() {
        let t0 = std::time::Instant::now();
        let mut b = EventBudget::default();
        let sec = std::time::Duration::from_secs(1);
        // Flapping every second for two minutes: 5 at once, then one per 30 s.
        let mut sent = Vec::new();
        for i in 0..120u32 {
            if let Some(held) = b.allow("shop/web", t0 + sec * i) {
                sent.push((i, held));
            }
        }
        assert_eq!(
            sent,
            vec![
                (0, 0),
                (1, 0),
                (2, 0),
                (3, 0),
                (4, 0),
                (30, 25),
                (60, 29),
                (90, 29)
            ]
        );
        // Another Service has its own budget.
        assert_eq!(b.allow("shop/api", t0 + sec * 120), Some(0));
        // Quiet for long enough: the budget refills, and the entry can go.
        b.prune(t0 + sec * 1000);
        assert_eq!(b.per.len(), 1, "shop/web still holds back 29 changes");
        assert_eq!(b.allow("shop/web", t0 + sec * 1000), Some(29));
        b.prune(t0 + sec * 2000);
        assert!(b.per.is_empty());
    }

    fn svc(key: &str, healthy: bool) -> Arc<ServiceVips> {
        Arc::new(ServiceVips {
            key: key.into(),
            pool: "p".into(),
            vips: vec!["192.0.2.10".parse().unwrap()],
            healthy,
            nodes: None,
            labels: Default::default(),
        })
    }

    /// One pass over `services` (key, entry) with `owned` and BGP peers.
    fn run(
        r: &mut Roles,
        services: &[(String, Option<Arc<ServiceVips>>)],
        owned: &[&str],
        peers: Option<&[String]>,
        recheck: bool,
    ) -> Vec<(String, Vec<&'static str>, Option<Note>)> {
        let owned: BTreeSet<String> = owned.iter().map(|s| s.to_string()).collect();
        let view = View {
            me: "n1",
            owned: &owned,
            bgp_peers: peers,
            recheck,
        };
        let keys: Vec<&String> = services.iter().map(|(k, _)| k).collect();
        r.pass(
            keys,
            |k| {
                services
                    .iter()
                    .find(|(x, _)| x == k)
                    .and_then(|(_, v)| v.as_ref())
            },
            &view,
        )
        .into_iter()
        .map(|c| (c.key, c.now.iter().map(|(m, _)| *m).collect(), c.note))
        .collect()
    }

    #[test]
    fn which_changes_are_news() {
        let peers = vec!["tor1".to_string()];
        let bgp = Some(peers.as_slice());
        let a = || ("a".to_string(), Some(svc("a", true)));
        let b = || ("b".to_string(), Some(svc("b", true)));
        let mut r = Roles::default();
        // Baseline: resumed BGP advertisements are not news; layer 2 ownership is.
        let out = run(&mut r, &[a(), b()], &["b"], bgp, false);
        assert_eq!(out.len(), 2);
        assert_eq!((out[0].1.clone(), out[0].2.clone()), (vec!["bgp"], None));
        assert_eq!(out[1].1, vec!["l2", "bgp"]);
        assert_eq!(
            out[1].2,
            Some(Note::Announced(
                "node n1 announces 192.0.2.10 as its layer 2 owner and over BGP to tor1".into()
            ))
        );
        // Nothing changed: nothing reported.
        assert!(run(&mut r, &[a(), b()], &["b"], bgp, false).is_empty());
        // Later: a Service going unhealthy is withdrawn, with an Event.
        let sick = ("a".to_string(), Some(svc("a", false)));
        let out = run(&mut r, &[sick], &["b"], bgp, false);
        assert_eq!(
            out,
            vec![(
                "a".into(),
                vec![],
                Some(Note::Withdrawn(
                    "node n1 no longer announces 192.0.2.10".into()
                ))
            )]
        );
        assert!(!r.announcing().contains_key("a"));
        // And healthy again: announced, with an Event (no longer the baseline).
        let out = run(&mut r, &[a()], &["b"], bgp, false);
        assert_eq!(
            out[0].2,
            Some(Note::Announced(
                "node n1 announces 192.0.2.10 over BGP to tor1".into()
            ))
        );
        // A Service deleted: its roles go, with no Event about a Service that is gone.
        let out = run(&mut r, &[("a".to_string(), None)], &["b"], bgp, false);
        assert_eq!(out, vec![("a".into(), vec![], None)]);
        // A reconfiguration that changes the peers is a baseline for BGP...
        let more = vec!["tor1".to_string(), "tor2".to_string()];
        let out = run(&mut r, &[a(), b()], &["b"], Some(more.as_slice()), true);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].2, None, "BGP-only roles after a reconfiguration");
        // ...but layer 2 ownership is news even then.
        assert!(matches!(out[1].2, Some(Note::Announced(_))));
        // Ownership lost (BGP stays): an Event saying what it still does.
        let out = run(&mut r, &[b()], &[], Some(more.as_slice()), false);
        assert_eq!(
            out[0].2,
            Some(Note::Announced(
                "node n1 announces 192.0.2.10 over BGP to tor1, tor2".into()
            ))
        );
        assert_eq!(r.announcing().len(), 2);
    }

    #[test]
    fn a_node_not_eligible_or_without_bgp_has_no_bgp_role() {
        let mut v = (*svc("a", true)).clone();
        v.nodes = Some(BTreeSet::from(["n2".to_string()]));
        let peers = vec!["tor1".to_string()];
        let owned = BTreeSet::new();
        assert!(roles(&v, "n1", &owned, Some(&peers)).is_empty());
        assert_eq!(roles(&v, "n2", &owned, Some(&peers)).len(), 1);
        assert!(roles(&v, "n2", &owned, None).is_empty());
    }
}
