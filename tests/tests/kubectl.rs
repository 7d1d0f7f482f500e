//! The troubleshooting commands of `docs/troubleshooting.md`, run with the
//! real `kubectl` against the fake API server while the real controller
//! works: what an operator types must show what the docs say it shows.
//! `KUBECTL` names another kubectl binary (e.g. Debian's 1.20 next to a
//! newer one); the default is the one on PATH.

use ferrolb_tests::cluster::{Cluster, Controller, SYSTEM_NS};
use ferrolb_tests::{require, Need};
use serde_json::{json, Value};
use std::process::Command;
use std::time::Duration;

const T: Duration = Duration::from_secs(10);

fn program() -> String {
    std::env::var("KUBECTL").unwrap_or_else(|_| "kubectl".to_string())
}

/// `kubectl ARGS` with the test cluster's kubeconfig: its stdout, after asserting success.
fn kubectl(c: &Cluster, args: &[&str]) -> String {
    let out = Command::new(program())
        .arg("--kubeconfig")
        .arg(&c.kubeconfig)
        .args(args)
        .output()
        .expect("run kubectl");
    let (o, e) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(out.status.success(), "kubectl {args:?} failed: {e}\n{o}");
    o
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_troubleshooting_commands_work_against_the_fake_server() {
    if !require("kubectl troubleshooting", &[Need::Program("kubectl")]) {
        return;
    }
    let c = Cluster::start().await;
    c.set_config("pools:\n  - name: small\n    addresses: [192.0.2.10/31]\n")
        .await;
    let _ctl = Controller::start(&c, "ctl-1", &[]).await;
    c.create_service("shop", "web", json!({})).await;
    let ip = c.wait_ingress("shop", "web", 1, T).await.remove(0);
    c.create_service(
        "shop",
        "db",
        json!({"spec": {"loadBalancerIP": "203.0.113.9"}}),
    )
    .await;
    c.wait_event("shop", "db", "AllocationFailed", T).await;
    c.set_endpoints("shop", "web", 8080, &[("10.1.0.5", "node-a", true)]);

    let version: Value = serde_json::from_str(&kubectl(&c, &["version", "-o", "json"])).unwrap();
    assert_eq!(
        version["serverVersion"]["gitVersion"], "v1.33.0-ferrolb-kubefake",
        "discovery: {version}"
    );

    // The Service list (names only: the fake serves no server-side Table).
    let list = kubectl(&c, &["-n", "shop", "get", "svc"]);
    assert!(list.contains("web") && list.contains("db"), "{list}");

    // "A VIP nobody answers for": the status and the endpoints.
    let ingress = kubectl(
        &c,
        &[
            "-n",
            "shop",
            "get",
            "svc",
            "web",
            "-o",
            "jsonpath={.status.loadBalancer.ingress}",
        ],
    );
    assert!(ingress.contains(&format!("\"ip\":\"{ip}\"")), "{ingress}");
    let slices = kubectl(
        &c,
        &[
            "-n",
            "shop",
            "get",
            "endpointslices",
            "-l",
            "kubernetes.io/service-name=web",
            "-o",
            "jsonpath={.items[*].endpoints[*].addresses[*]}",
        ],
    );
    assert_eq!(slices.trim(), "10.1.0.5");

    // "A Service stays <pending>": describe shows the controller's Events,
    // written through events.k8s.io and read by kubectl through core v1.
    let described = kubectl(&c, &["-n", "shop", "describe", "svc", "db"]);
    assert!(
        described.contains("AllocationFailed")
            && described.contains("203.0.113.9 is outside every pool")
            && described.contains("ferrolb-controller"),
        "{described}"
    );
    let events = kubectl(
        &c,
        &[
            "-n",
            "shop",
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=db",
            "-o",
            "jsonpath={range .items[*]}{.involvedObject.name} {.reason}{\"\\n\"}{end}",
        ],
    );
    let lines: Vec<&str> = events.lines().collect();
    assert!(
        !lines.is_empty() && lines.iter().all(|l| l.starts_with("db ")),
        "only db's Events: {events}"
    );
    assert!(lines.contains(&"db AllocationFailed"), "{events}");

    // "No Event at all": who leads.
    let holder = kubectl(
        &c,
        &[
            "-n",
            SYSTEM_NS,
            "get",
            "lease",
            "ferrolb-controller",
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ],
    );
    assert_eq!(holder, "ctl-1");
}
