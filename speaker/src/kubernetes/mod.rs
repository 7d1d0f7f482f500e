//! Kubernetes mode: the speaker learns from the API what to announce and
//! where to forward. Pure: `model` holds the rules, `index` applies them one
//! change at a time, `roles` says what this node does per Service and which
//! changes are news, and `core` decides on every input. The runner here is
//! the shell: it watches the API (Services and EndpointSlices one event at
//! a time; Nodes, the ConfigMap and the speaker Pods as wholes), feeds the
//! core, and carries out its outputs with the same announcers and forwarder
//! as standalone mode.
//!
//! The API is only an input: membership heartbeats, elections, BGP sessions
//! and the forwarder keep running on the last state seen if the API server
//! goes away.

pub mod core;
pub mod index;
pub mod model;
pub mod report;
pub mod roles;

use self::core::{ApiEvent, Core, Metric, Output};
use crate::announce::Announcer;
use crate::announcers::{Announcers, HostSettings, NodeView};
use crate::forwarder::Forwarder;
use crate::metrics::{AnnouncedLabels, Metrics, ResultLabels};
use anyhow::Context;
use ferrolb_config::Config;
use futures::StreamExt;
use index::Recompute;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::Api;
use model::Filter;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

/// How Kubernetes mode runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// This node's name (from the downward API).
    pub node: String,
    /// A kubeconfig; default: KUBECONFIG or ~/.kube/config, then in-cluster.
    pub kubeconfig: Option<PathBuf>,
    /// Namespace of the speaker Pods, Secrets and NodeAnnouncements.
    pub namespace: String,
    /// The configuration ConfigMap.
    pub config: ferrolb_kube::ConfigSource,
    /// With `--config-source metallb`: the namespace of MetalLB's objects,
    /// read instead of the ConfigMap.
    pub metallb: Option<String>,
    /// Label selector of the speaker Pods (the members of layer 2 failover).
    pub speaker_selector: String,
    /// UDP port of the membership heartbeats.
    pub member_port: u16,
    /// How long a VIP no Service uses keeps its local route.
    pub route_linger: std::time::Duration,
    /// How long a stopping speaker keeps forwarding after handing over.
    pub handover_delay: std::time::Duration,
    /// Heartbeat keys (an optional Secret volume): absent means unsigned.
    pub member_keys_file: Option<PathBuf>,
    /// Which Services, and which nodes.
    pub filter: Filter,
    /// Where `/metrics`, `/healthz` and `/readyz` are served.
    pub metrics_address: SocketAddr,
    /// TLS and bearer tokens for that endpoint.
    pub metrics_access: ferrolb_ops::Access,
    /// Incremental (default), or every Service on every change (the
    /// benchmark's reference).
    pub recompute: Recompute,
}

/// Watches `api` and forwards every event, in order: the index needs each
/// object as it changes, not a snapshot of all of them.
fn watch_events<K>(
    api: Api<K>,
    tx: tokio::sync::mpsc::UnboundedSender<ApiEvent>,
    wrap: fn(watcher::Event<K>) -> ApiEvent,
) where
    K: kube::Resource
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
    K::DynamicType: Default,
{
    let stream = watcher::watcher(api, watcher::Config::default()).default_backoff();
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(ev) => {
                    if tx.send(wrap(ev)).is_err() {
                        return;
                    }
                }
                // The backoff retries; the index keeps the last state meanwhile.
                Err(e) => tracing::warn!(error = %e, "watch error; retrying"),
            }
        }
    });
}

/// A reflector kept current by its own task; every change pokes `changed`.
fn reflect<K>(api: Api<K>, config: watcher::Config, changed: watch::Sender<u64>) -> Store<K>
where
    K: kube::Resource
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    let (reader, writer) = reflector::store();
    let stream = reflector::reflector(writer, watcher::watcher(api, config).default_backoff());
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(_) => {
                    changed.send_modify(|n| *n += 1);
                }
                // The backoff retries; the last state stays in the store meanwhile.
                Err(e) => tracing::warn!(error = %e, "watch error; retrying"),
            }
        }
    });
    reader
}

