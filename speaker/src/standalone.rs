//! Standalone mode: the speaker reads pools, services and backends from a
//! YAML file, allocates VIPs, forwards traffic, and reloads on SIGHUP or
//! when the file changes, with no Kubernetes involved.

use crate::announce::{Announcer, NoAnnouncer, ServiceVips};
use crate::forwarder::Forwarder;
use crate::metrics::{Metrics, ResultLabels};
use crate::plan::{self, Plan};
use anyhow::{bail, Context};
use ferrolb_config::Config;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::signal::unix::{signal, SignalKind};

/// How standalone mode runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// The YAML file.
    pub config: PathBuf,
    /// This host's name (matched against `members`).
    pub node: String,
    /// Where `/metrics`, `/healthz` and `/readyz` are served.
    pub metrics_address: SocketAddr,
    /// TLS and bearer tokens for that endpoint.
    pub metrics_access: ferrolb_ops::Access,
    /// How often the file is checked for changes.
    pub poll: Duration,
    /// How long a VIP no service uses keeps its local route.
    pub route_linger: Duration,
}

/// Reads, validates and plans the file; the error lists every problem.
pub fn load(path: &Path) -> Result<(Config, Plan), String> {
    let config = Config::load(path).map_err(|e| e.to_string())?;
    // There is no API to read a Secret from here.
    if let Some(b) = &config.bgp {
        for p in &b.peers {
            if matches!(
                p.password,
                Some(ferrolb_config::PeerPassword::Secret { .. })
            ) {
                return Err(format!(
                    "{}: bgp peer {:?}: passwordSecret is read from the Kubernetes API, which standalone mode does not use; use passwordFile",
                    path.display(),
                    p.name
                ));
            }
        }
    }
    let plan = plan::plan(&config).map_err(|errors| {
        let lines: Vec<String> = errors.iter().map(|e| format!("  {e}")).collect();
        format!(
            "{}: not every service gets an address:\n{}",
            path.display(),
            lines.join("\n")
        )
    })?;
    Ok((config, plan))
}

/// Modification time and size: a change in either triggers a reload.
fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

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
        })
        .collect()
}

/// Describes where to reach each forwarded port.
fn log_plan(plan: &Plan) {
    for s in &plan.services {
        for ip in &s.assignment.ips {
            for p in &s.service.ports {
                tracing::info!(
                    service = %s.service.name,
                    vip = %SocketAddr::new(*ip, p.port),
                    protocol = %p.protocol,
                    backends = p.backends.len(),
                    "serving"
                );
            }
        }
    }
}

/// The announcers a configuration asks for, running.
pub struct Started {
    /// Layer 2 and/or BGP (or nothing).
    pub announcer: Box<dyn Announcer>,
    /// The layer 2 handle, to update its member list.
    pub l2: Option<crate::l2::L2Announcer>,
}

/// What the host gives the announcers beside the configuration.
#[derive(Debug, Clone)]
pub struct HostSettings {
    /// How long a VIP no Service uses keeps its local route.
    pub route_linger: Duration,
    /// Heartbeat keys from a file that may be absent (Kubernetes: an
    /// optional Secret volume); `failover.keyFile` takes precedence and must exist.
    pub member_keys_file: Option<PathBuf>,
}

/// The heartbeat keys: `failover.keyFile` (must be readable), else the
/// host's optional file, else none.
fn member_keys(config: &Config, host: &HostSettings) -> anyhow::Result<ferrolb_l2::auth::Keys> {
    let (path, required) = match (&config.failover.key_file, &host.member_keys_file) {
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
        tracing::info!(file = %path.display(), keys = ?keys, "layer 2 heartbeats are signed (HMAC-SHA256)");
    }
    Ok(keys)
}

/// Starts layer 2 mode when the config has `l2` advertisements and members,
/// and BGP mode when it has peers (those whose node selector matches
/// `labels`). `fallback_id` is the BGP router ID when the config sets none.
pub async fn start_announcers(
    config: &Config,
    node: &str,
    members: Vec<ferrolb_config::Member>,
    labels: &BTreeMap<String, String>,
    fallback_id: Option<std::net::Ipv4Addr>,
    metrics: &Arc<Metrics>,
    host: &HostSettings,
) -> anyhow::Result<Started> {
    let mut announcers: Vec<Box<dyn Announcer>> = Vec::new();
    let mut l2_handle = None;
    if !members.is_empty() && !config.l2.is_empty() {
        let l2 = crate::l2::Options {
            node: node.to_string(),
            members,
            advertisements: config.l2.clone(),
            timing: ferrolb_l2::membership::Timing {
                interval_ms: config.failover.heartbeat_interval.as_millis() as u64,
                dead_after_ms: config.failover.dead_after.as_millis() as u64,
            },
            refresh: config.failover.refresh_interval,
            repeats: config.failover.announce_repeats.clone(),
            keys: member_keys(config, host)?,
        };
        let l2 = crate::l2::start(l2, Arc::clone(metrics))
            .await
            .context("layer 2 mode cannot start")?;
        l2_handle = Some(l2.clone());
        announcers.push(Box::new(l2));
    }
    if let Some(bgp) = config.bgp.as_ref().filter(|b| !b.peers.is_empty()) {
        let router_id = bgp.router_id.or(fallback_id).context(
            "BGP needs a router ID: set bgp.routerId, or give this node an IPv4 address",
        )?;
        let peers = bgp
            .peers
            .iter()
            .filter(|p| p.node_selector.as_ref().is_none_or(|s| s.matches(labels)))
            .cloned()
            .collect();
        let opts = crate::bgp::Options {
            node: node.to_string(),
            router_id,
            peers,
            advertisements: bgp.advertisements.clone(),
        };
        let bgp = crate::bgp::start(opts, Arc::clone(metrics))
            .await
            .context("BGP mode cannot start (BFD needs UDP port 3784)")?;
        announcers.push(Box::new(bgp));
    }
    let announcer: Box<dyn Announcer> = match announcers.len() {
        0 => Box::new(NoAnnouncer),
        _ => {
            // Announcers make VIPs local; the janitor removes what no Service uses any more.
            announcers.push(Box::new(crate::host::RouteJanitor::start(
                host.route_linger,
            )));
            Box::new(crate::announce::Many(announcers))
        }
    };
    Ok(Started {
        announcer,
        l2: l2_handle,
    })
}

