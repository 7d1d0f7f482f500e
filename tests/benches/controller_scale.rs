//! Controller measurements against the fake API server (prints figures;
//! asserts nothing about time).
//!
//!   tests/bench/controller_scale.sh                      # 10,000 services, 1,000 creates
//!   tests/bench/controller_scale.sh --n 2000 --creates 200
//!
//! (1) N Services exist (seeded straight into the store) when the
//! controller starts: time until every one has an address. (2) Reference:
//! the API round trip the controller cannot avoid, done by this process:
//! create a Service and write its status. (3) One Service at a time is
//! created through the API: time until its status holds an address, as
//! seen by a watcher of the store. (4) SIGTERM and a new controller: time
//! from its start until it leads and has restored every assignment, and
//! whether any address moved. (5) The controller's RSS.

use ferrolb_kubefake::resource::by_name;
use ferrolb_kubefake::store::{Change, ChangeKind};
use ferrolb_kubefake::Options;
use ferrolb_tests::cluster::{Cluster, Controller};
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferrolb_tests::bench_arg as arg;

fn pct(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

fn service(name: &str) -> Value {
    json!({"metadata": {"name": name}, "spec": {"type": "LoadBalancer", "ports": [{"port": 80, "protocol": "TCP"}], "selector": {"app": name}}})
}

fn statuses(c: &Cluster) -> BTreeMap<String, Value> {
    c.server
        .list("services", "")
        .into_iter()
        .map(|s| {
            (
                format!(
                    "{}/{}",
                    s["metadata"]["namespace"].as_str().unwrap_or(""),
                    s["metadata"]["name"].as_str().unwrap_or("")
                ),
                s.pointer("/status/loadBalancer/ingress")
                    .cloned()
                    .unwrap_or(Value::Null),
            )
        })
        .collect()
}

fn has_ingress(c: &Change, ns: &str, name: &str) -> bool {
    c.kind != ChangeKind::Deleted
        && c.namespace == ns
        && c.object.pointer("/metadata/name").and_then(Value::as_str) == Some(name)
        && c.object
            .pointer("/status/loadBalancer/ingress/0/ip")
            .is_some()
}

async fn run(n: usize, creates: usize) {
    let c = Cluster::start_with(Options {
        history: 500_000,
        ..Options::default()
    })
    .await;
    c.set_config("pools:\n  - name: big\n    addresses: [10.0.0.0/14]\n")
        .await;
    let svcs = by_name("services", "").expect("services are served");
    // As on a real cluster, the namespaces exist before their Services.
    for ns in (0..50)
        .map(|i| format!("ns-{i}"))
        .chain(["reference".into(), "bench".into()])
    {
        c.server.create_namespace(&ns);
    }
    {
        let mut store = c.server.store();
        for i in 0..n {
            let ns = format!("ns-{}", i % 50);
            store
                .create(svcs, Some(&ns), service(&format!("seed-{i:05}")), "bench")
                .expect("seed");
        }
    }
    println!("controller benchmark: {n} existing Services, {creates} creates (fake API server on loopback, release build)");

    // (1) Initial allocation of everything.
    let t0 = Instant::now();
    let ctl = Controller::start(&c, "bench-1", &[]).await;
    ctl.wait_metric(
        "ferrolb_controller_services_allocated",
        &[],
        n as f64,
        Duration::from_secs(300),
    )
    .await;
    let initial = t0.elapsed();
    println!(
        "  start + allocate {n} Services:           {:>8.2} s ({:.0} Services/s, 2 writes each)",
        initial.as_secs_f64(),
        n as f64 / initial.as_secs_f64()
    );

    // (2) Reference: what the API itself costs for one Service (create, then a status write).
    let api: Api<Service> = Api::namespaced(c.client.clone(), "reference");
    let mut reference = Vec::new();
    for i in 0..creates.min(500) {
        let name = format!("ref-{i:05}");
        // Another load balancer's class: the controller leaves it alone, so
        // only the API is measured (a status write needs type LoadBalancer).
        let mut body = service(&name);
        body["spec"]["loadBalancerClass"] = json!("other.example/lb");
        let svc: Service = serde_json::from_value(body).unwrap();
        let t = Instant::now();
        api.create(&PostParams::default(), &svc).await.unwrap();
        api.patch_status(&name, &PatchParams::default(), &Patch::Merge(json!({"status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.1", "ipMode": "VIP"}]}}})))
            .await
            .unwrap();
        reference.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    reference.sort_by(f64::total_cmp);

    // (3) Create to status, one at a time.
    let (_, mut rx) = {
        let store = c.server.store();
        let rv = store.resource_version();
        store.watch_from(rv).expect("fresh watch")
    };
    let api: Api<Service> = Api::namespaced(c.client.clone(), "bench");
    let mut lat = Vec::new();
    for i in 0..creates {
        let name = format!("new-{i:05}");
        let svc: Service = serde_json::from_value(service(&name)).unwrap();
        let t = Instant::now();
        api.create(&PostParams::default(), &svc).await.unwrap();
        loop {
            let ch: Arc<Change> = tokio::time::timeout(Duration::from_secs(30), rx.recv())
                .await
                .expect("status written within 30 s")
                .expect("store watch");
            if has_ingress(&ch, "bench", &name) {
                break;
            }
        }
        lat.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let slowest = lat
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map(|(i, _)| i)
        .unwrap_or(0);
    lat.sort_by(f64::total_cmp);
    println!(
        "  reference: create + status write by hand: p50 {:>6.2} ms  p99 {:>6.2} ms  ({} samples)",
        pct(&reference, 0.5),
        pct(&reference, 0.99),
        reference.len()
    );
    println!(
        "  create -> status with address:           p50 {:>6.2} ms  p99 {:>6.2} ms  max {:.2} ms (create #{slowest})  ({creates} creates; target p99 < 50 ms)",
        pct(&lat, 0.5),
        pct(&lat, 0.99),
        lat[lat.len() - 1]
    );
    println!(
        "  Events the controller could not publish: {}",
        ctl.metric("ferrolb_controller_events_dropped_total", &[])
            .await
    );
    println!(
        "  ratio to the reference:                  p50 {:.2}x  p99 {:.2}x",
        pct(&lat, 0.5) / pct(&reference, 0.5),
        pct(&lat, 0.99) / pct(&reference, 0.99)
    );
    let rss_before = ctl.rss_kib();

    // (4) Restart.
    let before = statuses(&c);
    let mut ctl = ctl;
    ctl.kill("TERM");
    c.server.clear_requests();
    let t0 = Instant::now();
    let ctl2 = Controller::start(&c, "bench-2", &[]).await;
    let ready = t0.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = statuses(&c);
    let moved = before
        .iter()
        .filter(|(k, v)| after.get(*k) != Some(v))
        .count();
    let writes = c
        .server
        .requests()
        .iter()
        .filter(|r| r.resource == "services" && matches!(r.verb, "patch" | "update"))
        .count();
    let total = n + creates + reference.len();
    println!(
        "  restart (SIGTERM, new process) to ready:  {:>8.2} s for {total} Services (target < 5 s); addresses moved: {moved}; Service writes after restart: {writes}",
        ready.as_secs_f64()
    );
    println!(
        "  controller RSS: {:.1} MiB after the creates, {:.1} MiB after a restart with {total} Services (target < 100 MB)",
        rss_before as f64 / 1024.0,
        ctl2.rss_kib() as f64 / 1024.0
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n = arg(&args, "--n", 10_000);
    let creates = arg(&args, "--creates", 1000).max(1);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(run(n, creates));
}
