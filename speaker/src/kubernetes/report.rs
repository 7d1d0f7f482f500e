//! The NodeAnnouncement this speaker keeps current (deploy/crds.yaml): what
//! this node announces, one object per node, for `status --api`. Events
//! about announcements expire after the API server's TTL; this does not.
//!
//! Cost: one server-side apply per change of this node's set, coalesced to
//! at most one a second, whatever the number of Services; nothing when
//! nothing changes. The building of the object is pure ([`Report::body`]);
//! [`spawn`] is the thin task that writes it.

use std::collections::BTreeMap;
use std::time::Duration;
use tokio::sync::watch;

/// The custom resource's group, version and plural.
pub const GROUP: &str = "ferrolb.io";
/// Its version.
pub const VERSION: &str = "v1alpha1";
/// Its kind.
pub const KIND: &str = "NodeAnnouncement";
/// Its plural (URL) name.
pub const PLURAL: &str = "nodeannouncements";

/// The largest object written: etcd refuses requests over 1.5 MiB; the
/// lists are cut (and `truncated` set) well before.
pub const MAX_BYTES: usize = 1_000_000;

/// How often the object is rewritten at most.
const EVERY: Duration = Duration::from_secs(1);

/// What this node announces: `namespace/name=ip[,ip]` per Service, sorted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Services this node owns in layer 2.
    pub layer2: Vec<String>,
    /// Services this node advertises over BGP.
    pub bgp: Vec<String>,
}

impl Report {
    /// From the per-Service roles the speaker computed ("l2", "bgp") and
    /// each Service's addresses.
    pub fn from_roles<'a>(
        roles: &BTreeMap<String, Vec<(&'static str, String)>>,
        vips_of: impl Fn(&str) -> String + 'a,
    ) -> Report {
        let mut r = Report::default();
        for (key, modes) in roles {
            let entry = format!("{key}={}", vips_of(key));
            if modes.iter().any(|(m, _)| *m == "l2") {
                r.layer2.push(entry.clone());
            }
            if modes.iter().any(|(m, _)| *m == "bgp") {
                r.bgp.push(entry);
            }
        }
        r
    }

    /// The object to apply: `node`'s announcements at `updated` (RFC 3339),
    /// owned by the speaker Pod `(name, uid)` when known. Lists that would
    /// make the object larger than `max_bytes` are cut, the counts kept.
    pub fn body(
        &self,
        node: &str,
        namespace: &str,
        updated: &str,
        owner: Option<(&str, &str)>,
        max_bytes: usize,
    ) -> serde_json::Value {
        let mut budget = max_bytes.saturating_sub(1024 + node.len() * 2);
        let mut keep = |list: &[String]| -> Vec<String> {
            let mut out = Vec::new();
            for e in list {
                // The entry, its quotes and its comma.
                let cost = e.len() + 3;
                if cost > budget {
                    break;
                }
                budget -= cost;
                out.push(e.clone());
            }
            out
        };
        let layer2 = keep(&self.layer2);
        let bgp = keep(&self.bgp);
        let truncated = layer2.len() < self.layer2.len() || bgp.len() < self.bgp.len();
        let mut metadata = serde_json::json!({"name": node, "namespace": namespace});
        if let Some((pod, uid)) = owner {
            metadata["ownerReferences"] = serde_json::json!([{
                "apiVersion": "v1", "kind": "Pod", "name": pod, "uid": uid
            }]);
        }
        serde_json::json!({
            "apiVersion": format!("{GROUP}/{VERSION}"),
            "kind": KIND,
            "metadata": metadata,
            "spec": {
                "node": node,
                "updated": updated,
                "layer2": layer2,
                "bgp": bgp,
                "layer2Count": self.layer2.len(),
                "bgpCount": self.bgp.len(),
                "truncated": truncated,
            }
        })
    }
}

/// The API resource for [`kube::api::DynamicObject`] requests.
pub fn api_resource() -> kube::core::ApiResource {
    kube::core::ApiResource {
        group: GROUP.into(),
        version: VERSION.into(),
        api_version: format!("{GROUP}/{VERSION}"),
        kind: KIND.into(),
        plural: PLURAL.into(),
    }
}

/// Where the writer's result is counted.
pub type Outcome = Box<dyn Fn(bool) + Send + Sync>;

/// How often the NodeAnnouncement of a node announcing `entries` Services
/// may be rebuilt and written: once a second up to 1,000 entries, then one
/// more second per 1,000, at most 10 s. Under churn at 10,000 Services the
/// object (about 300 KB) is then written every 10 s, not every second; a
/// small cluster's view stays as fresh as before.
pub fn interval(entries: usize) -> std::time::Duration {
    std::time::Duration::from_secs((entries as u64 / 1000).clamp(1, 10))
}