/// The configuration with every `passwordSecret` replaced by the Secret's
/// value, read from the API in the speaker's namespace. A Secret that cannot
/// be read is logged (never its content) and left in place: that peer then
/// gets no session, since a key nobody knows is set on its sockets.
async fn with_secret_passwords(client: &kube::Client, namespace: &str, cfg: &Config) -> Config {
    use ferrolb_config::PeerPassword;
    let mut cfg = cfg.clone();
    let Some(bgp) = cfg.bgp.as_mut() else {
        return cfg;
    };
    let api: kube::Api<k8s_openapi::api::core::v1::Secret> =
        kube::Api::namespaced(client.clone(), namespace);
    for p in &mut bgp.peers {
        let Some(PeerPassword::Secret {
            name,
            key,
            namespace: wanted,
        }) = p.password.clone()
        else {
            continue;
        };
        if wanted.as_deref().is_some_and(|w| w != namespace) {
            tracing::error!(peer = %p.name, secret = %name, "passwordSecret must be in the speaker's namespace {namespace:?}; this peer gets no session");
            continue;
        }
        let value = match api.get(&name).await {
            Ok(secret) => secret
                .data
                .as_ref()
                .and_then(|d| d.get(&key))
                .map(|v| String::from_utf8_lossy(&v.0).trim_end().to_string())
                .ok_or_else(|| format!("the Secret has no key {key:?}")),
            Err(e) => Err(e.to_string()),
        };
        match value {
            Ok(v) if !v.is_empty() && v.len() <= ferrolb_sys::TCP_MD5_MAX_KEY => {
                p.password = Some(PeerPassword::Inline(v));
            }
            Ok(_) => {
                tracing::error!(peer = %p.name, secret = %format!("{namespace}/{name}"), key = %key, "the password must be 1-80 bytes (the TCP-MD5 key limit); this peer gets no session")
            }
            Err(e) => {
                tracing::error!(peer = %p.name, secret = %format!("{namespace}/{name}"), key = %key, error = %e, "cannot read the BGP password Secret; this peer gets no session (the speaker needs `get` on Secrets in its namespace, deploy/speaker.yaml)")
            }
        }
    }
    cfg
}

/// The context as the reflectors hold it now.
fn snapshot(
    config_maps: &Store<ConfigMap>,
    nodes: &Store<Node>,
    pods: &Store<Pod>,
    metallb: Option<&watch::Receiver<Option<Arc<ferrolb_kube::metallb::Converted>>>>,
) -> core::Context {
    core::Context {
        config_map: config_maps.state().into_iter().next(),
        metallb: metallb.and_then(|m| m.borrow().clone()),
        nodes: nodes.state(),
        pods: pods.state(),
    }
}

/// What carries out the core's outputs: the announcers, the forwarder and
/// the API writers.
struct Shell {
    metrics: Arc<Metrics>,
    client: kube::Client,
    namespace: String,
    node: String,
    host: HostSettings,
    ready: Arc<AtomicBool>,
    events: ferrolb_kube::Events,
    report_tx: watch::Sender<(report::Report, Option<(String, String)>)>,
    forwarder: Forwarder,
    announcers: Option<Announcers>,
    owned_rx: Option<watch::Receiver<BTreeSet<String>>>,
    conflicts_rx: Option<tokio::sync::broadcast::Receiver<crate::l2::ConflictReport>>,
    fallbacks_rx: Option<tokio::sync::broadcast::Receiver<crate::l2::FallbackReport>>,
    /// Since when (Unix seconds) each announced series has been announced:
    /// the core replaces a Service's series on any change of its roles, and
    /// a VIP announced throughout keeps its time.
    since: std::collections::HashMap<AnnouncedLabels, i64>,
}

