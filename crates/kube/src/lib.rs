//! What both binaries need from the Kubernetes API beyond kube itself: the
//! flags that say where the API server and the ferrolb ConfigMap are, one
//! reader of that ConfigMap, a client that names its component (User-Agent,
//! seen in the API server's audit log and used by the test suite's RBAC
//! check), and an Event publisher that never slows the caller down.

pub mod metallb;

use futures::StreamExt;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, PostParams};
use kube::Client;
use serde_json::json;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::mpsc;

/// The flags both binaries take to reach the cluster and find the ferrolb
/// ConfigMap (flattened into each one's command line, so they cannot drift).
#[derive(Debug, Clone, clap::Args)]
pub struct ClusterArgs {
    /// A kubeconfig file; default: $KUBECONFIG or ~/.kube/config, then the
    /// in-cluster service account.
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<std::path::PathBuf>,
    /// Namespace of the configuration ConfigMap (and of the controller's
    /// Lease and the speaker Pods).
    #[arg(long, env = "FERROLB_NAMESPACE", default_value = "ferrolb-system")]
    pub namespace: String,
    /// Name of the configuration ConfigMap.
    #[arg(long, default_value = "ferrolb-config")]
    pub config_map: String,
    /// Key of the ConfigMap holding the YAML.
    #[arg(long, default_value = "config.yaml")]
    pub config_key: String,
    /// Where the configuration comes from: the ferrolb ConfigMap, or
    /// MetalLB's custom resources, converted on every change (a cluster
    /// switching from MetalLB keeps its configuration as it is).
    #[arg(long, value_enum, default_value_t = SourceKind::Ferrolb)]
    pub config_source: SourceKind,
    /// Namespace of MetalLB's custom resources (`--config-source metallb`).
    #[arg(long, default_value = "metallb-system")]
    pub metallb_namespace: String,
}

/// Where the configuration is read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SourceKind {
    /// The ferrolb ConfigMap (`--config-map`, `--config-key`).
    Ferrolb,
    /// MetalLB's IPAddressPools, advertisements, BGPPeers, Communities and
    /// BFDProfiles in `--metallb-namespace`.
    Metallb,
}

impl ClusterArgs {
    /// Where the configuration is.
    pub fn config_source(&self) -> ConfigSource {
        ConfigSource {
            namespace: self.namespace.clone(),
            name: self.config_map.clone(),
            key: self.config_key.clone(),
        }
    }
}

/// The ferrolb ConfigMap: where it is, and how it is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigSource {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// The key holding the YAML.
    pub key: String,
}

impl ConfigSource {
    /// `namespace/name`, for logs.
    pub fn display(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// The configuration in `cm`, validated; the error names the ConfigMap
    /// and key and lists every problem.
    pub fn read(
        &self,
        cm: &k8s_openapi::api::core::v1::ConfigMap,
    ) -> Result<ferrolb_config::Config, String> {
        let Some(text) = cm.data.as_ref().and_then(|d| d.get(&self.key)) else {
            return Err(format!(
                "ConfigMap {} has no key {:?}; put the configuration under it",
                self.display(),
                self.key
            ));
        };
        ferrolb_config::Config::from_yaml(text).map_err(|e| {
            format!(
                "ConfigMap {} key {:?} is invalid:\n{e}",
                self.display(),
                self.key
            )
        })
    }

    /// The raw text under the key, if any (to notice a change before parsing).
    pub fn text(&self, cm: &k8s_openapi::api::core::v1::ConfigMap) -> Option<String> {
        cm.data.as_ref()?.get(&self.key).cloned()
    }
}

/// Why no client could be made.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The kubeconfig file could not be read.
    #[error("cannot read kubeconfig {path}: {source}")]
    Kubeconfig {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: kube::config::KubeconfigError,
    },
    /// No credentials were found.
    #[error(
        "no cluster credentials (in-cluster service account, KUBECONFIG or ~/.kube/config): {0}"
    )]
    Infer(#[from] kube::config::InferConfigError),
    /// The kubeconfig is unusable.
    #[error("unusable kubeconfig: {0}")]
    Config(#[from] kube::config::KubeconfigError),
    /// The client could not be built.
    #[error("cannot build the API client: {0}")]
    Client(#[from] kube::Error),
}

/// A client from `kubeconfig`, or in-cluster / KUBECONFIG / ~/.kube/config,
/// sending `User-Agent: COMPONENT/VERSION`.
pub async fn client(kubeconfig: Option<&Path>, user_agent: &str) -> Result<Client, ClientError> {
    let mut config = match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path).map_err(|source| {
                ClientError::Kubeconfig {
                    path: path.display().to_string(),
                    source,
                }
            })?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await?
        }
        None => kube::Config::infer().await?,
    };
    // Only visible ASCII may go in a header; anything else becomes `_`.
    let agent: String = user_agent
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect();
    config.headers.push((
        http::header::USER_AGENT,
        http::HeaderValue::from_str(&agent)
            .unwrap_or_else(|_| http::HeaderValue::from_static("ferrolb")),
    ));
    Ok(Client::try_from(config)?)
}

