//! `ferrolb-speaker status --api` and `kubectl ferrolb status`: the cluster
//! view read from the API (every Service's addresses and every node's
//! NodeAnnouncement); `status` renders it.

use crate::status::NodeClaim;
use std::path::Path;

/// Why the cluster view could not be read.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// No client (kubeconfig, in-cluster configuration).
    #[error("cannot reach the API server: {0}")]
    Client(String),
    /// A list failed.
    #[error("cannot list {what}: {source}")]
    List {
        /// What was listed.
        what: &'static str,
        /// The API's answer.
        source: kube::Error,
    },
}

fn list_err(what: &'static str) -> impl Fn(kube::Error) -> StatusError {
    move |source| StatusError::List { what, source }
}

/// Every Service with an address (`namespace/name`, addresses) and every
/// node's claim, from the API: what the cluster view is made of.
pub async fn fetch(
    kubeconfig: Option<&Path>,
    namespace: &str,
    speaker_selector: &str,
    user_agent: &str,
) -> Result<(Vec<(String, Vec<String>)>, Vec<NodeClaim>), StatusError> {
    use crate::kubernetes::report;
    use k8s_openapi::api::core::v1::{Node, Pod, Service};
    use kube::api::{Api, DynamicObject, ListParams};
    let client = ferrolb_kube::client(kubeconfig, user_agent)
        .await
        .map_err(|e| StatusError::Client(e.to_string()))?;
    let services = Api::<Service>::all(client.clone())
        .list(&ListParams::default())
        .await
        .map_err(list_err("Services"))?;
    let mut rows: Vec<(String, Vec<String>)> = services
        .items
        .iter()
        .filter_map(|s| {
            let ips: Vec<String> = s
                .status
                .as_ref()?
                .load_balancer
                .as_ref()?
                .ingress
                .as_ref()?
                .iter()
                .filter_map(|i| i.ip.clone())
                .collect();
            (!ips.is_empty()).then(|| {
                (
                    format!(
                        "{}/{}",
                        s.metadata.namespace.as_deref().unwrap_or(""),
                        s.metadata.name.as_deref().unwrap_or("")
                    ),
                    ips,
                )
            })
        })
        .collect();
    rows.sort();
    let running: std::collections::BTreeSet<String> =
        Api::<Pod>::namespaced(client.clone(), namespace)
            .list(&ListParams::default().labels(speaker_selector))
            .await
            .map_err(list_err("the speaker Pods"))?
            .items
            .into_iter()
            .filter(|p| {
                p.metadata.deletion_timestamp.is_none()
                    && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
            })
            .filter_map(|p| p.spec?.node_name)
            .collect();
    let ready: std::collections::BTreeSet<String> = Api::<Node>::all(client.clone())
        .list(&ListParams::default())
        .await
        .map_err(list_err("Nodes"))?
        .items
        .into_iter()
        .filter(|n| {
            n.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
                // A node without conditions (nobody reports them) is taken as Ready.
                .is_none_or(|c| c.status == "True")
        })
        .filter_map(|n| n.metadata.name)
        .collect();
    let objects = Api::<DynamicObject>::namespaced_with(client, namespace, &report::api_resource())
        .list(&ListParams::default())
        .await
        .map_err(list_err(
            "NodeAnnouncements (is deploy/crds.yaml applied? a speaker older than it writes none)",
        ))?;
    let strings = |v: &serde_json::Value, k: &str| -> Vec<String> {
        v.get(k)
            .and_then(|l| l.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|e| e.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let claims: Vec<NodeClaim> = objects
        .items
        .iter()
        .filter_map(|o| {
            let spec = o.data.get("spec")?;
            let node = spec.get("node")?.as_str()?.to_string();
            Some(NodeClaim {
                updated: spec
                    .get("updated")
                    .and_then(|u| u.as_str())
                    .and_then(|u| u.parse::<k8s_openapi::jiff::Timestamp>().ok())
                    .map(|t| t.as_nanosecond())
                    .unwrap_or(0),
                layer2: strings(spec, "layer2"),
                bgp: strings(spec, "bgp"),
                live: running.contains(&node) && ready.contains(&node),
                truncated: spec
                    .get("truncated")
                    .and_then(|t| t.as_bool())
                    .unwrap_or(false),
                node,
            })
        })
        .collect();
    Ok((rows, claims))
}
