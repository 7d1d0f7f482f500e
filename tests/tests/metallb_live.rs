//! `--config-source metallb`: the real controller and speaker binaries read
//! MetalLB's custom resources live from the fake API server (MetalLB's CRDs
//! installed, every write pruned, defaulted and validated against their
//! schemas as a real API server does), convert them on every change, and
//! report what did not convert as Warning Events on the offending object.
//! No root needed: loopback only.

use ferrolb_tests::backend;
use ferrolb_tests::client;
use ferrolb_tests::cluster::{Cluster, Controller, KubeSpeaker};
use kube::api::{Api, ApiResource, DynamicObject, PostParams};
use serde_json::{json, Value};
use std::path::Path;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(15);
const NS: &str = "metallb-system";

fn crds() -> Vec<Value> {
    ferrolb_tests::deploy::documents(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/metallb/crds.yaml"),
    )
}

fn resource(plural: &str) -> ApiResource {
    let (_, version, kind) = ferrolb_kube::metallb::KINDS
        .iter()
        .find(|(p, _, _)| *p == plural)
        .copied()
        .expect("a MetalLB kind");
    ApiResource {
        group: "metallb.io".into(),
        version: version.into(),
        api_version: format!("metallb.io/{version}"),
        kind: kind.into(),
        plural: plural.into(),
    }
}

/// Creates a MetalLB object through the API, as `kubectl apply` would.
async fn create(c: &Cluster, plural: &str, name: &str, spec: Value) -> Result<Value, String> {
    let ar = resource(plural);
    let api: Api<DynamicObject> = Api::namespaced_with(c.client.clone(), NS, &ar);
    let obj: DynamicObject = serde_json::from_value(json!({
        "apiVersion": ar.api_version, "kind": ar.kind,
        "metadata": {"name": name, "namespace": NS}, "spec": spec
    }))
    .unwrap();
    api.create(&PostParams::default(), &obj)
        .await
        .map(|o| serde_json::to_value(o).unwrap())
        .map_err(|e| e.to_string())
}

async fn replace(c: &Cluster, plural: &str, name: &str, spec: Value) {
    let ar = resource(plural);
    let api: Api<DynamicObject> = Api::namespaced_with(c.client.clone(), NS, &ar);
    let mut obj = api.get(name).await.expect("get");
    obj.data["spec"] = spec;
    api.replace(name, &PostParams::default(), &obj)
        .await
        .expect("replace");
}

fn install_metallb_crds(c: &Cluster) {
    ferrolb_tests::deploy::apply(&c.server, &crds());
    c.server.create_namespace(NS);
}