/// Starts the writer: send the newest [`Report`] (and this node's speaker
/// Pod, for the owner reference) on the returned channel; it is applied at
/// once, then at most once a second while it changes. A failed write is
/// logged (once a minute) and retried a second later with the newest value.
pub fn spawn(
    client: kube::Client,
    namespace: String,
    node: String,
    outcome: Outcome,
) -> watch::Sender<(Report, Option<(String, String)>)> {
    let (tx, mut rx) = watch::channel((Report::default(), None));
    tokio::spawn(async move {
        let api: kube::Api<kube::api::DynamicObject> =
            kube::Api::namespaced_with(client, &namespace, &api_resource());
        let params = kube::api::PatchParams::apply("ferrolb-speaker").force();
        let mut last_warning: Option<tokio::time::Instant> = None;
        let mut written: Option<(Report, Option<(String, String)>)> = None;
        loop {
            if rx.changed().await.is_err() {
                return;
            }
            let current = rx.borrow_and_update().clone();
            if written.as_ref() == Some(&current) {
                continue;
            }
            let (report, owner) = &current;
            let updated = k8s_openapi::jiff::Timestamp::now().to_string();
            let body = report.body(
                &node,
                &namespace,
                &updated,
                owner.as_ref().map(|(n, u)| (n.as_str(), u.as_str())),
                MAX_BYTES,
            );
            match api
                .patch(&node, &params, &kube::api::Patch::Apply(&body))
                .await
            {
                Ok(_) => {
                    outcome(true);
                    written = Some(current);
                }
                Err(e) => {
                    outcome(false);
                    if last_warning.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
                        last_warning = Some(tokio::time::Instant::now());
                        tracing::warn!(error = %e, node = %node, "cannot write this node's NodeAnnouncement (status --api shows an older view; is deploy/crds.yaml applied, and may the speaker patch nodeannouncements?); retrying every second");
                    }
                    // Retry with whatever is newest then.
                    rx.mark_changed();
                }
            }
            tokio::time::sleep(EVERY).await;
        }
    });
    tx
}

/// Writes an empty set once, for a speaker that stops: its VIPs are gone
/// from this node and `status --api` must not name it. Best effort, bounded.
pub async fn clear(client: kube::Client, namespace: &str, node: &str) {
    let api: kube::Api<kube::api::DynamicObject> =
        kube::Api::namespaced_with(client, namespace, &api_resource());
    let body = Report::default().body(
        node,
        namespace,
        &k8s_openapi::jiff::Timestamp::now().to_string(),
        None,
        MAX_BYTES,
    );
    let params = kube::api::PatchParams::apply("ferrolb-speaker").force();
    let patch = kube::api::Patch::Apply(&body);
    let write = api.patch(node, &params, &patch);
    match tokio::time::timeout(Duration::from_secs(1), write).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "cannot clear this node's NodeAnnouncement"),
        Err(_) => tracing::warn!("clearing this node's NodeAnnouncement timed out"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_views_are_written_less_often_never_rarer_than_every_ten_seconds() {
        let secs = |n| interval(n).as_secs();
        assert_eq!([secs(0), secs(20), secs(1_999)], [1, 1, 1]);
        assert_eq!(
            [secs(2_000), secs(5_500), secs(10_000), secs(1_000_000)],
            [2, 5, 10, 10]
        );
    }

    fn roles() -> BTreeMap<String, Vec<(&'static str, String)>> {
        BTreeMap::from([
            ("shop/web".to_string(), vec![("l2", "owner".to_string())]),
            (
                "shop/api".to_string(),
                vec![("l2", "owner".to_string()), ("bgp", "to r1".to_string())],
            ),
            ("shop/db".to_string(), vec![("bgp", "to r1".to_string())]),
        ])
    }

    #[test]
    fn one_entry_per_service_and_mode() {
        let r = Report::from_roles(&roles(), |k| format!("ip-of-{k}"));
        assert_eq!(
            r.layer2,
            ["shop/api=ip-of-shop/api", "shop/web=ip-of-shop/web"]
        );
        assert_eq!(r.bgp, ["shop/api=ip-of-shop/api", "shop/db=ip-of-shop/db"]);
        let b = r.body(
            "node-a",
            "ferrolb-system",
            "2026-12-02T04:00:00Z",
            Some(("speaker-x", "u-1")),
            MAX_BYTES,
        );
        assert_eq!(b["metadata"]["name"], "node-a");
        assert_eq!(b["metadata"]["ownerReferences"][0]["uid"], "u-1");
        assert_eq!(
            (
                b["spec"]["layer2Count"].as_u64(),
                b["spec"]["bgpCount"].as_u64()
            ),
            (Some(2), Some(2))
        );
        assert_eq!(b["spec"]["truncated"], false);
    }

    #[test]
    fn a_set_too_large_for_one_object_is_cut_and_says_so() {
        let many: Vec<String> = (0..40_000)
            .map(|i| format!("namespace-{i:05}/service-with-a-long-name-{i:05}=192.0.2.1"))
            .collect();
        let r = Report {
            layer2: vec![],
            bgp: many,
        };
        let b = r.body("node-a", "ferrolb-system", "t", None, MAX_BYTES);
        let size = serde_json::to_vec(&b).unwrap().len();
        assert!(size <= MAX_BYTES, "{size} bytes");
        assert_eq!(b["spec"]["truncated"], true);
        assert_eq!(b["spec"]["bgpCount"], 40_000, "the count stays complete");
        assert!(b["spec"]["bgp"].as_array().unwrap().len() < 40_000);
        // 10,000 Services with typical names fit whole.
        let typical = Report {
            layer2: vec![],
            bgp: (0..10_000)
                .map(|i| format!("team-{}/svc-{i}=192.0.2.{}", i % 50, i % 250))
                .collect(),
        };
        let b = typical.body("node-a", "ferrolb-system", "t", None, MAX_BYTES);
        assert_eq!(b["spec"]["truncated"], false);
        eprintln!(
            "10,000 typical entries: {} bytes",
            serde_json::to_vec(&b).unwrap().len()
        );
    }
}
