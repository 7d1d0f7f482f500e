//! The announcers a configuration asks for (layer 2, BGP, and the route
//! janitor that comes with either), started, reconfigured without a restart,
//! and stopped as one. Standalone and Kubernetes mode both hold one
//! [`Announcers`]; it keeps every service it was told, so an announcer that
//! a reconfiguration starts begins with the whole table.
//!
//! A reconfiguration prepares everything that can fail (heartbeat keys,
//! interfaces, the router ID, sockets) before it changes anything: a change
//! that cannot apply is refused with the reason, and what runs keeps running.

use crate::announce::{Announcer, Change, Table};
use crate::metrics::Metrics;
use anyhow::Context;
use ferrolb_config::{Config, Member};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// What the host gives the announcers beside the configuration.
#[derive(Debug, Clone)]
pub struct HostSettings {
    /// How long a VIP no Service uses keeps its local route.
    pub route_linger: Duration,
    /// Heartbeat keys from a file that may be absent (Kubernetes: an
    /// optional Secret volume); `failover.keyFile` takes precedence and must exist.
    pub member_keys_file: Option<PathBuf>,
}

/// Who this node is, as the announcers need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeView {
    /// This node's name.
    pub node: String,
    /// Every layer 2 member, this node included.
    pub members: Vec<Member>,
    /// This node's labels (BGP peers' node selectors).
    pub labels: BTreeMap<String, String>,
    /// The BGP router ID when the configuration sets none.
    pub fallback_id: Option<Ipv4Addr>,
}

/// The heartbeat key file in force: `failover.keyFile`, else the host's.
fn keys_path<'a>(config_file: Option<&'a PathBuf>, host: &'a HostSettings) -> Option<&'a PathBuf> {
    config_file.or(host.member_keys_file.as_ref())
}

/// Modification time and size of a file (what a key rotation changes; a
/// Kubernetes Secret volume swaps a symlink, which `metadata` follows).
fn stamp(path: Option<&PathBuf>) -> Option<(std::time::SystemTime, u64)> {
    let m = std::fs::metadata(path?).ok()?;
    Some((m.modified().ok()?, m.len()))
}

/// The heartbeat keys: `failover.keyFile` (must be readable), else the
/// host's optional file, else none.
fn member_keys(
    config_file: Option<&PathBuf>,
    host: &HostSettings,
) -> anyhow::Result<ferrolb_l2::auth::Keys> {
    let (path, required) = match (config_file, &host.member_keys_file) {
        (Some(p), _) => (p, true),
        (None, Some(p)) => (p, false),
        (None, None) => return Ok(ferrolb_l2::auth::Keys::none()),
    };
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(ferrolb_l2::auth::Keys::none())
        }
        Err(e) => anyhow::bail!("cannot read the heartbeat keys {}: {e}", path.display()),
    };
    let keys = ferrolb_l2::auth::Keys::from_text(&text)
        .with_context(|| format!("heartbeat keys {}", path.display()))?;
    if keys.enabled() {
        tracing::debug!(file = %path.display(), keys = ?keys, "layer 2 heartbeats are signed (HMAC-SHA256)");
    }
    Ok(keys)
}

/// The layer 2 options `config` asks for on this node, if any.
fn l2_options(
    config: &Config,
    view: &NodeView,
    host: &HostSettings,
) -> anyhow::Result<Option<crate::l2::Options>> {
    if view.members.is_empty() || config.l2.is_empty() {
        return Ok(None);
    }
    Ok(Some(crate::l2::Options {
        node: view.node.clone(),
        members: view.members.clone(),
        advertisements: config.l2.clone(),
        timing: ferrolb_l2::membership::Timing {
            interval_ms: config.failover.heartbeat_interval.as_millis() as u64,
            dead_after_ms: config.failover.dead_after.as_millis() as u64,
        },
        fast: config
            .failover
            .fast_detection
            .then_some(ferrolb_l2::membership::Fast::PROFILE),
        refresh: config.failover.refresh_interval,
        repeats: config.failover.announce_repeats.clone(),
        keys: member_keys(config.failover.key_file.as_ref(), host)?,
    }))
}

/// The BGP options `config` asks for on this node (peers whose node
/// selector matches its labels), if any.
fn bgp_options(config: &Config, view: &NodeView) -> anyhow::Result<Option<crate::bgp::Options>> {
    let Some(bgp) = config.bgp.as_ref().filter(|b| !b.peers.is_empty()) else {
        return Ok(None);
    };
    let peers: Vec<ferrolb_config::Peer> = bgp
        .peers
        .iter()
        .filter(|p| {
            p.node_selector
                .as_ref()
                .is_none_or(|s| s.matches(&view.labels))
        })
        .cloned()
        .collect();
    // A peer's own routerId serves its session; the node's is needed only
    // for peers without one.
    let router_id = bgp
        .router_id
        .or(view.fallback_id)
        .or_else(|| {
            peers
                .iter()
                .all(|p| p.router_id.is_some())
                .then(|| peers.first().and_then(|p| p.router_id))
                .flatten()
        })
        .context("BGP needs a router ID: set bgp.routerId (or each peer's routerId), or give this node an IPv4 address")?;
    Ok(Some(crate::bgp::Options {
        node: view.node.clone(),
        router_id,
        peers,
        advertisements: crate::bgp::policy::for_node(&bgp.advertisements, &view.labels),
    }))
}

