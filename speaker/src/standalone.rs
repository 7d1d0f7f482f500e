//! Standalone mode: the speaker reads pools, services and backends from a
//! YAML file, allocates VIPs, forwards traffic, and reloads on SIGHUP or
//! when the file changes, with no Kubernetes involved.

use crate::announce::{Announcer, ServiceVips};
use crate::announcers::{Announcers, HostSettings, NodeView};
use crate::forwarder::Forwarder;
use crate::metrics::Metrics;
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

/// Who this node is in `config`: its member entry's labels and address.
fn node_view(config: &Config, node: &str) -> NodeView {
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
    let mut announcer = Announcers::start(
        &config,
        node_view(&config, &opts.node),
        &metrics,
        &HostSettings {
            route_linger: opts.route_linger,
            member_keys_file: None,
        },
    )
    .await?;
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
    // The file's stamp as loaded, and as last seen: a change is loaded once
    // it has stayed the same for one poll, so a file caught mid-write
    // (truncated, half written: possibly valid YAML that says "nothing") is
    // never applied. SIGHUP loads at once.
    let mut loaded_stamp = stamp(&opts.config);
    let mut seen_stamp = loaded_stamp;
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
                announcer.refresh_keys();
                let now = stamp(&opts.config);
                let settled = now == seen_stamp;
                seen_stamp = now;
                (settled && now != loaded_stamp).then_some("file changed")
            }
            _ = health_tick.tick() => {
                forwarder.refresh_health();
                None
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        };
        if let Some(reason) = reason {
            let before = stamp(&opts.config);
            let read = load(&opts.config);
            if stamp(&opts.config) != before {
                // Written while read: the next settled poll loads it whole.
                tracing::debug!(
                    reason,
                    "the file changed while it was read; reading it again"
                );
                seen_stamp = None;
                continue;
            }
            loaded_stamp = before;
            seen_stamp = before;
            // Announcers first: a change they refuse refuses the whole file,
            // so what runs always comes from one configuration.
            let loaded = match read {
                Ok((config, new_plan)) => {
                    match announcer
                        .reconfigure(&config, node_view(&config, &opts.node))
                        .await
                    {
                        Ok(done) => {
                            for line in done {
                                tracing::info!(reason, "reconfigured: {line}");
                            }
                            Ok((config, new_plan))
                        }
                        Err(e) => Err(format!("{e:#}")),
                    }
                }
                Err(e) => Err(e),
            };
            match loaded {
                Ok((config, new_plan)) => {
                    let errors = forwarder.apply(&new_plan, &config.forwarder);
                    for e in &errors {
                        tracing::error!(error = %e, "reload: listener not opened");
                    }
                    metrics.reloaded(errors.is_empty());
                    plan = new_plan;
                    log_plan(&plan);
                    tracing::info!(
                        reason,
                        services = plan.services.len(),
                        "configuration reloaded"
                    );
                }
                Err(e) => {
                    metrics.reloaded(false);
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
