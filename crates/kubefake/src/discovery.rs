//! API discovery, as `kubectl` reads it before any request: `/api`, `/apis`
//! and each group version's resource list (the legacy, unaggregated
//! documents; a client asking for aggregated discovery falls back to them
//! when the answer is plain `application/json`, as with an older server).

use crate::resource::{ResourceType, RESOURCES};
use serde_json::{json, Value};

/// The short names kubectl users type, as the real resources declare them.
fn short_names(rt: &ResourceType) -> &'static [&'static str] {
    match (rt.group, rt.plural) {
        ("", "services") => &["svc"],
        ("", "pods") => &["po"],
        ("", "nodes") => &["no"],
        ("", "configmaps") => &["cm"],
        ("", "events") => &["ev"],
        ("", "namespaces") => &["ns"],
        ("", "serviceaccounts") => &["sa"],
        ("events.k8s.io", "events") => &["ev"],
        ("apps", "deployments") => &["deploy"],
        ("apps", "daemonsets") => &["ds"],
        _ => &[],
    }
}

const VERBS: &[&str] = &[
    "create", "delete", "get", "list", "patch", "update", "watch",
];

/// The groups served besides the core group, in the order they were first
/// listed in [`RESOURCES`].
fn groups(served: &dyn Fn(usize) -> bool) -> Vec<(&'static str, &'static str)> {
    let mut out: Vec<(&str, &str)> = Vec::new();
    for (_, rt) in RESOURCES
        .iter()
        .enumerate()
        .filter(|(i, r)| !r.group.is_empty() && served(*i))
    {
        if !out.contains(&(rt.group, rt.version)) {
            out.push((rt.group, rt.version));
        }
    }
    out
}

fn resource_list(group: &str, version: &str, served: &dyn Fn(usize) -> bool) -> Option<Value> {
    let mut resources = Vec::new();
    for (_, rt) in RESOURCES
        .iter()
        .enumerate()
        .filter(|(i, r)| r.group == group && r.version == version && served(*i))
    {
        resources.push(json!({
            "name": rt.plural,
            "singularName": rt.kind.to_lowercase(),
            "namespaced": rt.namespaced,
            "kind": rt.kind,
            "verbs": VERBS,
            "shortNames": short_names(rt),
        }));
        if rt.has_status {
            resources.push(json!({
                "name": format!("{}/status", rt.plural),
                "singularName": "",
                "namespaced": rt.namespaced,
                "kind": rt.kind,
                "verbs": ["get", "patch", "update"],
            }));
        }
    }
    if resources.is_empty() {
        return None;
    }
    let group_version = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": resources,
    }))
}

/// The discovery document at `path`, if it is one. `served` says whether a
/// resource is served now (a custom resource needs its definition).
pub fn document(path: &str, served: &dyn Fn(usize) -> bool) -> Option<Value> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    match segs.as_slice() {
        ["version"] => Some(json!({
            "major": "1", "minor": "33", "gitVersion": "v1.33.0-ferrolb-kubefake",
            "gitCommit": "", "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z",
            "goVersion": "go1.24", "compiler": "gc", "platform": "linux/amd64"
        })),
        ["api"] => Some(json!({
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [],
        })),
        ["apis"] => Some(json!({
            "kind": "APIGroupList",
            "apiVersion": "v1",
            "groups": groups(served).into_iter().map(|(g, v)| {
                let gv = json!({"groupVersion": format!("{g}/{v}"), "version": v});
                json!({"name": g, "versions": [gv.clone()], "preferredVersion": gv})
            }).collect::<Vec<_>>(),
        })),
        ["api", version] => resource_list("", version, served),
        ["apis", group] => groups(served)
            .into_iter()
            .find(|(g, _)| g == group)
            .map(|(g, v)| {
                let gv = json!({"groupVersion": format!("{g}/{v}"), "version": v});
                json!({"kind": "APIGroup", "apiVersion": "v1", "name": g,
                "versions": [gv.clone()], "preferredVersion": gv})
            }),
        ["apis", group, version] => resource_list(group, version, served),
        _ => None,
    }
}

#[cfg(test)]
mod tests {

    /// The shapes of `APIVersions`, `APIGroupList` and `APIResourceList`
    /// (k8s.io/apimachinery/pkg/apis/meta/v1/types.go) that client-go's
    /// discovery client decodes.
    #[test]
    fn discovery_lists_every_served_resource() {
        let all = |_: usize| true;
        let document = |p: &str| super::document(p, &all);
        let core = document("/api/v1").unwrap();
        let names: Vec<&str> = core["resources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap())
            .collect();
        assert!(names.contains(&"services") && names.contains(&"services/status"));
        assert!(
            !names.contains(&"configmaps/status"),
            "no status subresource there"
        );
        let groups = document("/apis").unwrap();
        let listed: Vec<&str> = groups["groups"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| g["name"].as_str().unwrap())
            .collect();
        for g in [
            "discovery.k8s.io",
            "coordination.k8s.io",
            "events.k8s.io",
            "apps",
        ] {
            assert!(listed.contains(&g), "{g} in {listed:?}");
            assert!(document(&format!("/apis/{g}/v1")).is_some());
        }
        assert!(document("/apis/batch/v1").is_none());
        assert_eq!(document("/api").unwrap()["versions"][0], "v1");
        let svc = &core["resources"][0];
        assert_eq!(
            (svc["kind"].as_str(), svc["shortNames"][0].as_str()),
            (Some("Service"), Some("svc"))
        );
    }
}