/// Layer 2 and/or BGP (or nothing), and the route janitor.
pub struct Announcers {
    metrics: Arc<Metrics>,
    host: HostSettings,
    view: NodeView,
    l2: Option<crate::l2::L2Announcer>,
    bgp: Option<crate::bgp::BgpAnnouncer>,
    janitor: Option<crate::host::RouteJanitor>,
    /// Every service as last told (what a newly started announcer gets).
    table: Table,
    /// Tasks of announcers a reconfiguration stopped, still saying goodbye.
    ending: Vec<tokio::task::JoinHandle<()>>,
    /// The layer 2 settings in force, the configuration's key file, and
    /// that file's stamp when it was read (a rotation changes it).
    l2_settings: Option<crate::l2::Settings>,
    key_file: Option<PathBuf>,
    keys_stamp: Option<(std::time::SystemTime, u64)>,
    /// The key file's stamp at the last check: a change is read once it
    /// held for one check, never mid-write (half a key can be a valid key).
    keys_seen: Option<(std::time::SystemTime, u64)>,
    keys_warn: ferrolb_ops::RateLimit,
}

impl Announcers {
    /// Starts what `config` asks for on this node.
    pub async fn start(
        config: &Config,
        view: NodeView,
        metrics: &Arc<Metrics>,
        host: &HostSettings,
    ) -> anyhow::Result<Announcers> {
        let mut a = Announcers {
            metrics: Arc::clone(metrics),
            host: host.clone(),
            view: view.clone(),
            l2: None,
            bgp: None,
            janitor: None,
            table: Table::default(),
            ending: Vec::new(),
            l2_settings: None,
            key_file: None,
            keys_stamp: None,
            keys_seen: None,
            keys_warn: ferrolb_ops::RateLimit::new(Duration::from_secs(60)),
        };
        a.reconfigure(config, view).await?;
        Ok(a)
    }

    /// The layer 2 announcer, while layer 2 mode runs.
    pub fn l2(&self) -> Option<&crate::l2::L2Announcer> {
        self.l2.as_ref()
    }

    /// The BGP peers of this node, while BGP mode runs.
    pub fn bgp_peers(&self) -> Option<Vec<String>> {
        self.bgp.as_ref().map(|b| b.peer_names())
    }

