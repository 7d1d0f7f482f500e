//! The controller against the fake API server, through the real kube
//! client: allocation, stability across restarts and leader changes,
//! requests, sharing, dual stack, classes, releases, config errors, Events.

use ferrolb_tests::cluster::{Cluster, Controller};
use serde_json::json;
use std::time::Duration;

const T: Duration = Duration::from_secs(10);

const CONFIG: &str = "
pools:
  - name: general
    addresses: [192.0.2.0/24]
  - name: v6
    addresses: [2001:db8::/120]
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smoke() {
    let c = Cluster::start().await;
    c.set_config(CONFIG).await;
    let _ctl = Controller::start(&c, "one", &[]).await;
    c.create_service("shop", "web", json!({})).await;
    let ips = c.wait_ingress("shop", "web", 1, T).await;
    assert_eq!(ips, ["192.0.2.0"]);
}
