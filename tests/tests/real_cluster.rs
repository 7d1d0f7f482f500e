//! The controller binary against a real cluster, when `KUBECONFIG` points at
//! one; otherwise the test skips loudly (and is listed as skipped).
//!
//! It touches nothing ferrolb may already run: its own ConfigMap, Lease and
//! loadBalancerClass (`ferrolb.io/test-<pid>`) in `FERROLB_TEST_NAMESPACE`
//! (default `default`), with the pool `FERROLB_TEST_POOL` (default
//! 198.51.100.0/28, a documentation range: only the status is checked), and
//! deletes what it created.
//!
//!   KUBECONFIG=~/.kube/config cargo test -p ferrolb-tests --test real_cluster

use ferrolb_tests::cluster::Controller;
use ferrolb_tests::real_cluster;
use ferrolb_tests::speaker::unique_dir;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::json;
use std::time::{Duration, Instant};

async fn ingress(api: &Api<Service>, name: &str) -> Vec<String> {
    api.get(name)
        .await
        .ok()
        .and_then(|s| s.status?.load_balancer?.ingress)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|i| i.ip)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_assigns_and_keeps_an_address_on_a_real_cluster() {
    let Some(kubeconfig) = real_cluster("real-cluster controller suite") else {
        return;
    };
    let ns = std::env::var("FERROLB_TEST_NAMESPACE").unwrap_or_else(|_| "default".into());
    let pool = std::env::var("FERROLB_TEST_POOL").unwrap_or_else(|_| "198.51.100.0/28".into());
    let id = format!("test-{}", std::process::id());
    let class = format!("ferrolb.io/{id}");
    let client = kube::Client::try_default()
        .await
        .expect("a client from KUBECONFIG");
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let svcs: Api<Service> = Api::namespaced(client.clone(), &ns);
    let cm: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": format!("ferrolb-{id}")},
        "data": {"config.yaml": format!("pools:\n  - name: test\n    addresses: [{pool}]\n")}
    }))
    .unwrap();
    cms.create(&PostParams::default(), &cm)
        .await
        .expect("create the test ConfigMap");
    let svc: Service = serde_json::from_value(json!({
        "metadata": {"name": format!("ferrolb-{id}")},
        "spec": {"type": "LoadBalancer", "loadBalancerClass": class, "ports": [{"port": 80}], "selector": {"app": "none"}}
    }))
    .unwrap();
    svcs.create(&PostParams::default(), &svc)
        .await
        .expect("create the test Service");
    let name = format!("ferrolb-{id}");
    let dir = unique_dir();
    let args = [
        "--namespace",
        &ns,
        "--config-map",
        &name,
        "--lease-name",
        &name,
        "--load-balancer-class",
        &class,
        "--ignore-classless",
    ];
    let mut ctl = Controller::spawn_with(&kubeconfig, &dir, "real-1", &args);
    let deadline = Instant::now() + Duration::from_secs(60);
    let first = loop {
        let ips = ingress(&svcs, &name).await;
        if !ips.is_empty() {
            break ips;
        }
        assert!(
            Instant::now() < deadline,
            "no address within 60 s:\n{}",
            ctl.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    ctl.kill("TERM");
    let ctl2 = Controller::spawn_with(&kubeconfig, &dir, "real-2", &args);
    ctl2.wait_leading(Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        ingress(&svcs, &name).await,
        first,
        "the restart moved the address"
    );
    drop(ctl2);
    let _ = svcs.delete(&name, &DeleteParams::default()).await;
    let _ = cms.delete(&name, &DeleteParams::default()).await;
    let _ = Api::<Lease>::namespaced(client, &ns)
        .delete(&name, &DeleteParams::default())
        .await;
}