impl Shell {
    /// Carries out `outputs` in order, and what the core decides on the
    /// announcers' answers; `true` when the core says stop.
    async fn carry_out(&mut self, core: &mut Core, outputs: Vec<Output>) -> anyhow::Result<bool> {
        let mut queue = std::collections::VecDeque::from(outputs);
        let mut unannounced = Vec::new();
        while let Some(o) = queue.pop_front() {
            match o {
                Output::Configure { config, view } => {
                    self.configure(core, &config, view).await?;
                    queue.extend(core.step(std::time::Instant::now()));
                }
                Output::Forward { plan, config } => {
                    self.forwarder
                        .set_interfaces(crate::forwarder::kernel::announce_interfaces(&config));
                    for e in self.forwarder.apply(&plan, &config.forwarder) {
                        tracing::error!(error = %e, "listener not opened");
                    }
                }
                Output::Announce(changes) => {
                    if let Some(a) = self.announcers.as_mut() {
                        a.update(&changes);
                    }
                }
                Output::Event(ev) => {
                    self.events.send(ev);
                }
                Output::Report { report, pod } => {
                    self.report_tx.send_if_modified(|cur| {
                        let new = (report, pod);
                        let changed = *cur != new;
                        *cur = new;
                        changed
                    });
                }
                Output::Ready(r) => self.ready.store(r, Ordering::Relaxed),
                Output::Metric(m) => match m {
                    Metric::Reloaded(ok) => self.metrics.reloaded(ok),
                    Metric::Announced(labels) => {
                        self.metrics.vip_announced.get_or_create(&labels).set(1);
                        let since = *self.since.entry(labels.clone()).or_insert_with(unix_now);
                        self.metrics
                            .vip_announced_since
                            .get_or_create(&labels)
                            .set(since);
                    }
                    Metric::Unannounced(labels) => {
                        self.metrics.vip_announced.remove(&labels);
                        unannounced.push(labels);
                    }
                    Metric::EventHeldBack => {
                        self.metrics.events_held_back.inc();
                    }
                },
                Output::Stop => {
                    self.forget_unannounced(unannounced);
                    return Ok(true);
                }
            }
        }
        self.forget_unannounced(unannounced);
        Ok(false)
    }

    /// Drops the announce times of series withdrawn and not announced again
    /// in the same batch of outputs.
    fn forget_unannounced(&mut self, unannounced: Vec<AnnouncedLabels>) {
        for labels in unannounced {
            if self.metrics.vip_announced.get(&labels).is_none() {
                self.since.remove(&labels);
                self.metrics.vip_announced_since.remove(&labels);
            }
        }
    }

    /// Starts or reconfigures the announcers, and tells the core what runs.
    async fn configure(
        &mut self,
        core: &mut Core,
        config: &Config,
        view: NodeView,
    ) -> anyhow::Result<()> {
        let resolved = with_secret_passwords(&self.client, &self.namespace, config).await;
        match self.announcers.as_mut() {
            None => {
                let a =
                    Announcers::start(&resolved, view.clone(), &self.metrics, &self.host).await?;
                tracing::info!(node = %self.node, announcer = a.name(), members = view.members.len(), "kubernetes speaker announcing");
                self.announcers = Some(a);
            }
            Some(a) => match a.reconfigure(&resolved, view).await {
                Ok(done) => {
                    for line in done {
                        tracing::info!("reconfigured: {line}");
                    }
                }
                Err(e) => {
                    self.metrics.reloaded(false);
                    tracing::error!("the announcers cannot take the new configuration; they keep running as they were (pools and Services apply): {e:#}");
                }
            },
        }
        let Some(a) = &self.announcers else {
            return Ok(());
        };
        core.running(core::Running {
            l2: a.l2().is_some(),
            bgp_peers: a.bgp_peers(),
        });
        if a.l2().is_some() != self.owned_rx.is_some() {
            self.owned_rx = a.l2().map(|l2| l2.owned());
            self.conflicts_rx = a.l2().map(|l2| l2.conflicts());
            self.fallbacks_rx = a.l2().map(|l2| l2.fallbacks());
            if let Some(rx) = self.owned_rx.as_mut() {
                core.owned(rx.borrow_and_update().clone());
            }
        }
        Ok(())
    }
}