/// One Event to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct EventSpec {
    /// What it is about.
    pub regarding: ObjectReference,
    /// `Warning` instead of `Normal`.
    pub warning: bool,
    /// Machine-readable reason (`IPAllocated`).
    pub reason: String,
    /// What the component did (`Allocate`).
    pub action: String,
    /// For an operator; cut to the API's 1 KiB limit.
    pub note: String,
}

/// Publishes Events from a queue, a few at a time, so that a slow Events API
/// never delays the caller. Each Event is created as is (no series folding:
/// the callers send one per distinct change; kube's Recorder would fold a
/// second Event with the same reason into the first and keep the old note).
#[derive(Clone)]
pub struct Events {
    tx: mpsc::Sender<EventSpec>,
    dropped: Arc<AtomicU64>,
}

/// Events waiting to be published at most; more are counted as dropped.
pub const QUEUE: usize = 65_536;
/// Events published at once.
pub const CONCURRENCY: usize = 4;

impl Events {
    /// Starts the publisher; `controller` and `instance` fill
    /// `reportingController` and `reportingInstance`.
    pub fn start(client: Client, controller: &'static str, instance: String) -> Events {
        let instance = bounded(&instance, 128);
        let (tx, rx) = mpsc::channel::<EventSpec>(QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        let seq = Arc::new(AtomicU64::new(0));
        let stream = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        });
        let counter = Arc::clone(&dropped);
        tokio::spawn(stream.for_each_concurrent(CONCURRENCY, move |ev| {
            let n = seq.fetch_add(1, Ordering::Relaxed);
            let (client, instance, counter) =
                (client.clone(), instance.clone(), Arc::clone(&counter));
            async move {
                if let Err(e) = publish(&client, controller, &instance, n, &ev).await {
                    counter.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(error = %e, reason = %ev.reason, "could not publish an Event");
                }
            }
        }));
        Events { tx, dropped }
    }

    /// Queues an Event; returns false (and counts it) if the queue is full.
    pub fn send(&self, ev: EventSpec) -> bool {
        let ok = self.tx.try_send(ev).is_ok();
        if !ok {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        ok
    }

    /// Events that could not be published (API errors, full queue).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

async fn publish(
    client: &Client,
    controller: &str,
    instance: &str,
    seq: u64,
    ev: &EventSpec,
) -> Result<(), kube::Error> {
    let now = jiff::Timestamp::now();
    let ns = ev
        .regarding
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let name = format!(
        "{}.{:x}{:04x}",
        ev.regarding.name.as_deref().unwrap_or(controller),
        now.as_nanosecond(),
        seq & 0xffff
    );
    let event = json!({
        "apiVersion": "events.k8s.io/v1",
        "kind": "Event",
        "metadata": {"name": name, "namespace": ns},
        "eventTime": MicroTime(now),
        "reportingController": controller,
        "reportingInstance": instance,
        "action": ev.action,
        "reason": ev.reason,
        "type": if ev.warning { "Warning" } else { "Normal" },
        "note": truncate(&ev.note, 1024),
        "regarding": ev.regarding,
    });
    let event: Event = serde_json::from_value(event).map_err(kube::Error::SerdeError)?;
    Api::<Event>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &event)
        .await
        .map(|_| ())
}

