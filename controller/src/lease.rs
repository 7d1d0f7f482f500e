//! The thin driver of [`ferrolb_lease::Elector`]: reads the Lease, writes
//! what the elector decides (a PUT with the resourceVersion it decided on),
//! and publishes until when this replica leads. Every decision, and every
//! clock comparison, is the elector's; this module only does the I/O.

use ferrolb_lease::{Elector, Record, Seen, Step, Timing};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};
use std::time::Instant;
use tokio::sync::watch;

/// Until when this replica leads (`None`: it does not). The leader's work
/// checks it before every write: past the instant, it must not write.
#[derive(Clone)]
pub struct Fence(watch::Receiver<Option<Instant>>);

impl Fence {
    /// Whether this replica may write now.
    pub fn valid(&self) -> bool {
        self.0.borrow().is_some_and(|u| Instant::now() < u)
    }

    /// Until when it leads, as last published.
    pub fn until(&self) -> Option<Instant> {
        *self.0.borrow()
    }

    /// Waits for the next publication; `false` once the driver stopped.
    pub async fn changed(&mut self) -> bool {
        self.0.changed().await.is_ok()
    }
}

/// Where the Lease is and who we are.
pub struct LeaseConfig {
    /// The Lease's namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// This replica's identity (`holderIdentity`).
    pub identity: String,
    /// Field manager of the writes.
    pub field_manager: String,
    /// The election's timing.
    pub timing: Timing,
}

fn seen(lease: &Lease) -> Seen {
    let spec = lease.spec.clone().unwrap_or_default();
    Seen {
        holder: spec.holder_identity,
        resource_version: lease.metadata.resource_version.clone().unwrap_or_default(),
        transitions: spec.lease_transitions.unwrap_or(0),
        acquire_time: spec.acquire_time.map(|t| t.0.to_string()),
    }
}

fn object(cfg: &LeaseConfig, record: &Record, resource_version: Option<String>) -> Lease {
    let now = k8s_openapi::jiff::Timestamp::now();
    let acquire = record
        .acquire_time
        .as_deref()
        .and_then(|t| t.parse().ok())
        .unwrap_or(now);
    Lease {
        metadata: ObjectMeta {
            name: Some(cfg.name.clone()),
            namespace: Some(cfg.namespace.clone()),
            resource_version,
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: record.holder.clone(),
            // Released: a standby may take it at its next read.
            lease_duration_seconds: Some(if record.holder.is_some() {
                cfg.timing.lease_duration.as_secs().max(1) as i32
            } else {
                1
            }),
            acquire_time: record.holder.as_ref().map(|_| MicroTime(acquire)),
            renew_time: record.holder.as_ref().map(|_| MicroTime(now)),
            lease_transitions: Some(record.transitions),
            ..LeaseSpec::default()
        }),
    }
}

/// Runs the election until `stop` turns true, then releases the Lease if
/// this replica holds it. Publishes until when it leads on `leading`.
pub async fn run(
    client: kube::Client,
    cfg: LeaseConfig,
    leading: watch::Sender<Option<Instant>>,
    mut stop: watch::Receiver<bool>,
    on_transition: impl Fn(bool),
) {
    let api: Api<Lease> = Api::namespaced(client, &cfg.namespace);
    let timing = cfg.timing;
    let mut elector = Elector::new(cfg.identity.clone(), timing);
    let params = PostParams {
        field_manager: Some(cfg.field_manager.clone()),
        ..PostParams::default()
    };
    let mut warned: Option<Instant> = None;
    let mut was_leading = false;
    loop {
        let now = Instant::now();
        match tokio::time::timeout(timing.retry_period, api.get_opt(&cfg.name)).await {
            Ok(Ok(lease)) => {
                let step = elector.observe(lease.as_ref().map(seen), now);
                let write = match &step {
                    Step::Create(r) => Some((r.clone(), None)),
                    Step::Update {
                        resource_version,
                        record,
                    } => Some((record.clone(), Some(resource_version.clone()))),
                    Step::Wait => None,
                };
                if let Some((record, rv)) = write {
                    let sent = Instant::now();
                    elector.sent(sent);
                    // A write slower than the retry period is given up:
                    // the deadline runs from its sending anyway.
                    let body = object(&cfg, &record, rv.clone());
                    let result = tokio::time::timeout(timing.retry_period, async {
                        match rv {
                            None => api.create(&params, &body).await,
                            Some(_) => api.replace(&cfg.name, &params, &body).await,
                        }
                    })
                    .await;
                    match result {
                        Ok(Ok(l)) => elector.written(
                            l.metadata.resource_version.unwrap_or_default(),
                            Instant::now(),
                        ),
                        Ok(Err(kube::Error::Api(s))) if s.code == 409 => elector.failed(),
                        Ok(Err(e)) => {
                            elector.failed();
                            warn_sometimes(
                                &mut warned,
                                || tracing::warn!(error = %e, lease = %cfg.name, "cannot write the leader Lease (may this account create and update it? deploy/controller.yaml)"),
                            );
                        }
                        Err(_) => elector.failed(),
                    }
                }
            }
            Ok(Err(e)) => warn_sometimes(
                &mut warned,
                || tracing::warn!(error = %e, lease = %cfg.name, "cannot read the leader Lease; leadership runs out at its renew deadline"),
            ),
            Err(_) => {}
        }
        let until = elector.leads_until().filter(|u| Instant::now() < *u);
        leading.send_replace(until);
        if until.is_some() != was_leading {
            was_leading = until.is_some();
            on_transition(was_leading);
        }
        // Read again after the retry period; wake at the deadline too, so
        // that a lost leadership is published the moment it is lost.
        let next = tokio::time::Instant::now() + timing.retry_period;
        let wake = match until {
            Some(u) => next.min(tokio::time::Instant::from_std(u)),
            None => next,
        };
        tokio::select! {
            _ = tokio::time::sleep_until(wake) => {}
            r = stop.changed() => {
                if r.is_err() || *stop.borrow() {
                    break;
                }
            }
        }
    }
    leading.send_replace(None);
    if let Some(Step::Update {
        resource_version,
        record,
    }) = elector.release()
    {
        let body = object(&cfg, &record, Some(resource_version));
        match tokio::time::timeout(
            std::time::Duration::from_secs(5),
            api.replace(&cfg.name, &params, &body),
        )
        .await
        {
            Ok(Ok(_)) => tracing::info!("released the leader Lease"),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "could not release the leader Lease; a standby takes over when it expires")
            }
            Err(_) => tracing::warn!(
                "timed out releasing the leader Lease; a standby takes over when it expires"
            ),
        }
    }
}

fn warn_sometimes(last: &mut Option<Instant>, log: impl FnOnce()) {
    if last.is_none_or(|t| t.elapsed() >= std::time::Duration::from_secs(30)) {
        *last = Some(Instant::now());
        log();
    }
}

/// Starts the driver; returns the fence and the stop switch.
pub fn spawn(
    client: kube::Client,
    cfg: LeaseConfig,
    on_transition: impl Fn(bool) + Send + 'static,
) -> (Fence, watch::Sender<bool>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = watch::channel(None);
    let (stop_tx, stop_rx) = watch::channel(false);
    let task = tokio::spawn(run(client, cfg, tx, stop_rx, on_transition));
    (Fence(rx), stop_tx, task)
}
