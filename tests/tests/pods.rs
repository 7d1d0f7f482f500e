//! The lab's kubelet and container runtime are as strict as a real node:
//! what would fail in a cluster fails here too. Each case changes one thing
//! of `deploy/`'s speaker DaemonSet and runs it through `ferrolb_tests::pods`.
//! Needs root and the static binaries; skips loudly without them (a failure in CI).

use ferrolb_tests::cluster::Cluster;
use ferrolb_tests::netns::Lab;
use ferrolb_tests::pods::{Kubelet, Placement};
use ferrolb_tests::{deploy, require, Need};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const NEEDS: &[Need] = &[Need::Root, Need::Program("ip"), Need::StaticImages];

/// The speaker DaemonSet of `deploy/` (and its ConfigMap), changed by `edit`.
fn speaker_with(edit: impl Fn(&mut Value)) -> Vec<Value> {
    let mut objects = deploy::with_config(
        deploy::render(),
        "pools: [{name: p, addresses: [192.0.2.100-192.0.2.110]}]\nl2: [{pools: [p], interfaces: [eth0]}]\n",
    );
    objects.retain(|o| o["kind"] != "Deployment");
    for o in &mut objects {
        if o["kind"] == "DaemonSet" {
            edit(&mut o["spec"]["template"]["spec"]);
        }
    }
    objects
}

/// One node on a bridge with the API server; returns the lab, the cluster, the placement.
async fn one_node(tag: &str) -> (Lab, Cluster, Placement) {
    let mut lab = Lab::new(tag);
    lab.add("n1");
    lab.attach("n1", &["192.0.2.11/24"]);
    let net = format!("198.18.{}", lab.unique_octet());
    lab.attach_test_host(&[&format!("{net}.1/24")]);
    lab.exec_ok(
        "n1",
        &["ip", "addr", "add", &format!("{net}.11/24"), "dev", "eth0"],
    );
    let cluster = Cluster::start_with(ferrolb_kubefake::Options {
        bind: format!("{net}.1").parse().unwrap(),
        ..Default::default()
    })
    .await;
    cluster.create_node("n1", "192.0.2.11", json!({}));
    let p = Placement {
        node: "n1".into(),
        host_ip: "192.0.2.11".into(),
        node_ns: "n1".into(),
        pod_net: None,
    };
    (lab, cluster, p)
}

/// Waits until `cond` holds on the kubelet; panics with its state after 20 s.
fn wait(k: &Kubelet, what: &str, cond: impl Fn(&Kubelet) -> bool) {
    let t = Instant::now();
    while !cond(k) {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "{what}:\n{}\n{}",
            k.describe(),
            k.all_logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Without `privileged`, the init container meets a read-only /proc/sys,
/// as in every real Pod: it fails and is retried, the speaker never starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unprivileged_init_container_cannot_write_proc_sys() {
    if !require("the kubelet's read-only /proc/sys", NEEDS) {
        return;
    }
    let (lab, cluster, node) = one_node("pa").await;
    let objects = speaker_with(|spec| {
        spec["initContainers"][0]["securityContext"] = json!({"privileged": false});
    });
    let k = Kubelet::start(&lab, &cluster.server, &cluster.dir, &objects, &[], &[node]);
    wait(&k, "the init container fails", |k| {
        k.pods()[0].restarts >= 1
    });
    let pod = &k.pods()[0];
    assert!(
        pod.containers[0].pid.is_none(),
        "the speaker must not start"
    );
    let logs = k.logs(&pod.name);
    assert!(logs.contains("Read-only file system"), "{logs}");
    assert!(
        logs.contains("net.ipv4.conf.all.arp_ignore is 0"),
        "the error says what is missing:\n{logs}"
    );
}

/// `runAsNonRoot` with an image that runs as root: the kubelet refuses to
/// create the container (CreateContainerConfigError), whatever the binary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_as_non_root_refuses_a_root_image() {
    if !require("the kubelet's runAsNonRoot check", NEEDS) {
        return;
    }
    let (lab, cluster, node) = one_node("pb").await;
    let objects = speaker_with(|spec| {
        spec["containers"][0]["securityContext"]["runAsNonRoot"] = json!(true);
    });
    let k = Kubelet::start(&lab, &cluster.server, &cluster.dir, &objects, &[], &[node]);
    wait(&k, "the container is refused", |k| {
        k.describe().contains("CreateContainerConfigError")
    });
    assert!(k.pods()[0].containers[0].pid.is_none());
}

/// Without NET_RAW the speaker cannot open its packet sockets: it exits,
/// the kubelet restarts it, and it never becomes Ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_speaker_gets_only_the_capabilities_the_manifest_adds() {
    if !require("the runtime's capability sets", NEEDS) {
        return;
    }
    let (lab, cluster, node) = one_node("pc").await;
    let objects = speaker_with(|spec| {
        spec["containers"][0]["securityContext"]["capabilities"]["add"] =
            json!(["NET_ADMIN", "NET_BIND_SERVICE"]);
    });
    let k = Kubelet::start(&lab, &cluster.server, &cluster.dir, &objects, &[], &[node]);
    wait(&k, "the speaker exits without NET_RAW", |k| {
        k.pods()[0].restarts >= 1
    });
    let pod = &k.pods()[0];
    assert!(pod.ready_after.is_none(), "{}", k.describe());
    let logs = k.logs(&pod.name);
    assert!(
        logs.contains("Operation not permitted") || logs.contains("permission"),
        "{logs}"
    );
}
