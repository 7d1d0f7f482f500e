//! The controller process around [`Core`]: leader election, watches on
//! Services and the ConfigMap, status writes and Events. Thin on purpose:
//! every decision is in `core`.

use crate::core::{Core, Desired, Output, Regarding, Severity, Tally};
use crate::lease::{self, Fence};
use crate::metrics::{Metrics, ReasonLabels, ResultLabels};
use crate::service::{self, ClassFilter, POOL_ANNOTATION};
use anyhow::Result;
use ferrolb_alloc::ServiceKey;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, ObjectReference, Service};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::Client;
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The field manager of every write.
pub const FIELD_MANAGER: &str = "ferrolb-controller";

/// Settings from the command line.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The configuration ConfigMap (its namespace is the Lease's too).
    pub config: ferrolb_kube::ConfigSource,
    /// With `--config-source metallb`: the namespace of MetalLB's objects,
    /// read instead of the ConfigMap.
    pub metallb: Option<String>,
    /// Which Services are handled.
    pub classes: ClassFilter,
    /// Name of the leader Lease.
    pub lease_name: String,
    /// This replica's identity in the Lease.
    pub identity: String,
    /// Lease duration in seconds: a dead leader is replaced after at most this long.
    pub lease_seconds: u64,
    /// Status writes in flight at once.
    pub write_concurrency: usize,
}

/// State shared with the HTTP endpoint.
pub struct Shared {
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// `/readyz`: a standby, or a leader that has synced and restored.
    pub ready: Arc<AtomicBool>,
}

/// Runs until `shutdown` resolves; then releases the Lease so a standby takes over at once.
pub async fn run(
    client: Client,
    settings: Settings,
    shared: Arc<Shared>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<()> {
    let timing = ferrolb_lease::Timing::for_lease_seconds(settings.lease_seconds);
    let transitions = Arc::clone(&shared.metrics);
    let (mut fence, stop_lease, lease_task) = lease::spawn(
        client.clone(),
        lease::LeaseConfig {
            namespace: settings.config.namespace.clone(),
            name: settings.lease_name.clone(),
            identity: settings.identity.clone(),
            field_manager: ferrolb_kube::bounded(
                &format!("{FIELD_MANAGER}-{}", settings.identity),
                128,
            ),
            timing,
        },
        move |leads| {
            if !leads {
                transitions.leadership_lost.inc();
            }
        },
    );
    tracing::info!(identity = %settings.identity, lease = %settings.lease_name,
        lease_ms = timing.lease_duration.as_millis() as u64, renew_deadline_ms = timing.renew_deadline.as_millis() as u64,
        "waiting for leadership");
    shared.ready.store(true, Ordering::Relaxed);
    tokio::pin!(shutdown);
    loop {
        // Standby until the Lease is ours.
        while !fence.valid() {
            tokio::select! {
                alive = fence.changed() => if !alive { anyhow::bail!("leader election stopped") },
                _ = &mut shutdown => return release(stop_lease, lease_task).await,
            }
        }
        tracing::info!(identity = %settings.identity, "became leader");
        // Not ready until synced: cleared before the leader gauge says we lead.
        shared.ready.store(false, Ordering::Relaxed);
        shared.metrics.leader.set(1);
        let mut work = tokio::spawn(lead(
            client.clone(),
            settings.clone(),
            Arc::clone(&shared),
            fence.clone(),
        ));
        let stop = loop {
            // Wake at the deadline itself: leadership ends then, renewed or not.
            let deadline = fence
                .until()
                .map(tokio::time::Instant::from_std)
                .unwrap_or_else(tokio::time::Instant::now);
            tokio::select! {
                alive = fence.changed() => {
                    if !alive || !fence.valid() {
                        break false;
                    }
                }
                _ = tokio::time::sleep_until(deadline) => {
                    if !fence.valid() {
                        break false;
                    }
                }
                r = &mut work => {
                    // lead() only returns on an error the watches cannot recover from.
                    let e = match r { Ok(Err(e)) => e, Ok(Ok(())) => anyhow::anyhow!("watches ended"), Err(e) => e.into() };
                    shared.metrics.leader.set(0);
                    return Err(e.context("the controller loop stopped"));
                }
                _ = &mut shutdown => break true,
            }
        };
        // Stop writing before anyone else may start: abort (its state goes
        // with it; a new term re-lists), then give up the Lease.
        work.abort();
        let _ = work.await;
        shared.metrics.leader.set(0);
        shared.ready.store(true, Ordering::Relaxed);
        if stop {
            return release(stop_lease, lease_task).await;
        }
        tracing::warn!(identity = %settings.identity, "lost leadership (the renew deadline passed or another replica holds the Lease); stopped writing, standing by");
    }
}

async fn release(
    stop: tokio::sync::watch::Sender<bool>,
    lease_task: tokio::task::JoinHandle<()>,
) -> Result<()> {
    let _ = stop.send(true);
    if tokio::time::timeout(Duration::from_secs(6), lease_task)
        .await
        .is_err()
    {
        tracing::warn!(
            "timed out releasing the leader Lease; a standby takes over when it expires"
        );
    }
    Ok(())
}

/// The object an Event is about.
fn reference(
    regarding: &Regarding,
    settings: &Settings,
    config_uid: &Option<String>,
    config_ref: &Option<ObjectReference>,
) -> ObjectReference {
    match regarding {
        Regarding::Service(key, uid) => ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Service".into()),
            namespace: Some(key.namespace.to_string()),
            name: Some(key.name.to_string()),
            uid: (!uid.is_empty()).then(|| uid.clone()),
            ..ObjectReference::default()
        },
        // MetalLB's objects are the configuration: the Event goes on them.
        Regarding::Config if config_ref.is_some() => config_ref.clone().expect("checked"),
        Regarding::Config => ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("ConfigMap".into()),
            namespace: Some(settings.config.namespace.clone()),
            name: Some(settings.config.name.clone()),
            uid: config_uid.clone(),
            ..ObjectReference::default()
        },
    }
}

