//! Rolling restarts of every speaker, as `kubectl rollout restart
//! ds/ferrolb-speaker` does them on a real cluster: the lab's DaemonSet
//! controller deletes one speaker Pod at a time through the API (it gets a
//! `deletionTimestamp`), the lab's kubelet sends SIGTERM, waits for the
//! exit and removes the Pod, and the next node goes once the new Pod is
//! Ready. A client keeps making new connections to the VIP meanwhile (with
//! retries), and the interruption it sees is reported.
//!
//! Make-before-break: a speaker whose Pod is being deleted hands its layer 2
//! VIPs to their next owners (and withdraws its BGP routes) at once, while
//! it still answers and forwards; the others see the deletion in the API and
//! take over before it stops.

use ferrolb_tests::product::{Mode, ProbeReport, Product};
use ferrolb_tests::{require, Need};
use serde_json::json;
use std::time::Duration;

const ALL: [(&str, &str, bool); 3] = [
    ("192.0.2.11", "node1", true),
    ("192.0.2.12", "node2", true),
    ("192.0.2.13", "node3", true),
];

fn needs(mode: Mode) -> Vec<Need> {
    let mut n = vec![
        Need::Root,
        Need::Program("ip"),
        Need::Program("python3"),
        Need::StaticImages,
    ];
    if mode == Mode::Bgp {
        n.extend([Need::Program("bird"), Need::Program("birdc")]);
    }
    n
}

fn report(what: &str, r: &ProbeReport) {
    let mut who = r.answered_by.clone();
    who.sort();
    who.dedup();
    eprintln!(
        "{what}: {} requests, {} retried, {} failed; median {:.1} ms, worst {:.1} ms (the interruption with retries); answered by {who:?}, {} changes of who answers",
        r.requests,
        r.retried,
        r.failed,
        r.median_ms,
        r.worst_ms,
        r.answered_by.len().saturating_sub(1)
    );
}

/// Rolls every speaker with a client on a forwarded Service (the speakers'
/// forwarders are the data path, so a speaker that stops too early shows),
/// then, as the reference, restarts each speaker container with a SIGTERM
/// no Pod deletion announces (a container restart: the others notice only
/// when its heartbeats stop).
async fn roll(mode: Mode) {
    let mut p = Product::start(mode).await;
    let forward = json!({"metadata": {"annotations": {"ferrolb.io/forward": "true"}}});
    let vip = p.service("api", 8081, forward, &ALL).await;
    let url = format!("http://{vip}:8081/");
    let first = p.wait_get("the VIP", &url, |b| b.ends_with("-pod"));
    eprintln!("{vip} first answered by {first}");

    let probe = p.probe(&vip, 8081);
    std::thread::sleep(Duration::from_millis(500));
    let steps = p
        .kubelet
        .rolling_update("ferrolb-speaker", ferrolb_tests::product::T);
    std::thread::sleep(Duration::from_millis(1500));
    let rolled = probe.finish();
    for r in &steps {
        eprintln!(
            "{}: {} -> {}, Ready {:.1} s after the deletion",
            r.node,
            r.old,
            r.new,
            r.ready.duration_since(r.asked).as_secs_f64()
        );
    }
    report(
        &format!("rolling restart of 3 speakers ({mode:?})"),
        &rolled,
    );
    assert_eq!(steps.len(), 3, "{}", p.logs());
    for r in &steps {
        assert!(
            r.old_logs.contains("this speaker's Pod is being deleted"),
            "{}'s speaker did not see its Pod's deletion:\n{}",
            r.node,
            r.old_logs
        );
        assert!(!r.old_logs.contains("panicked"), "{}", r.old_logs);
    }
    assert_eq!(
        rolled.failed,
        0,
        "a request failed all its retries during the rolling restart\n{}",
        p.logs()
    );
    assert!(
        rolled.requests > 50,
        "the probe made only {} requests",
        rolled.requests
    );

    // Reference: a SIGTERM without a Pod deletion, to every speaker in turn.
    let probe = p.probe(&vip, 8081);
    std::thread::sleep(Duration::from_millis(500));
    for (node, _) in ferrolb_tests::product::NODES {
        p.stop_speaker(node, "TERM");
        std::thread::sleep(Duration::from_millis(300));
        p.wait_ready();
    }
    std::thread::sleep(Duration::from_millis(1500));
    let unannounced = probe.finish();
    report(
        &format!("reference: each speaker restarted by a SIGTERM alone ({mode:?})"),
        &unannounced,
    );
    eprintln!(
        "worst request during the rolling restart {:.1} ms vs {:.1} ms without the deletion's handover (ratio {:.2})",
        rolled.worst_ms,
        unannounced.worst_ms,
        rolled.worst_ms / unannounced.worst_ms.max(0.001)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_of_every_speaker_keeps_the_vip_answering_in_layer_2() {
    if !require("a rolling restart in layer 2 mode", &needs(Mode::Layer2)) {
        return;
    }
    roll(Mode::Layer2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_of_every_speaker_keeps_the_vip_answering_in_bgp_mode() {
    if !require("a rolling restart in BGP mode", &needs(Mode::Bgp)) {
        return;
    }
    roll(Mode::Bgp).await;
}