/// `name` if it has at most `max` bytes, else its start and a hash of the
/// whole, `max` bytes in all: the API limits `reportingInstance` and field
/// manager names to 128 bytes, node and Pod names may have 253, and two
/// long names that share a start must still differ.
pub fn bounded(name: &str, max: usize) -> String {
    if name.len() <= max {
        return name.to_string();
    }
    // FNV-1a, 32 bits: stable across runs and versions, unlike std's hasher.
    let hash = name.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ b as u32).wrapping_mul(0x0100_0193)
    });
    let mut end = max.saturating_sub(9);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}-{hash:08x}", &name[..end])
}

/// Cuts `note` to `max` bytes on a character boundary, marking the cut.
pub fn truncate(note: &str, max: usize) -> String {
    if note.len() <= max {
        return note.to_string();
    }
    let mut end = max.saturating_sub(3);
    while !note.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &note[..end])
}

/// A reference to a Service, for Events about it.
pub fn service_ref(namespace: &str, name: &str, uid: Option<String>) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Service".into()),
        namespace: Some(namespace.to_string()),
        name: Some(name.to_string()),
        uid,
        ..ObjectReference::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_binaries_take_the_same_flags_and_read_the_configmap_alike() {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            cluster: ClusterArgs,
        }
        let cli =
            Cli::try_parse_from(["x", "--config-map", "lb", "--config-key", "c.yaml"]).unwrap();
        let src = cli.cluster.config_source();
        assert_eq!(src.display(), "ferrolb-system/lb");
        let cm = |data: &[(&str, &str)]| k8s_openapi::api::core::v1::ConfigMap {
            data: Some(
                data.iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..Default::default()
        };
        let good = cm(&[("c.yaml", "pools: [{name: a, addresses: [192.0.2.0/28]}]")]);
        assert_eq!(src.read(&good).unwrap().pools.len(), 1);
        assert!(src.text(&good).is_some());
        let missing = src.read(&cm(&[("config.yaml", "pools: []")])).unwrap_err();
        assert!(
            missing.contains("ferrolb-system/lb has no key \"c.yaml\""),
            "{missing}"
        );
        let bad = src
            .read(&cm(&[("c.yaml", "pools: [{name: a}]")]))
            .unwrap_err();
        assert!(bad.contains("key \"c.yaml\" is invalid"), "{bad}");
    }

    #[test]
    fn truncate_keeps_short_notes_and_cuts_on_a_boundary() {
        assert_eq!(truncate("short", 1024), "short");
        let long = "é".repeat(600);
        let cut = truncate(&long, 1024);
        assert!(cut.len() <= 1024 && cut.ends_with("..."));
        assert!(cut.is_char_boundary(cut.len() - 3));
    }

    #[test]
    fn bounded_names_fit_and_stay_distinct() {
        assert_eq!(bounded("node1", 128), "node1");
        let a = format!("{}-a", "n".repeat(250));
        let b = format!("{}-b", "n".repeat(250));
        let (ba, bb) = (bounded(&a, 128), bounded(&b, 128));
        assert_eq!((ba.len(), bb.len()), (128, 128));
        assert_ne!(ba, bb, "same start, different names");
        assert_eq!(bounded(&a, 128), ba, "stable");
        let wide = "é".repeat(100);
        assert!(bounded(&wide, 128).len() <= 128);
    }
}