fn action(reason: &str) -> &'static str {
    match reason {
        "IPAllocated" | "AllocationFailed" => "Allocate",
        "IPReleased" => "Release",
        _ => "LoadConfig",
    }
}

/// Why a status write did not happen.
#[derive(Debug)]
enum WriteError {
    /// This replica could not prove it still leads: nothing was sent.
    Fenced,
    /// The API server refused or failed it.
    Api(kube::Error),
}

/// Writes a Service's status (and pool annotation), each write conditional
/// on the resourceVersion this replica last saw (`rv`): a write decided on
/// a stale view is refused (409) instead of overwriting. Returns the new
/// resourceVersion.
async fn write_status(
    client: &Client,
    key: &ServiceKey,
    desired: &Desired,
    write_pool: bool,
    rv: Option<String>,
    fence: &Fence,
) -> Result<Option<String>, WriteError> {
    if !fence.valid() {
        return Err(WriteError::Fenced);
    }
    let api: Api<Service> = Api::namespaced(client.clone(), &key.namespace);
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PatchParams::default()
    };
    let ingress: Vec<serde_json::Value> = desired
        .ips
        .iter()
        .map(|ip| json!({"ip": ip.to_string(), "ipMode": desired.ip_mode}))
        .collect();
    let ingress = if ingress.is_empty() {
        serde_json::Value::Null
    } else {
        json!(ingress)
    };
    let precondition = |rv: &Option<String>| match rv {
        Some(v) => json!({"resourceVersion": v}),
        None => json!({}),
    };
    let written = api
        .patch_status(
            &key.name,
            &params,
            &Patch::Merge(json!({"metadata": precondition(&rv),
                "status": {"loadBalancer": {"ingress": ingress}}})),
        )
        .await
        .map_err(WriteError::Api)?;
    let mut rv = written.metadata.resource_version;
    if write_pool {
        if !fence.valid() {
            return Err(WriteError::Fenced);
        }
        let mut meta = precondition(&rv);
        meta["annotations"] = json!({POOL_ANNOTATION: desired.pool});
        let written = api
            .patch(&key.name, &params, &Patch::Merge(json!({"metadata": meta})))
            .await
            .map_err(WriteError::Api)?;
        rv = written.metadata.resource_version;
    }
    Ok(rv)
}

/// Retries of failed status writes, with a per-Service backoff.
#[derive(Default)]
struct Retries {
    due: BTreeMap<Instant, Vec<ServiceKey>>,
    delay: BTreeMap<ServiceKey, Duration>,
}

