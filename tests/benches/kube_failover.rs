//! Layer 2 failover in Kubernetes mode (prints figures; asserts nothing
//! about time): the whole product of `ferrolb_tests::product` (fake API
//! server, controller, three `ferrolb-speaker kubernetes` nodes in network
//! namespaces, a client), one announce-only Service, then N times: the
//! prober in the client's namespace SIGKILLs the owner's speaker and times
//! the first request another node serves, and the new owner's first
//! announcement; the killed speaker's Pod is replaced between trials.
//! Everything runs from `deploy/` through the lab's kubelet (`ferrolb_tests::pods`).
//!
//!   tests/bench/kube_failover.sh              # 20 trials (root)
//!   tests/bench/kube_failover.sh --trials 5

use ferrolb_tests::l2lab::{probe_failover, FailoverStats};
use ferrolb_tests::product::{Mode, Product};
use ferrolb_tests::{require, Need};
use serde_json::json;
use std::time::Duration;

async fn run(trials: usize) {
    let mut p = Product::start(Mode::Layer2).await;
    let all = [
        ("192.0.2.11", "node1", true),
        ("192.0.2.12", "node2", true),
        ("192.0.2.13", "node3", true),
    ];
    let vip = p.service("web", 8080, json!({}), &all).await;
    let url = format!("http://{vip}:8080/");
    let mut stats = FailoverStats::default();
    for _ in 0..trials {
        let owner = p.wait_get("the VIP", &url, |b| b.starts_with("node"));
        // The node is down: its kubelet does not restart the speaker.
        p.hold_speaker(&owner, true);
        let pid = p.speaker_pid(&owner).expect("owner runs a speaker");
        stats.add(&probe_failover(&p.lab, pid, &vip, 8080, &owner));
        // The killed container would come back under the kubelet's growing
        // back-off; a fresh Pod from the DaemonSet keeps trials alike.
        p.replace_speaker(&owner);
        // Let the restarted node settle (it must not take the VIP back).
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    println!("layer 2 failover in Kubernetes mode: {trials} trials; 3 speakers, heartbeat 100 ms, dead after 400 ms");
    stats.report("Kubernetes mode, owner SIGKILL", trials);
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let trials: usize = args
        .iter()
        .position(|a| a == "--trials")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    if !require(
        "kube_failover benchmark",
        &[
            Need::Root,
            Need::Program("ip"),
            Need::Program("python3"),
            Need::StaticImages,
        ],
    ) {
        return;
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(run(trials));
}