/// A cluster with MetalLB's CRDs and one IPAddressPool `name` of `addresses`.
async fn with_pool(name: &str, addresses: &str) -> Cluster {
    let c = Cluster::start().await;
    install_metallb_crds(&c);
    create(
        &c,
        "ipaddresspools",
        name,
        json!({"addresses": [addresses]}),
    )
    .await
    .expect("create the pool");
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metallb_objects_are_served_with_their_crds_and_checked_against_their_schemas() {
    let c = Cluster::start().await;
    // Before the CRDs: the resource does not exist, as on a real server.
    c.server.create_namespace(NS);
    let e = create(
        &c,
        "ipaddresspools",
        "prod",
        json!({"addresses": ["192.0.2.0/28"]}),
    )
    .await
    .expect_err("no CRD yet");
    assert!(e.contains("404") || e.contains("NotFound"), "{e}");
    install_metallb_crds(&c);
    // A field MetalLB does not define is pruned; defaults are filled in.
    let pool = create(
        &c,
        "ipaddresspools",
        "prod",
        json!({"addresses": ["192.0.2.0/28"], "surprise": true}),
    )
    .await
    .expect("created");
    assert_eq!(
        pool["spec"],
        json!({"addresses": ["192.0.2.0/28"], "autoAssign": true, "avoidBuggyIPs": false})
    );
    let peer = create(
        &c,
        "bgppeers",
        "tor",
        json!({"myASN": 64512, "peerASN": 65000, "peerAddress": "192.0.2.254"}),
    )
    .await
    .expect("created");
    assert_eq!(peer["spec"]["peerPort"], 179);
    // Violations are refused, every one named.
    let e = create(
        &c,
        "bgppeers",
        "bad",
        json!({"peerASN": "65000", "peerPort": 20000}),
    )
    .await
    .expect_err("invalid");
    for want in [
        "spec.myASN: Required value",
        "spec.peerASN: Invalid value: \"string\"",
        "spec.peerPort: Invalid value: 20000",
    ] {
        assert!(e.contains(want), "{want} in {e}");
    }
    let e = create(&c, "bfdprofiles", "slow", json!({"detectMultiplier": 1}))
        .await
        .expect_err("invalid");
    assert!(e.contains("spec.detectMultiplier"), "{e}");
}

/// Waits until `f` holds.
async fn until(what: &str, mut f: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + T;
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controller_allocates_from_metallbs_pools_live_and_reports_what_did_not_convert() {
    let c = with_pool("prod", "192.0.2.0/28").await;
    create(
        &c,
        "l2advertisements",
        "prod",
        json!({"ipAddressPools": ["prod"]}),
    )
    .await
    .unwrap();
    create(
        &c,
        "bgppeers",
        "tor",
        json!({"myASN": 64512, "peerASN": 65000, "peerAddress": "192.0.2.254", "connectTime": "5s"}),
    )
    .await
    .unwrap();
    create(&c, "bgpadvertisements", "all", json!({}))
        .await
        .unwrap();
    // No ferrolb ConfigMap at all: the configuration is MetalLB's.
    let ctl = Controller::start(&c, "ctl", &["--config-source", "metallb"]).await;
    c.create_service("shop", "web", json!({})).await;
    let ip = c.wait_ingress("shop", "web", 1, T).await;
    assert!(ip[0].starts_with("192.0.2."), "{ip:?}");
    // What did not convert is a Warning on that object, naming the field.
    let note = c.wait_event(NS, "tor", "MetalLBFieldNotConverted", T).await;
    assert!(note.contains("spec.connectTime"), "{note}");
    // A pool added live: a Service asking for one of its addresses gets it.
    c.create_service(
        "shop",
        "db",
        json!({"spec": {"loadBalancerIP": "198.51.100.5"}}),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(c.ingress("shop", "db").is_empty());
    create(
        &c,
        "ipaddresspools",
        "manual",
        json!({"addresses": ["198.51.100.0/28"], "autoAssign": false}),
    )
    .await
    .unwrap();
    assert_eq!(c.wait_ingress("shop", "db", 1, T).await, ["198.51.100.5"]);
    // A change that converts to an invalid configuration (overlapping
    // pools) is reported and not applied: nothing moves.
    let before = (c.ingress("shop", "web"), c.ingress("shop", "db"));
    replace(
        &c,
        "ipaddresspools",
        "manual",
        json!({"addresses": ["192.0.2.8/29"], "autoAssign": false}),
    )
    .await;
    let note = c.wait_event(NS, "manual", "ConfigInvalid", T).await;
    assert!(note.contains("fix the MetalLB objects"), "{note}");
    ctl.wait_metric("ferrolb_controller_config_stale", &[], 1.0, T)
        .await;
    assert_eq!((c.ingress("shop", "web"), c.ingress("shop", "db")), before);
    // Fixed: applied again.
    replace(
        &c,
        "ipaddresspools",
        "manual",
        json!({"addresses": ["198.51.100.0/28"], "autoAssign": false}),
    )
    .await;
    ctl.wait_metric("ferrolb_controller_config_stale", &[], 0.0, T)
        .await;
    assert_eq!((c.ingress("shop", "web"), c.ingress("shop", "db")), before);
    assert!(
        !ctl.log().contains("ConfigMap"),
        "the ConfigMap is not read in this mode:\n{}",
        ctl.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_speaker_forwards_with_metallbs_configuration() {
    let port = ferrolb_tests::speaker::free_port();
    let _b = backend::http(
        "pod-1",
        format!("127.0.43.1:{port}").parse().unwrap(),
        backend::Proxy::None,
    )
    .await
    .unwrap();
    let c = with_pool("loopback", "127.0.42.0/28").await;
    c.create_node("node1", "127.0.0.1", json!({}));
    c.create_speaker_pod("node1", "127.0.0.1");
    let _ctl = Controller::start(&c, "ctl", &["--config-source", "metallb"]).await;
    let speaker = KubeSpeaker::start(&c, "node1", &["--config-source", "metallb"]).await;
    let vport = ferrolb_tests::speaker::free_port();
    c.create_service("shop", "web", Cluster::forwarded(vport, port))
        .await;
    c.set_endpoints("shop", "web", port, &[("127.0.43.1", "node1", true)]);
    let ip = c.wait_ingress("shop", "web", 1, T).await;
    assert!(ip[0].starts_with("127.0.42."), "{ip:?}");
    let vip: std::net::SocketAddr = format!("{}:{vport}", ip[0]).parse().unwrap();
    until("the pod answering through the VIP", async || {
        client::get(vip, "/", None)
            .await
            .is_ok_and(|b| b.trim() == "pod-1")
    })
    .await;
    assert!(
        speaker.log().contains("MetalLB's configuration converted"),
        "{}",
        speaker.log()
    );
}

/// A standby in MetalLB mode takes over from a killed leader with the same
/// configuration, and moves nothing the old leader assigned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_in_metallb_mode_takes_over_with_metallbs_pools() {
    let c = with_pool("prod", "192.0.2.0/28").await;
    let mut first = Controller::start(&c, "ctl-a", &["--config-source", "metallb"]).await;
    let second = Controller::spawn(&c, "ctl-b", &["--config-source", "metallb"]);
    c.create_service("shop", "web", json!({})).await;
    let web = c.wait_ingress("shop", "web", 1, T).await;
    first.kill("KILL");
    second.wait_leading(Duration::from_secs(20)).await;
    c.create_service("shop", "db", json!({})).await;
    let db = c.wait_ingress("shop", "db", 1, T).await;
    assert!(db[0].starts_with("192.0.2.") && db != web, "{db:?} {web:?}");
    assert_eq!(c.ingress("shop", "web"), web);
}