impl Retries {
    fn schedule(&mut self, key: ServiceKey) {
        let d = self
            .delay
            .get(&key)
            .map_or(Duration::from_millis(200), |d| {
                (*d * 2).min(Duration::from_secs(30))
            });
        self.delay.insert(key.clone(), d);
        self.due.entry(Instant::now() + d).or_default().push(key);
    }
    fn succeeded(&mut self, key: &ServiceKey) {
        self.delay.remove(key);
    }
    fn next(&self) -> Option<Instant> {
        self.due.keys().next().copied()
    }
    fn take_due(&mut self) -> Vec<ServiceKey> {
        let now = Instant::now();
        let later = self.due.split_off(&(now + Duration::from_nanos(1)));
        let due = std::mem::replace(&mut self.due, later);
        due.into_values().flatten().collect()
    }
}

struct Loop {
    client: Client,
    settings: Settings,
    shared: Arc<Shared>,
    fence: Fence,
    /// The resourceVersion of each Service as last seen (watch or own write).
    rvs: std::collections::HashMap<ServiceKey, String>,
    core: Core,
    events: ferrolb_kube::Events,
    events_dropped: u64,
    config_uid: Option<String>,
    /// With `--config-source metallb`: the object configuration Events are
    /// about (the first IPAddressPool), and the last Event note per object
    /// about what did not convert.
    config_ref: Option<ObjectReference>,
    metallb_lost: std::collections::BTreeMap<String, String>,
    retries: Retries,
    tally: Tally,
}

impl Loop {
    /// A new conversion of MetalLB's objects: a Warning on each object
    /// whose unconverted fields changed (once per change, not per pass),
    /// and configuration Events from now on about its first IPAddressPool.
    fn metallb_converted(&mut self, c: &ferrolb_kube::metallb::Converted) {
        self.config_ref = c
            .objects
            .iter()
            .find(|(label, _)| label.starts_with("IPAddressPool "))
            .or_else(|| c.objects.iter().next())
            .map(|(_, r)| r.clone());
        let lost = c.lost_by_object();
        for (label, note) in &lost {
            if self.metallb_lost.get(label) == Some(note) {
                continue;
            }
            let Some(regarding) = c.objects.get(label) else {
                continue;
            };
            tracing::warn!(object = %label, "{note}");
            self.events.send(ferrolb_kube::EventSpec {
                regarding: regarding.clone(),
                warning: true,
                reason: "MetalLBFieldNotConverted".into(),
                action: "LoadConfig".into(),
                note: note.clone(),
            });
        }
        self.metallb_lost = lost;
    }

    /// Carries out what the core decided: Events queued, status writes in parallel.
    async fn execute(&mut self, outputs: Vec<Output>) {
        let mut writes = Vec::new();
        for o in outputs {
            match o {
                Output::Event(ev) => {
                    match ev.severity {
                        Severity::Warning => {
                            tracing::warn!(reason = ev.reason, regarding = ?ev.regarding, "{}", ev.note)
                        }
                        Severity::Normal => {
                            tracing::info!(reason = ev.reason, regarding = ?ev.regarding, "{}", ev.note)
                        }
                    }
                    let regarding = reference(
                        &ev.regarding,
                        &self.settings,
                        &self.config_uid,
                        &self.config_ref,
                    );
                    self.events.send(ferrolb_kube::EventSpec {
                        regarding,
                        warning: ev.severity == Severity::Warning,
                        reason: ev.reason.into(),
                        action: action(ev.reason).into(),
                        note: ev.note,
                    });
                }
                Output::Status {
                    key,
                    desired,
                    write_pool,
                } => writes.push((key, desired, write_pool)),
            }
        }
        let client = &self.client;
        let fence = &self.fence;
        let rvs = &self.rvs;
        let results: Vec<(ServiceKey, Result<Option<String>, WriteError>)> =
            futures::stream::iter(writes)
                .map(|(key, desired, write_pool)| async move {
                    let rv = rvs.get(&key).cloned();
                    let r = write_status(client, &key, &desired, write_pool, rv, fence).await;
                    (key, r)
                })
                .buffer_unordered(self.settings.write_concurrency.max(1))
                .collect()
                .await;
        for (key, r) in results {
            let r = match r {
                Ok(rv) => {
                    if let Some(rv) = rv {
                        self.rvs.insert(key.clone(), rv);
                    }
                    Ok(())
                }
                Err(WriteError::Fenced) => {
                    // Leadership is ending: the supervisor aborts this loop.
                    self.shared.metrics.fenced_writes.inc();
                    self.core.forget_pending(&key);
                    continue;
                }
                Err(WriteError::Api(kube::Error::Api(s))) if s.code == 409 => {
                    // Changed since we read it (by a user, or a replica that
                    // led before): the watch brings the new version; retry then.
                    self.shared
                        .metrics
                        .status_writes
                        .get_or_create(&ResultLabels {
                            result: "conflict".into(),
                        })
                        .inc();
                    tracing::debug!(service = %key, "status write refused: the Service changed since it was read; retrying on the newer version");
                    self.retries.schedule(key.clone());
                    self.core.forget_pending(&key);
                    continue;
                }
                Err(WriteError::Api(e)) => Err(e),
            };
            match r {
                Ok(()) => {
                    self.retries.succeeded(&key);
                    self.shared
                        .metrics
                        .status_writes
                        .get_or_create(&ResultLabels {
                            result: "ok".into(),
                        })
                        .inc();
                }
                // Deleted meanwhile: its DELETED event follows.
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => {
                    self.shared
                        .metrics
                        .status_writes
                        .get_or_create(&ResultLabels {
                            result: "error".into(),
                        })
                        .inc();
                    tracing::warn!(service = %key, error = %e, "status write failed; retrying");
                    self.retries.schedule(key.clone());
                    // Forget the write in flight, without writing again now: the retry does.
                    self.core.forget_pending(&key);
                }
            }
        }
        self.publish_counts();
    }