/// Runs until SIGTERM or SIGINT, then withdraws and drains: watches and
/// channels feed the [`Core`], and the [`Shell`] carries out its outputs.
pub async fn run(opts: Options) -> anyhow::Result<()> {
    let metrics = Metrics::new();
    let ready = Arc::new(AtomicBool::new(false));
    let render = Arc::clone(&metrics);
    ferrolb_ops::start_with(
        opts.metrics_address,
        Box::new(move || render.encode()),
        Arc::clone(&ready),
        opts.metrics_access.clone(),
    )
    .await?;
    let client = ferrolb_kube::client(
        opts.kubeconfig.as_deref(),
        concat!("ferrolb-speaker/", env!("CARGO_PKG_VERSION")),
    )
    .await?;
    let events = ferrolb_kube::Events::start(client.clone(), "ferrolb-speaker", opts.node.clone());
    let counted = Arc::clone(&metrics);
    let report_tx = report::spawn(
        client.clone(),
        opts.namespace.clone(),
        opts.node.clone(),
        Box::new(move |ok| {
            counted
                .announcement_writes
                .get_or_create(&ResultLabels {
                    result: if ok { "ok" } else { "error" }.into(),
                })
                .inc();
        }),
    );
    let (changed, mut changes) = watch::channel(0u64);
    let (api_tx, mut api_rx) = tokio::sync::mpsc::unbounded_channel::<ApiEvent>();
    watch_events(Api::<Service>::all(client.clone()), api_tx.clone(), |e| {
        ApiEvent::Service(Box::new(e))
    });
    watch_events(Api::<EndpointSlice>::all(client.clone()), api_tx, |e| {
        ApiEvent::Slice(Box::new(e))
    });
    let nodes = reflect(
        Api::<Node>::all(client.clone()),
        watcher::Config::default(),
        changed.clone(),
    );
    let pods = reflect(
        Api::<Pod>::namespaced(client.clone(), &opts.namespace),
        watcher::Config::default().labels(&opts.speaker_selector),
        changed.clone(),
    );
    let config_maps = reflect(
        Api::<ConfigMap>::namespaced(client.clone(), &opts.config.namespace),
        watcher::Config::default().fields(&format!("metadata.name={}", opts.config.name)),
        changed.clone(),
    );
    let mut metallb = opts
        .metallb
        .as_deref()
        .map(|ns| ferrolb_kube::metallb::watch(client.clone(), ns));
    tracing::info!(node = %opts.node, namespace = %opts.namespace, "waiting for the first list of every watched resource");
    for (what, ready) in [
        ("Nodes", nodes.wait_until_ready().await),
        ("speaker Pods", pods.wait_until_ready().await),
        ("ConfigMap", config_maps.wait_until_ready().await),
    ] {
        ready.map_err(|e| anyhow::anyhow!("cannot list {what}: {e}"))?;
    }
    let mut core = Core::new(core::Settings {
        node: opts.node.clone(),
        member_port: opts.member_port,
        handover_delay: opts.handover_delay,
        filter: opts.filter.clone(),
        recompute: opts.recompute,
        config: opts.config.clone(),
        metallb: opts.metallb.is_some(),
    });
    while !core.listed() {
        let ev = api_rx
            .recv()
            .await
            .context("the Service and EndpointSlice watches ended")?;
        core.api(ev);
    }
    let forwarder = Forwarder::new(Arc::clone(&metrics));
    let mut health = forwarder.service_health();
    core.health(health.borrow_and_update().clone());
    core.context(snapshot(&config_maps, &nodes, &pods, metallb.as_ref()));
    let mut shell = Shell {
        metrics: Arc::clone(&metrics),
        client: client.clone(),
        namespace: opts.namespace.clone(),
        node: opts.node.clone(),
        host: HostSettings {
            route_linger: opts.route_linger,
            member_keys_file: opts.member_keys_file.clone(),
        },
        ready: Arc::clone(&ready),
        events,
        report_tx,
        forwarder,
        announcers: None,
        owned_rx: None,
        conflicts_rx: None,
        fallbacks_rx: None,
        since: Default::default(),
    };
    let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    let mut health_tick = tokio::time::interval(Duration::from_millis(100));
    // The heartbeat key file (a Secret volume the kubelet updates) is checked this often.
    let mut keys_tick = tokio::time::interval(Duration::from_secs(2));
    loop {
        let outputs = core.step(std::time::Instant::now());
        if shell.carry_out(&mut core, outputs).await? {
            break;
        }
        let wake = core.next_wake().map(tokio::time::Instant::from_std);
        tokio::select! {
            ev = api_rx.recv() => {
                let Some(ev) = ev else {
                    anyhow::bail!("the Service and EndpointSlice watches ended");
                };
                if opts.recompute == Recompute::Full {
                    // The reference: a burst settles into one recomputation.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                core.api(ev);
                // Whatever else is queued goes into the same step.
                for _ in 0..10_000 {
                    match api_rx.try_recv() {
                        Ok(ev) => core.api(ev),
                        Err(_) => break,
                    }
                }
            }
            r = changes.changed() => {
                if r.is_err() {
                    anyhow::bail!("every watch ended");
                }
                // Let a burst of changes settle into one recomputation.
                tokio::time::sleep(Duration::from_millis(20)).await;
                changes.borrow_and_update();
                core.context(snapshot(&config_maps, &nodes, &pods, metallb.as_ref()));
            }
            r = async { metallb.as_mut().expect("guarded").changed().await }, if metallb.is_some() => {
                if r.is_err() {
                    anyhow::bail!("the MetalLB watch ended");
                }
                metallb.as_mut().expect("guarded").borrow_and_update();
                core.context(snapshot(&config_maps, &nodes, &pods, metallb.as_ref()));
            }
            _ = health.changed() => core.health(health.borrow_and_update().clone()),
            _ = health_tick.tick() => {
                shell.forwarder.refresh_health();
                for f in shell.forwarder.take_kernel_fallbacks() {
                    core.kernel_fallback(f);
                }
            }
            _ = keys_tick.tick() => {
                if let Some(a) = shell.announcers.as_mut() {
                    a.refresh_keys();
                }
                core.tick(std::time::Instant::now());
            }
            r = async { shell.owned_rx.as_mut().expect("guarded").changed().await }, if shell.owned_rx.is_some() => {
                // A layer 2 election changed what this node owns.
                match r {
                    Ok(()) => core.owned(shell.owned_rx.as_mut().expect("guarded").borrow_and_update().clone()),
                    Err(_) => shell.owned_rx = None,
                }
            }
            _ = async { tokio::time::sleep_until(wake.expect("guarded")).await }, if wake.is_some() => {}
            r = async { shell.conflicts_rx.as_mut().expect("guarded").recv().await }, if shell.conflicts_rx.is_some() => {
                match r {
                    Ok(report) => core.conflict(report, std::time::Instant::now()),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        for _ in 0..n {
                            metrics.dropped("l2_conflict_reports");
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => shell.conflicts_rx = None,
                }
            }
            r = async { shell.fallbacks_rx.as_mut().expect("guarded").recv().await }, if shell.fallbacks_rx.is_some() => {
                match r {
                    Ok(report) => core.vmac_fallback(report, std::time::Instant::now()),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        for _ in 0..n {
                            metrics.dropped("l2_fallback_reports");
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => shell.fallbacks_rx = None,
                }
            }
            _ = term.recv() => core.term(std::time::Instant::now()),
            _ = int.recv() => break,
        }
    }
    tracing::info!("shutting down: withdrawing, then draining");
    ready.store(false, Ordering::Relaxed);
    let mut announcers = shell.announcers.take();
    if let Some(a) = &mut announcers {
        for task in a.stop() {
            let _ = tokio::time::timeout(Duration::from_secs(1), task).await;
        }
    }
    drop(shell.report_tx);
    report::clear(client.clone(), &opts.namespace, &opts.node).await;
    shell.forwarder.shutdown().await;
    if let Some(l2) = announcers.as_ref().and_then(|a| a.l2()) {
        l2.remove_virtual_macs().await;
    }
    tracing::info!("stopped");
    Ok(())
}

/// Seconds since the Unix epoch, for timestamps in metrics.
fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
