//! The install manifests in `deploy/`: they validate against the Kubernetes
//! schemas offline, the example configuration is valid, and the RBAC they
//! grant is exactly what the components use: every request the controller
//! and the speaker make in a full run against the fake API server is
//! allowed, and every write the RBAC allows is one they make.

use ferrolb_tests::cluster::{Cluster, Controller, KubeSpeaker, SYSTEM_NS};
use ferrolb_tests::deploy::strings;
use ferrolb_tests::{require, Need};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The Kubernetes version the schemas are checked against (k8s-openapi's feature too).
const KUBERNETES: &str = "1.33.0";

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn documents(file: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(deploy().join(file)).unwrap();
    serde_saphyr::from_str_multiple::<Value, Vec<Value>>(&text)
        .unwrap_or_else(|e| panic!("{file}: {e}"))
}

#[test]
fn manifests_validate_against_the_kubernetes_schemas() {
    if !require(
        "manifest schema validation",
        &[Need::Program("kubernetes-validate")],
    ) {
        return;
    }
    let files = [
        "namespace.yaml",
        "crds.yaml",
        "config.yaml",
        "controller.yaml",
        "speaker.yaml",
    ];
    let out = std::process::Command::new("kubernetes-validate")
        .args(["--strict", "-k", KUBERNETES])
        .args(files.iter().map(|f| deploy().join(f)))
        .arg(deploy().join("uninstall/cleanup.yaml"))
        .output()
        .expect("run kubernetes-validate");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    // Every object of every file was checked (the kustomization lists them all).
    let listed: Vec<String> = documents("kustomization.yaml")[0]["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        listed.iter().collect::<BTreeSet<_>>(),
        files
            .iter()
            .map(|f| f.to_string())
            .collect::<BTreeSet<_>>()
            .iter()
            .collect()
    );
    let objects: usize = files.iter().map(|f| documents(f).len()).sum::<usize>()
        + documents("uninstall/cleanup.yaml").len();
    assert_eq!(
        text.matches(" passed for resource ").count(),
        objects,
        "{text}"
    );
}

#[test]
fn the_example_configuration_is_valid() {
    let cm = &documents("config.yaml")[0];
    let yaml = cm["data"]["config.yaml"].as_str().unwrap();
    ferrolb_config::Config::from_yaml(yaml).unwrap_or_else(|e| panic!("deploy/config.yaml: {e}"));
}

/// A rule of a Role or ClusterRole, with where it applies.
struct Rule {
    namespace: Option<String>,
    groups: Vec<String>,
    resources: Vec<String>,
    names: Vec<String>,
    verbs: Vec<String>,
}

/// The rules bound to `service_account` in `file`.
fn rules(file: &str, service_account: &str) -> Vec<Rule> {
    let docs = documents(file);
    let mut out = Vec::new();
    for binding in docs.iter().filter(|d| {
        matches!(
            d["kind"].as_str(),
            Some("RoleBinding" | "ClusterRoleBinding")
        )
    }) {
        let bound = binding["subjects"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["kind"] == "ServiceAccount" && s["name"] == service_account);
        if !bound {
            continue;
        }
        let role_kind = binding["roleRef"]["kind"].as_str().unwrap();
        let role_name = binding["roleRef"]["name"].as_str().unwrap();
        let role = docs
            .iter()
            .find(|d| d["kind"] == role_kind && d["metadata"]["name"] == role_name)
            .unwrap_or_else(|| panic!("{file}: {role_kind} {role_name} is bound but not defined"));
        let namespace = (role_kind == "Role")
            .then(|| role["metadata"]["namespace"].as_str().unwrap().to_string());
        for r in role["rules"].as_array().unwrap() {
            out.push(Rule {
                namespace: namespace.clone(),
                groups: strings(&r["apiGroups"]),
                resources: strings(&r["resources"]),
                names: strings(&r["resourceNames"]),
                verbs: strings(&r["verbs"]),
            });
        }
    }
    out
}

/// (group, resource with subresource) of a recorded request.
fn target(r: &ferrolb_kubefake::RecordedRequest) -> (String, String) {
    let (plural, group) = r
        .resource
        .split_once('.')
        .unwrap_or((r.resource.as_str(), ""));
    let resource = match &r.subresource {
        Some(s) => format!("{plural}/{s}"),
        None => plural.to_string(),
    };
    (group.to_string(), resource)
}

fn allows(rule: &Rule, r: &ferrolb_kubefake::RecordedRequest) -> bool {
    let (group, resource) = target(r);
    let name_ok = rule.names.is_empty()
        // RBAC cannot restrict list, watch or create by name.
        || (!matches!(r.verb, "list" | "watch" | "create") && r.name.as_ref().is_some_and(|n| rule.names.contains(n)));
    rule.groups.contains(&group)
        && rule.resources.contains(&resource)
        && rule.verbs.iter().any(|v| v == r.verb)
        && name_ok
        && rule
            .namespace
            .as_ref()
            .is_none_or(|ns| r.namespace.as_ref() == Some(ns))
}

fn check(
    component: &str,
    file: &str,
    service_account: &str,
    requests: &[ferrolb_kubefake::RecordedRequest],
) {
    let rules = rules(file, service_account);
    let used: Vec<&ferrolb_kubefake::RecordedRequest> = requests
        .iter()
        .filter(|r| r.user_agent.starts_with(&format!("{component}/")))
        .collect();
    assert!(!used.is_empty(), "no request from {component}");
    let denied: BTreeSet<String> = used
        .iter()
        .filter(|r| !rules.iter().any(|rule| allows(rule, r)))
        .map(|r| {
            format!(
                "{} {:?} {:?} in {:?}",
                r.verb,
                target(r),
                r.name,
                r.namespace
            )
        })
        .collect();
    assert!(
        denied.is_empty(),
        "{file} does not allow what {component} does:\n{}",
        denied.into_iter().collect::<Vec<_>>().join("\n")
    );
    for rule in &rules {
        for verb in rule.verbs.iter().filter(|v| {
            matches!(
                v.as_str(),
                "create" | "update" | "patch" | "delete" | "deletecollection"
            )
        }) {
            for resource in &rule.resources {
                let exercised = used.iter().any(|r| {
                    let (g, res) = target(r);
                    // A server-side apply that created its object (201) used `create`.
                    let as_verb = if r.verb == "patch" && r.code == 201 {
                        "create"
                    } else {
                        r.verb
                    };
                    (r.verb == verb.as_str() || as_verb == verb.as_str())
                        && res == *resource
                        && rule.groups.contains(&g)
                });
                assert!(
                    exercised,
                    "{file} lets {component} {verb} {resource}, which it never does; it did {:?}",
                    used.iter()
                        .map(|r| format!("{} {} {}", r.verb, target(r).1, r.code))
                        .collect::<BTreeSet<_>>()
                );
            }
        }
    }
    let summary: BTreeSet<String> = used
        .iter()
        .map(|r| format!("{} {}", r.verb, target(r).1))
        .collect();
    eprintln!("{component} used: {summary:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbac_allows_exactly_what_the_components_use() {
    let c = Cluster::start().await;
    // A BGP peer nobody answers for: the speaker still advertises (to nobody), so it emits its Events.
    let closed = ferrolb_tests::speaker::free_port();
    c.set_config(&format!(
        "pools: [{{name: loopback, addresses: [127.0.44.0/28]}}]\nbgp:\n  routerId: 192.0.2.11\n  peers: [{{name: nobody, address: 127.0.0.1, port: {closed}, asn: 65000, myAsn: 65001}}]\n"
    ))
    .await;
    c.create_node("node1", "127.0.0.1", json!({}));
    c.create_speaker_pod("node1", "127.0.0.1");
    let mut ctl = Controller::start(&c, "rbac", &[]).await;
    let _speaker = KubeSpeaker::start(&c, "node1", &[]).await;
    // Every path: allocation, forwarding, a failure, a release, an invalid config, a Lease handover.
    c.create_service(
        "shop",
        "web",
        json!({"metadata": {"annotations": {"ferrolb.io/forward": "true"}}}),
    )
    .await;
    c.set_endpoints("shop", "web", 9, &[("127.0.44.200", "node1", true)]);
    c.wait_ingress("shop", "web", 1, Duration::from_secs(10))
        .await;
    // Announce-only, with a ready endpoint: the speaker advertises it and says so.
    c.create_service("shop", "plain", json!({})).await;
    c.set_endpoints("shop", "plain", 9, &[("127.0.44.201", "node1", true)]);
    let vip = c
        .wait_ingress("shop", "plain", 1, Duration::from_secs(10))
        .await;
    c.wait_event("shop", "plain", "IPAnnounced", Duration::from_secs(10))
        .await;
    c.create_service(
        "shop",
        "outside",
        json!({"spec": {"loadBalancerIP": "203.0.113.1"}}),
    )
    .await;
    c.wait_event(
        "shop",
        "outside",
        "AllocationFailed",
        Duration::from_secs(10),
    )
    .await;
    c.patch_service("shop", "web", json!({"spec": {"type": "ClusterIP"}}))
        .await;
    c.wait_event("shop", "web", "IPReleased", Duration::from_secs(10))
        .await;
    c.set_config("pools: [{name: broken, addresses: [10.0.0.0/33]}]")
        .await;
    c.wait_event(
        SYSTEM_NS,
        "ferrolb-config",
        "ConfigInvalid",
        Duration::from_secs(10),
    )
    .await;
    ctl.kill("TERM");
    // A speaker running as root made the VIP local: leave the host as it was.
    let _ = std::process::Command::new("ip")
        .args([
            "route",
            "del",
            "local",
            &format!("{}/32", vip[0]),
            "dev",
            "lo",
            "table",
            "local",
        ])
        .output();
    let requests = c.server.requests();
    check(
        "ferrolb-controller",
        "controller.yaml",
        "ferrolb-controller",
        &requests,
    );
    check(
        "ferrolb-speaker",
        "speaker.yaml",
        "ferrolb-speaker",
        &requests,
    );
}

/// Every request of the suites passes through `deploy/`'s RBAC (the fake
/// API server authorises each by the ServiceAccount token it carries): a
/// call the manifests do not allow gets the real server's 403, an unknown
/// token a 401, and a controller started with a Lease name the Role does
/// not grant never leads, as it would not in a cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_outside_the_shipped_rbac_are_refused_as_a_real_server_would() {
    use k8s_openapi::api::core::v1::Service;
    use kube::api::{Api, Patch, PatchParams};
    let c = Cluster::start().await;
    c.create_service("shop", "web", json!({})).await;
    // The speaker may read Services, never write them.
    let speaker = ferrolb_tests::cluster::client_from(&c.speaker_kubeconfig).await;
    let err = Api::<Service>::namespaced(speaker.clone(), "shop")
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"x": "y"}}})),
        )
        .await
        .expect_err("the speaker may not patch Services");
    match err {
        kube::Error::Api(s) => {
            assert_eq!(s.code, 403, "{s:?}");
            assert_eq!(
                s.message,
                "services \"web\" is forbidden: User \"system:serviceaccount:ferrolb-system:ferrolb-speaker\" cannot patch resource \"services\" in API group \"\" in the namespace \"shop\""
            );
        }
        other => panic!("wanted a 403, got {other:?}"),
    }
    assert!(Api::<Service>::all(speaker)
        .list(&Default::default())
        .await
        .is_ok());
    // A token the server never issued.
    let forged = c.dir.join("kubeconfig-forged");
    std::fs::write(&forged, c.server.kubeconfig_with_token("not-a-token")).unwrap();
    let forged = ferrolb_tests::cluster::client_from(&forged).await;
    match Api::<Service>::all(forged).list(&Default::default()).await {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 401, "{s:?}"),
        other => panic!("wanted a 401, got {other:?}"),
    }
    // The Role grants the Lease named ferrolb-controller only.
    c.set_config("pools: [{name: p, addresses: [127.0.45.0/28]}]")
        .await;
    let ctl = Controller::spawn(&c, "other-lease", &["--lease-name", "not-in-the-role"]);
    // First the positive sign: its Lease requests reached the server and were refused.
    let t = std::time::Instant::now();
    while !c
        .server
        .requests()
        .into_iter()
        .any(|r| r.resource == "leases.coordination.k8s.io" && r.code == 403)
    {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the Lease requests were not refused:\n{}",
            ctl.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Then a few more attempts, none of which may make it leader.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let log = ctl.log();
    assert!(!log.contains("became leader"), "{log}");
}