    fn publish_counts(&mut self) {
        let m = &self.shared.metrics;
        let t = self.core.tally().clone();
        m.allocations.inc_by(t.allocations - self.tally.allocations);
        m.releases.inc_by(t.releases - self.tally.releases);
        for (reason, n) in &t.failures {
            let before = self.tally.failures.get(reason).copied().unwrap_or(0);
            if *n > before {
                m.failures
                    .get_or_create(&ReasonLabels {
                        reason: reason.to_string(),
                    })
                    .inc_by(n - before);
            }
        }
        self.tally = t;
        let dropped = self.events.dropped();
        m.events_dropped.inc_by(dropped - self.events_dropped);
        self.events_dropped = dropped;
        m.observe(&self.core);
    }
}

/// The leader's work: watch, decide, write (each write only while `fence`
/// holds). Returns only on a fatal error.
async fn lead(client: Client, settings: Settings, shared: Arc<Shared>, fence: Fence) -> Result<()> {
    let events =
        ferrolb_kube::Events::start(client.clone(), FIELD_MANAGER, settings.identity.clone());
    let services = watcher::watcher(
        Api::<Service>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff();
    let mut metallb = settings
        .metallb
        .as_deref()
        .map(|ns| ferrolb_kube::metallb::watch(client.clone(), ns));
    let mut config = if metallb.is_some() {
        futures::stream::pending().boxed()
    } else {
        watcher::watcher(
            Api::<ConfigMap>::namespaced(client.clone(), &settings.config.namespace),
            watcher::Config::default().fields(&format!("metadata.name={}", settings.config.name)),
        )
        .default_backoff()
        .boxed()
    };
    // Namespace labels, for pools' namespaceSelector: known before the
    // first allocation, so a restart restores what it finds.
    let namespaces = watcher::watcher(
        Api::<Namespace>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff();
    let mut services = services.boxed();
    let mut namespaces = namespaces.boxed();
    let mut lp = Loop {
        client,
        settings,
        shared,
        fence,
        rvs: std::collections::HashMap::new(),
        core: Core::new(),
        events,
        events_dropped: 0,
        config_uid: None,
        config_ref: None,
        metallb_lost: Default::default(),
        retries: Retries::default(),
        tally: Tally::default(),
    };
    let (mut svc_synced, mut cfg_synced, mut cfg_seen) = (false, false, false);
    let mut ns_synced = false;
    let mut listed: BTreeSet<ServiceKey> = BTreeSet::new();
    let start = Instant::now();
    loop {
        let retry_at = lp.retries.next().map(tokio::time::Instant::from_std);
        let outputs = tokio::select! {
            ev = services.try_next() => {
                let began = Instant::now();
                let out = match ev {
                    Ok(Some(Event::Init)) => { listed.clear(); Vec::new() }
                    Ok(Some(Event::InitApply(s))) => {
                        let v = service::view(&s, &lp.settings.classes);
                        if let Some(rv) = s.metadata.resource_version.clone() { lp.rvs.insert(v.key.clone(), rv); }
                        listed.insert(v.key.clone());
                        lp.core.upsert(v)
                    }
                    Ok(Some(Event::InitDone)) => {
                        let mut out = if svc_synced { lp.core.retain(&listed) } else { Vec::new() };
                        svc_synced = true;
                        if cfg_synced && ns_synced { out.extend(lp.core.synced()); }
                        out
                    }
                    Ok(Some(Event::Apply(s))) => {
                        let v = service::view(&s, &lp.settings.classes);
                        if let Some(rv) = s.metadata.resource_version.clone() { lp.rvs.insert(v.key.clone(), rv); }
                        lp.core.upsert(v)
                    }
                    Ok(Some(Event::Delete(s))) => {
                        let v = service::view(&s, &lp.settings.classes);
                        lp.rvs.remove(&v.key);
                        lp.core.delete(&v.key)
                    }
                    Ok(None) => anyhow::bail!("the Service watch ended"),
                    Err(e) => { tracing::warn!(error = %e, "Service watch error; retrying"); Vec::new() }
                };
                let n = out.len();
                lp.execute(out).await;
                if n > 0 {
                    lp.shared.metrics.reconcile_seconds.observe(began.elapsed().as_secs_f64());
                }
                Vec::new()
            }
            ev = config.try_next() => match ev {
                Ok(Some(Event::Init)) => { cfg_seen = false; Vec::new() }
                Ok(Some(Event::InitApply(cm) | Event::Apply(cm))) => {
                    cfg_seen = true;
                    lp.config_uid = cm.metadata.uid.clone();
                    lp.core.config_changed(lp.settings.config.read(&cm))
                }
                Ok(Some(Event::InitDone)) => {
                    let mut out = Vec::new();
                    if !cfg_seen {
                        out.extend(lp.core.config_changed(Err(format!(
                            "ConfigMap {} not found; create it with the pools under key {:?}",
                            lp.settings.config.display(), lp.settings.config.key
                        ))));
                    }
                    if !cfg_synced {
                        cfg_synced = true;
                        if svc_synced && ns_synced { out.extend(lp.core.synced()); }
                    }
                    out
                }
                Ok(Some(Event::Delete(_))) => lp.core.config_changed(Err(format!(
                    "ConfigMap {} was deleted",
                    lp.settings.config.display()
                ))),
                Ok(None) => anyhow::bail!("the ConfigMap watch ended"),
                Err(e) => { tracing::warn!(error = %e, "ConfigMap watch error; retrying"); Vec::new() }
            },
            r = async { metallb.as_mut().expect("guarded").changed().await }, if metallb.is_some() => {
                if r.is_err() {
                    anyhow::bail!("the MetalLB watch ended");
                }
                let converted = metallb.as_mut().expect("guarded").borrow_and_update().clone();
                match converted {
                    None => Vec::new(),
                    Some(c) => {
                        lp.metallb_converted(&c);
                        let mut out = lp.core.config_changed(c.config.clone());
                        if !cfg_synced {
                            cfg_synced = true;
                            if svc_synced && ns_synced { out.extend(lp.core.synced()); }
                        }
                        out
                    }
                }
            }
            ev = namespaces.try_next() => match ev {
                Ok(Some(Event::InitApply(ns) | Event::Apply(ns))) => {
                    let name = ns.metadata.name.clone().unwrap_or_default();
                    lp.core.namespace(&name, Some(ns.metadata.labels.clone().unwrap_or_default().into_iter().collect()))
                }
                Ok(Some(Event::Delete(ns))) => {
                    lp.core.namespace(&ns.metadata.name.clone().unwrap_or_default(), None)
                }
                Ok(Some(Event::InitDone)) => {
                    if ns_synced {
                        Vec::new()
                    } else {
                        ns_synced = true;
                        if svc_synced && cfg_synced { lp.core.synced() } else { Vec::new() }
                    }
                }
                Ok(Some(Event::Init)) => Vec::new(),
                Ok(None) => anyhow::bail!("the Namespace watch ended"),
                Err(e) => { tracing::warn!(error = %e, "Namespace watch error; retrying"); Vec::new() }
            },
            _ = async { match retry_at { Some(t) => tokio::time::sleep_until(t).await, None => std::future::pending().await } } => {
                let keys = lp.retries.take_due();
                keys.iter().flat_map(|k| lp.core.write_failed(k)).collect()
            }
        };
        lp.execute(outputs).await;
        if svc_synced && cfg_synced && ns_synced && !lp.shared.ready.load(Ordering::Relaxed) {
            lp.shared.ready.store(true, Ordering::Relaxed);
            let (handled, allocated) = lp.core.service_counts();
            tracing::info!(
                elapsed_ms = start.elapsed().as_millis() as u64,
                services = handled,
                allocated,
                configured = lp.core.config().is_some(),
                "synced and restored existing assignments"
            );
        }
    }
}
