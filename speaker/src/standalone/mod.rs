//! Standalone mode: the speaker reads pools, services and backends from a
//! YAML file, allocates VIPs, forwards traffic, and reloads on SIGHUP or
//! when the file changes, with no Kubernetes involved. `core` decides (when
//! a file is read, what is applied, what the announcers are told); the
//! runner here is its shell.

pub mod core;

use self::core::{Core, Output, Stamp};
use crate::announce::Announcer;
use crate::announcers::{Announcers, HostSettings};
use crate::forwarder::Forwarder;
use crate::metrics::Metrics;
use crate::plan::{self, Plan};
use anyhow::{bail, Context};
use ferrolb_config::Config;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
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
fn stamp(path: &Path) -> Stamp {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
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

/// Runs until SIGTERM or SIGINT, then drains: signals, polls and health
/// feed the [`Core`], and this loop carries out its outputs.
pub async fn run(opts: Options) -> anyhow::Result<()> {
    let metrics = Metrics::new();
    let first_stamp = stamp(&opts.config);
    let (config, plan) = match load(&opts.config) {
        Ok(x) => x,
        Err(e) => bail!("{e}"),
    };
    let mut forwarder = Forwarder::new(Arc::clone(&metrics));
    forwarder.set_interfaces(crate::forwarder::kernel::announce_interfaces(&config));
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
        core::node_view(&config, &opts.node),
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
    let mut core = Core::new(&opts.node, plan, first_stamp);
    let mut hup = signal(SignalKind::hangup()).context("cannot watch SIGHUP")?;
    let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    let mut poll = tokio::time::interval(opts.poll);
    let mut health_tick = tokio::time::interval(Duration::from_millis(100));
    let mut health = forwarder.service_health();
    let mut queue = std::collections::VecDeque::new();
    loop {
        core.health(health.borrow_and_update().clone());
        queue.extend(core.step());
        while let Some(o) = queue.pop_front() {
            match o {
                Output::Configure { config, view } => {
                    let answer = announcer
                        .reconfigure(&config, view)
                        .await
                        .map_err(|e| format!("{e:#}"));
                    queue.extend(core.configured(answer));
                    queue.extend(core.step());
                }
                Output::Forward {
                    plan,
                    config,
                    reason,
                } => {
                    forwarder
                        .set_interfaces(crate::forwarder::kernel::announce_interfaces(&config));
                    let errors = forwarder.apply(&plan, &config.forwarder);
                    for e in &errors {
                        tracing::error!(error = %e, "reload: listener not opened");
                    }
                    metrics.reloaded(errors.is_empty());
                    log_plan(&plan);
                    tracing::info!(
                        reason,
                        services = plan.services.len(),
                        "configuration reloaded"
                    );
                }
                Output::Announce(changes) => announcer.update(&changes),
                Output::Refused { reason, error } => {
                    metrics.reloaded(false);
                    tracing::error!(
                        reason,
                        "reload refused, the running configuration stays in force:\n{error}"
                    );
                }
            }
        }
        let reason = tokio::select! {
            _ = hup.recv() => "SIGHUP",
            _ = poll.tick() => {
                announcer.refresh_keys();
                if !core.poll(stamp(&opts.config)) {
                    continue;
                }
                "file changed"
            }
            _ = health_tick.tick() => {
                forwarder.refresh_health();
                // Logged and counted already; there is no Service to put an Event on.
                forwarder.take_kernel_fallbacks();
                continue;
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        };
        let before = stamp(&opts.config);
        let read = load(&opts.config);
        queue.extend(core.read(reason, before, stamp(&opts.config), read));
    }
    tracing::info!("shutting down: no new connections");
    ready.store(false, Ordering::Relaxed);
    // Withdraw first (BGP Cease), then drain: routers stop sending new flows while open ones finish.
    for task in announcer.stop() {
        let _ = tokio::time::timeout(Duration::from_secs(1), task).await;
    }
    forwarder.shutdown().await;
    if let Some(l2) = announcer.l2() {
        l2.remove_virtual_macs().await;
    }
    tracing::info!("stopped");
    Ok(())
}