/// Runs until SIGTERM or SIGINT, then drains.
pub async fn run(opts: Options) -> anyhow::Result<()> {
    let metrics = Metrics::new();
    let (config, mut plan) = match load(&opts.config) {
        Ok(x) => x,
        Err(e) => bail!("{e}"),
    };
    let mut forwarder = Forwarder::new(Arc::clone(&metrics));
    let errors = forwarder.apply(&plan, &config.forwarder);
    if !errors.is_empty() {
        let lines: Vec<String> = errors.iter().map(|e| format!("  {e}")).collect();
        bail!("cannot open every listener:\n{}", lines.join("\n"));
    }
    log_plan(&plan);
    let ready = Arc::new(AtomicBool::new(false));
    let render = Arc::clone(&metrics);
    ferrolb_ops::start_with(
        opts.metrics_address,
        Box::new(move || render.encode()),
        Arc::clone(&ready),
        opts.metrics_access.clone(),
    )
    .await?;
    let me = config.members.iter().find(|m| m.name == opts.node);
    let mut labels = me.map(|m| m.labels.clone()).unwrap_or_default();
    labels.insert("kubernetes.io/hostname".into(), opts.node.clone());
    let fallback_id = me.and_then(|m| match m.address.ip() {
        std::net::IpAddr::V4(a) => Some(a),
        _ => None,
    });
    let started = start_announcers(
        &config,
        &opts.node,
        config.members.clone(),
        &labels,
        fallback_id,
        &metrics,
        &HostSettings {
            route_linger: opts.route_linger,
            member_keys_file: None,
        },
    )
    .await?;
    let mut announcer = started.announcer;
    tracing::info!(
        node = %opts.node,
        config = %opts.config.display(),
        metrics = %opts.metrics_address,
        announcer = announcer.name(),
        services = plan.services.len(),
        "standalone speaker ready"
    );
    ready.store(true, Ordering::Relaxed);

    let mut hup = signal(SignalKind::hangup()).context("cannot watch SIGHUP")?;
    let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    let mut last_stamp = stamp(&opts.config);
    let mut poll = tokio::time::interval(opts.poll);
    let mut health_tick = tokio::time::interval(Duration::from_millis(100));
    let mut health = forwarder.service_health();
    // What the announcers were told: they receive only what changes.
    let mut announced = crate::announce::Table::default();
    let mut told = false;
    loop {
        let reason = tokio::select! {
            _ = hup.recv() => Some("SIGHUP"),
            _ = poll.tick() => {
                let now = stamp(&opts.config);
                if now != last_stamp {
                    last_stamp = now;
                    Some("file changed")
                } else {
                    None
                }
            }
            _ = health_tick.tick() => {
                forwarder.refresh_health();
                None
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        };
        if let Some(reason) = reason {
            match load(&opts.config) {
                Ok((config, new_plan)) => {
                    let errors = forwarder.apply(&new_plan, &config.forwarder);
                    for e in &errors {
                        tracing::error!(error = %e, "reload: listener not opened");
                    }
                    let result = if errors.is_empty() { "ok" } else { "error" };
                    metrics
                        .config_reloads
                        .get_or_create(&ResultLabels {
                            result: result.into(),
                        })
                        .inc();
                    plan = new_plan;
                    log_plan(&plan);
                    tracing::info!(
                        reason,
                        services = plan.services.len(),
                        "configuration reloaded"
                    );
                }
                Err(e) => {
                    metrics
                        .config_reloads
                        .get_or_create(&ResultLabels {
                            result: "error".into(),
                        })
                        .inc();
                    tracing::error!(
                        reason,
                        "reload refused, the running configuration stays in force:\n{e}"
                    );
                }
            }
        }
        let current = vips(&plan, &health.borrow_and_update());
        let changes = announced.diff(&current);
        if !changes.is_empty() || !told {
            announced.apply(&changes);
            announcer.update(&changes);
            told = true;
        }
    }
    tracing::info!("shutting down: no new connections");
    ready.store(false, Ordering::Relaxed);
    // Withdraw first (BGP Cease), then drain: routers stop sending new flows while open ones finish.
    for task in announcer.stop() {
        let _ = tokio::time::timeout(Duration::from_secs(1), task).await;
    }
    forwarder.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}
