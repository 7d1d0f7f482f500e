//! Standalone mode's decisions, free of I/O: file stamps, reads of the file,
//! the announcers' answers and forwarder health go in; announcer
//! reconfigurations, forwarder plans and announcement changes come out.
//! The runner in `standalone/mod.rs` polls the file, reads it, and carries
//! out what comes back.
//!
//! Invariants: a file is applied only once its stamp held still for one
//! poll and did not change while it was read (a file caught mid-write can
//! be valid YAML that says "nothing"); a file the announcers refuse is
//! refused whole, so what runs always comes from one configuration; an
//! invalid file changes nothing that runs.

use crate::announce::{Change, ServiceVips, Table};
use crate::announcers::NodeView;
use crate::plan::Plan;
use ferrolb_config::Config;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

/// A file's modification time and size: a change in either is a change.
pub type Stamp = Option<(SystemTime, u64)>;

/// What the runner must do, in order.
#[derive(Debug, Clone)]
pub enum Output {
    /// Reconfigure the announcers with this configuration, then report with
    /// [`Core::configured`].
    Configure {
        /// The configuration read.
        config: Arc<Config>,
        /// Who this node is in it.
        view: NodeView,
    },
    /// Open and close listeners to match the new plan: the configuration
    /// is in force (a listener that cannot open counts as a failed reload).
    Forward {
        /// Every service, with its addresses.
        plan: Plan,
        /// The configuration whose `forwarder` settings apply.
        config: Arc<Config>,
        /// What made it reload (`SIGHUP`, `file changed`).
        reason: &'static str,
    },
    /// Tell the announcers what changed.
    Announce(Vec<Change>),
    /// A reload was refused; the running configuration stays.
    Refused {
        /// What made it reload.
        reason: &'static str,
        /// Every problem, for the log.
        error: String,
    },
}

/// Who `node` is in `config`: its member entry's labels and address.
pub fn node_view(config: &Config, node: &str) -> NodeView {
    let me = config.members.iter().find(|m| m.name == node);
    let mut labels = me.map(|m| m.labels.clone()).unwrap_or_default();
    labels.insert("kubernetes.io/hostname".into(), node.to_string());
    NodeView {
        node: node.to_string(),
        members: config.members.clone(),
        labels,
        fallback_id: me.and_then(|m| match m.address.ip() {
            std::net::IpAddr::V4(a) => Some(a),
            _ => None,
        }),
    }
}

/// What the announcers get for `plan`: a service with ports is announced
/// only while its forwarder has a healthy backend.
fn vips(plan: &Plan, health: &BTreeMap<String, bool>) -> Vec<ServiceVips> {
    plan.services
        .iter()
        .map(|s| ServiceVips {
            key: s.service.name.clone(),
            pool: s.assignment.pool.to_string(),
            vips: s.assignment.ips.clone(),
            healthy: s.service.ports.is_empty()
                || health.get(&s.service.name).copied().unwrap_or(false),
            nodes: None,
            labels: Arc::new(s.service.labels.clone()),
        })
        .collect()
}

/// The standalone speaker's state between inputs.
pub struct Core {
    node: String,
    /// The plan in force.
    plan: Plan,
    /// A file read and valid, waiting for the announcers' answer.
    candidate: Option<(Arc<Config>, Plan, &'static str)>,
    /// The stamp of the file in force, and the one last seen.
    loaded: Stamp,
    seen: Stamp,
    health: BTreeMap<String, bool>,
    /// What the announcers were told: they receive only what changes.
    announced: Table,
    told: bool,
}

impl Core {
    /// A speaker running `plan` for `node`, read from a file with `stamp`.
    pub fn new(node: &str, plan: Plan, stamp: Stamp) -> Core {
        Core {
            node: node.to_string(),
            plan,
            candidate: None,
            loaded: stamp,
            seen: stamp,
            health: BTreeMap::new(),
            announced: Table::default(),
            told: false,
        }
    }

    /// The plan in force.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// A poll saw the file with `stamp`: whether to read it now (changed
    /// since it was loaded, and unchanged since the last poll).
    pub fn poll(&mut self, stamp: Stamp) -> bool {
        let settled = stamp == self.seen;
        self.seen = stamp;
        settled && stamp != self.loaded
    }

    /// The file was read (`read`) between stamps `before` and `after`.
    pub fn read(
        &mut self,
        reason: &'static str,
        before: Stamp,
        after: Stamp,
        read: Result<(Config, Plan), String>,
    ) -> Vec<Output> {
        if before != after {
            // Written while read: the next settled poll reads it whole.
            tracing::debug!(
                reason,
                "the file changed while it was read; reading it again"
            );
            self.seen = None;
            return Vec::new();
        }
        self.loaded = before;
        self.seen = before;
        match read {
            Ok((config, plan)) => {
                let config = Arc::new(config);
                let view = node_view(&config, &self.node);
                self.candidate = Some((Arc::clone(&config), plan, reason));
                // Announcers first: a change they refuse refuses the file.
                vec![Output::Configure { config, view }]
            }
            Err(error) => vec![Output::Refused { reason, error }],
        }
    }

    /// The announcers took the candidate (`Ok`, what they changed) or
    /// refused it.
    pub fn configured(&mut self, answer: Result<Vec<String>, String>) -> Vec<Output> {
        let Some((config, plan, reason)) = self.candidate.take() else {
            return Vec::new();
        };
        match answer {
            Ok(done) => {
                for line in done {
                    tracing::info!(reason, "reconfigured: {line}");
                }
                self.plan = plan.clone();
                vec![Output::Forward {
                    plan,
                    config,
                    reason,
                }]
            }
            Err(error) => vec![Output::Refused { reason, error }],
        }
    }