    /// Applies `config` and `view` to the running announcers: starts the
    /// ones newly asked for, stops those no longer asked for, and changes the
    /// others in place (see `bgp::BgpAnnouncer::reconfigure` and
    /// `l2::L2Announcer::reconfigure`). Returns what changed, one line each;
    /// an error means nothing changed.
    pub async fn reconfigure(
        &mut self,
        config: &Config,
        view: NodeView,
    ) -> anyhow::Result<Vec<String>> {
        let mut done = Vec::new();
        // Prepare: everything that can fail, before anything changes.
        let key_file = config.failover.key_file.clone();
        let keys_stamp = stamp(keys_path(key_file.as_ref(), &self.host));
        let l2_opts = l2_options(config, &view, &self.host)?;
        let bgp_opts = bgp_options(config, &view)?;
        if let (Some(_), Some(o)) = (&self.l2, &l2_opts) {
            if !o.members.iter().any(|m| m.name == view.node) {
                anyhow::bail!(crate::l2::L2Error::NotAMember(view.node.clone()));
            }
            let me = |v: &NodeView| {
                v.members
                    .iter()
                    .find(|m| m.name == v.node)
                    .map(|m| m.address)
            };
            if me(&self.view) != me(&view) {
                tracing::warn!(node = %view.node, "this node's membership address changed: restart this speaker to use it (the other members use it at once)");
            }
            if let Some(l2) = &self.l2 {
                l2.check(&o.settings())?;
            }
        }
        let mut new_l2 = None;
        if let (None, Some(o)) = (&self.l2, &l2_opts) {
            new_l2 = Some(
                crate::l2::start(o.clone(), Arc::clone(&self.metrics))
                    .await
                    .context("layer 2 mode cannot start")?,
            );
        }
        let mut new_bgp = None;
        match (&mut self.bgp, &bgp_opts) {
            (None, Some(o)) => {
                new_bgp = Some(
                    crate::bgp::start(o.clone(), Arc::clone(&self.metrics))
                        .await
                        .context("BGP mode cannot start (BFD needs UDP port 3784)")?,
                );
            }
            (Some(b), Some(o)) => {
                let r = b
                    .reconfigure(o.clone())
                    .await
                    .context("the BGP change cannot apply")?;
                for (what, names) in [
                    ("added", &r.added),
                    ("reset", &r.reset),
                    ("removed", &r.removed),
                ] {
                    if !names.is_empty() {
                        done.push(format!("BGP peers {what}: {}", names.join(", ")));
                    }
                }
                if r.advertisements {
                    done.push("BGP advertisements changed".into());
                }
            }
            _ => {}
        }

        // Commit.
        let l2_settings = l2_opts.as_ref().map(|o| o.settings());
        match (&self.l2, l2_opts) {
            (Some(l2), Some(o)) => {
                // Checked above; an interface that vanished since is picked
                // up by the interface watcher when it returns.
                if let Err(e) = l2.reconfigure(o.settings()) {
                    tracing::error!(error = %e, "layer 2 settings not applied");
                }
                if o.members != self.view.members {
                    l2.set_members(o.members);
                    done.push("layer 2 members changed".into());
                }
            }
            (Some(_), None) => {
                // Its runner stops when the last handle goes; the other
                // members see it leave and take its VIPs.
                self.l2 = None;
                done.push("layer 2 mode stopped".into());
            }
            _ => {}
        }
        if self.bgp.is_some() && bgp_opts.is_none() {
            if let Some(mut b) = self.bgp.take() {
                self.ending.extend(b.stop());
            }
            done.push("BGP mode stopped".into());
        }
        let all: Vec<Change> = self.table.iter().cloned().map(Change::Put).collect();
        if let Some(mut l2) = new_l2 {
            l2.update(&all);
            self.l2 = Some(l2);
            done.push("layer 2 mode started".into());
        }
        if let Some(mut b) = new_bgp {
            b.update(&all);
            self.bgp = Some(b);
            done.push("BGP mode started".into());
        }
        let announcing = self.l2.is_some() || self.bgp.is_some();
        if announcing && self.janitor.is_none() {
            // Announcers make VIPs local; the janitor removes what no Service uses any more.
            let mut j = crate::host::RouteJanitor::start(self.host.route_linger);
            j.update(&all);
            self.janitor = Some(j);
        } else if !announcing {
            self.janitor = None;
        }
        self.view = view;
        self.l2_settings = self.l2.as_ref().and(l2_settings);
        self.key_file = key_file;
        self.keys_stamp = keys_stamp;
        self.keys_seen = keys_stamp;
        self.ending.retain(|t| !t.is_finished());
        Ok(done)
    }

    /// Re-reads the heartbeat key file when it changed (a rotation: a new
    /// Secret version, an edited file) and hands the keys to layer 2 at
    /// once; cheap when it did not (one `stat`). A file that cannot be read
    /// or parsed leaves the keys in use, with a warning a minute.
    pub fn refresh_keys(&mut self) {
        let (Some(l2), Some(settings)) = (&self.l2, &mut self.l2_settings) else {
            return;
        };
        let now = stamp(keys_path(self.key_file.as_ref(), &self.host));
        let settled = now == self.keys_seen;
        self.keys_seen = now;
        if now == self.keys_stamp || !settled {
            return;
        }
        match member_keys(self.key_file.as_ref(), &self.host) {
            Ok(keys) => {
                self.keys_stamp = now;
                if keys.ids() != settings.keys.ids() {
                    settings.keys = keys;
                    if let Err(e) = l2.reconfigure(settings.clone()) {
                        tracing::error!(error = %e, "new heartbeat keys not applied");
                    }
                }
            }
            Err(e) => {
                if let Some(held) = self.keys_warn.allow(std::time::Instant::now()) {
                    tracing::warn!(error = %format!("{e:#}"), repeats_not_logged = held, "the heartbeat key file changed but cannot be used; the keys in use stay");
                }
            }
        }
    }
}

impl Announcer for Announcers {
    fn name(&self) -> &'static str {
        match (&self.l2, &self.bgp) {
            (Some(_), Some(_)) => "l2+bgp",
            (Some(_), None) => "l2",
            (None, Some(_)) => "bgp",
            (None, None) => "none",
        }
    }

    fn update(&mut self, changes: &[Change]) {
        self.table.apply(changes);
        if let Some(l2) = &mut self.l2 {
            l2.update(changes);
        }
        if let Some(b) = &mut self.bgp {
            b.update(changes);
        }
        if let Some(j) = &mut self.janitor {
            j.update(changes);
        }
    }

    fn stop(&mut self) -> Vec<tokio::task::JoinHandle<()>> {
        let mut tasks = std::mem::take(&mut self.ending);
        if let Some(b) = &mut self.bgp {
            tasks.extend(b.stop());
        }
        tasks
    }
}