    /// The forwarder's health per service.
    pub fn health(&mut self, health: BTreeMap<String, bool>) {
        self.health = health;
    }

    /// What the announcers must be told now.
    pub fn step(&mut self) -> Vec<Output> {
        let current = vips(&self.plan, &self.health);
        let changes = self.announced.diff(&current);
        if changes.is_empty() && self.told {
            return Vec::new();
        }
        self.announced.apply(&changes);
        self.told = true;
        vec![Output::Announce(changes)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn load(yaml: &str) -> Result<(Config, Plan), String> {
        let config = Config::from_yaml(yaml).map_err(|e| e.to_string())?;
        let plan = crate::plan::plan(&config).map_err(|e| format!("{e:?}"))?;
        Ok((config, plan))
    }

    const ONE: &str = "pools: [{name: vips, addresses: [127.0.0.240/29]}]\nservices:\n  - name: web\n    pool: vips\n    ports: [{port: 8080, backends: [127.0.0.1:9001]}]\n";
    const TWO: &str = "pools: [{name: vips, addresses: [127.0.0.240/29]}]\nservices:\n  - name: web\n    pool: vips\n    ports: [{port: 8080, backends: [127.0.0.1:9001]}]\n  - name: dns\n    pool: vips\n";

    fn stamp(secs: u64, len: u64) -> Stamp {
        Some((SystemTime::UNIX_EPOCH + Duration::from_secs(secs), len))
    }

    fn started() -> Core {
        let (_, plan) = load(ONE).expect("valid");
        Core::new("host-a", plan, stamp(1, 10))
    }

    fn changes(out: &[Output]) -> Vec<Change> {
        out.iter()
            .filter_map(|o| match o {
                Output::Announce(c) => Some(c.clone()),
                _ => None,
            })
            .flatten()
            .collect()
    }

    #[test]
    fn a_change_is_read_once_its_stamp_held_for_one_poll() {
        let mut c = started();
        // (stamp seen by the poll, read now?)
        let table = [
            (stamp(1, 10), false), // unchanged
            (stamp(2, 0), false),  // truncated, being written
            (stamp(2, 40), false), // still growing
            (stamp(2, 80), false), // complete, not yet settled
            (stamp(2, 80), true),  // settled
        ];
        for (i, (s, want)) in table.into_iter().enumerate() {
            assert_eq!(c.poll(s), want, "poll {i}");
        }
        // Read, but written again meanwhile: nothing applied, read later.
        assert!(c
            .read("file changed", stamp(2, 80), stamp(3, 90), load(TWO))
            .is_empty());
        assert!(!c.poll(stamp(3, 90)), "not yet settled");
        assert!(c.poll(stamp(3, 90)));
        let out = c.read("file changed", stamp(3, 90), stamp(3, 90), load(TWO));
        assert!(matches!(&out[..], [Output::Configure { view, .. }] if view.node == "host-a"));
        // Once loaded, the same stamp is not read again.
        assert!(!c.poll(stamp(3, 90)));
    }

    #[test]
    fn announcers_first_then_the_forwarder_then_the_announcements() {
        let mut c = started();
        let first = changes(&c.step());
        assert_eq!(first.len(), 1, "the first step tells the whole plan");
        // Forwarded and without a healthy backend: not announced yet.
        assert!(matches!(&first[0], Change::Put(v) if !v.healthy));
        c.health(BTreeMap::from([("web".to_string(), true)]));
        assert!(matches!(&changes(&c.step())[..], [Change::Put(v)] if v.healthy));
        assert!(c.step().is_empty(), "nothing changed");
        let out = c.read("SIGHUP", stamp(2, 5), stamp(2, 5), load(TWO));
        assert!(matches!(&out[..], [Output::Configure { .. }]));
        assert_eq!(
            c.plan().services.len(),
            1,
            "not in force before the announcers took it"
        );
        let out = c.configured(Ok(vec!["bgp: peer added".into()]));
        assert!(
            matches!(&out[..], [Output::Forward { plan, reason: "SIGHUP", .. }] if plan.services.len() == 2)
        );
        let ch = changes(&c.step());
        assert!(
            matches!(&ch[..], [Change::Put(v)] if v.key == "dns" && v.healthy),
            "{ch:?}"
        );
    }

    #[test]
    fn a_refused_or_invalid_file_changes_nothing() {
        let mut c = started();
        c.step();
        let out = c.read(
            "file changed",
            stamp(2, 5),
            stamp(2, 5),
            load("pools: [}\n"),
        );
        assert!(matches!(&out[..], [Output::Refused { .. }]));
        let out = c.read("file changed", stamp(3, 5), stamp(3, 5), load(TWO));
        assert!(matches!(&out[..], [Output::Configure { .. }]));
        let out = c.configured(Err("bgp: cannot listen on 179".into()));
        assert!(
            matches!(&out[..], [Output::Refused { reason: "file changed", error }] if error.contains("179"))
        );
        assert_eq!(c.plan().services.len(), 1);
        assert!(c.step().is_empty(), "the announcers keep what they had");
        // A refused stamp is not retried until the file changes again.
        assert!(!c.poll(stamp(3, 5)));
        assert!(c.configured(Ok(vec![])).is_empty(), "no candidate left");
    }
}
