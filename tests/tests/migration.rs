//! The migration from MetalLB in layer 2 mode, as docs/migrate-from-metallb.md
//! tells it, end to end in the product lab: deploy/ as shipped (the lab
//! kubelet runs its Pods with their privileges and filesystem), a process
//! playing MetalLB's speaker on every node beside ferrolb's (memberlist's
//! port bound, ARP answered for the VIP from its elected node), kube-proxy's
//! acceptance of the VIP on every node. The hand-over is per pool: MetalLB
//! stops announcing the pool, then ferrolb's l2 entry selects the nodes.
//! Checked from the client: every 50 ms a broadcast ARP request, and never
//! two MACs answering it; a client GETting the VIP over and over, and the
//! longest a request took (the interruption) printed.
//! Needs root; skips loudly without it (a failure under CI's no-skip rule).

use ferrolb_tests::metallb_fake::{accept_vip, ArpMonitor, FakeBgpSpeaker, FakeSpeaker};
use ferrolb_tests::product::{Mode, Product, NODES, T};
use ferrolb_tests::{require, Need};
use serde_json::json;
use std::time::{Duration, Instant};

const ALL: [(&str, &str, bool); 3] = ferrolb_tests::product::ALL_READY;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layer_2_pool_moves_from_metallb_with_one_announcer_at_every_moment() {
    if !require(
        "a_layer_2_pool_moves_from_metallb_with_one_announcer_at_every_moment",
        &[
            Need::Root,
            Need::Program("ip"),
            Need::Program("python3"),
            Need::StaticImages,
        ],
    ) {
        return;
    }
    // Runbook steps 1-4 as installed: the converted configuration, whose l2
    // entry selects no node yet (the label is the hand-over switch), the
    // controller, and the speakers on every node.
    let mut p = Product::start_with(
        Mode::Layer2,
        Some("l2: [{pools: [vips], interfaces: [eth0], nodeSelector: {matchLabels: {ferrolb.io/l2: handed-over}}}]"),
    )
    .await;
    // MetalLB's speakers were there all along; they still bind memberlist's
    // port beside ferrolb's heartbeats (UDP 7947) on every node.
    let dir = p.cluster.dir.clone();
    let metallb: Vec<FakeSpeaker> = NODES
        .iter()
        .map(|(n, _)| FakeSpeaker::start(&mut p.lab, n, &dir))
        .collect();
    let vip = p.service("web", 8080, json!({}), &ALL).await;
    for (n, _) in NODES {
        accept_vip(&p.lab, n, &vip);
    }
    // MetalLB's elected owner for this VIP answers ARP; ferrolb's speakers
    // run but no node is selected yet, so they answer nothing.
    metallb[1].announce(&[&vip]);
    let url = format!("http://{vip}:8080/");
    assert_eq!(
        p.wait_get("MetalLB's owner", &url, |b| b.starts_with("node")),
        "node2"
    );
    let macs: std::collections::BTreeMap<String, String> = NODES
        .iter()
        .map(|(n, _)| (n.to_string(), p.lab.mac(n)))
        .collect();
    let mac = |n: &str| macs[n].clone();
    let monitor = ArpMonitor::start(&mut p.lab, "client", "192.0.2.1", &vip, &dir);
    let probe = p.probe(&vip, 8080);
    tokio::time::sleep(Duration::from_secs(1)).await;

    // The hand-over of the pool: MetalLB's L2Advertisement for it goes (its
    // owner stops answering; the client's cache still points at node2,
    // which kube-proxy lets accept the VIP)...
    metallb[1].announce(&[]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // ...then ferrolb's entry selects the nodes: its owner announces.
    for (n, _) in NODES {
        p.label_node(n, "ferrolb.io/l2", "handed-over").await;
    }
    let t = Instant::now();
    let owner = loop {
        let answers = ferrolb_tests::l2lab::arp_answers(&p.lab, "client", "192.0.2.1", &vip);
        if let [one] = answers.iter().collect::<Vec<_>>()[..] {
            if let Some((n, _)) = NODES.iter().find(|(n, _)| mac(n) == *one) {
                break n.to_string();
            }
        }
        assert!(
            t.elapsed() < T,
            "no ferrolb owner answers for {vip}: {answers:?}\n{}",
            p.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    p.wait_get("ferrolb's owner", &url, |b| b == owner);
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Step 5: MetalLB is removed.
    for m in &metallb {
        m.stop();
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let report = probe.finish();
    let rounds = monitor.finish();

    // Never two announcers: every round had at most one MAC answering.
    let doubled: Vec<_> = rounds.iter().filter(|(_, m)| m.len() > 1).collect();
    assert!(
        doubled.is_empty(),
        "two MACs answered ARP for {vip} at once: {doubled:?}\nMetalLB's stand-ins: {:?}\n{}",
        metallb.iter().map(|m| m.output()).collect::<Vec<_>>(),
        p.logs()
    );
    // Before: MetalLB's node2; after: ferrolb's owner; nobody else ever.
    let allowed = [mac("node2"), mac(&owner)];
    assert!(
        rounds
            .iter()
            .all(|(_, m)| m.iter().all(|x| allowed.contains(x))),
        "{rounds:?}"
    );
    assert_eq!(
        rounds.first().map(|r| r.1.clone()),
        Some(vec![mac("node2")])
    );
    assert_eq!(rounds.last().map(|r| r.1.clone()), Some(vec![mac(&owner)]));
    let silent = rounds.iter().filter(|(_, m)| m.is_empty()).count();
    // From MetalLB's last answer to ferrolb's first, as the client asked.
    let last_metallb = rounds
        .iter()
        .rev()
        .find(|(_, m)| *m == [mac("node2")] && owner != "node2")
        .map(|r| r.0);
    let first_ferrolb = rounds
        .iter()
        .find(|(t, m)| *m == [mac(&owner)] && last_metallb.is_none_or(|l| *t > l))
        .map(|r| r.0);
    assert_eq!(report.failed, 0, "requests failed: {report:?}");
    assert_eq!(
        report.answered_by.last().map(String::as_str),
        Some(owner.as_str())
    );
    eprintln!(
        "hand-over of {vip} from MetalLB (node2) to ferrolb ({owner}): {} requests, longest {:.0} ms (median {:.1} ms), {} retried, 0 failed; ARP asked every 50 ms: {} rounds, never two answers, {} unanswered; MetalLB's last answer to ferrolb's first: {}",
        report.requests,
        report.worst_ms,
        report.median_ms,
        report.retried,
        rounds.len(),
        silent,
        match (last_metallb, first_ferrolb) {
            (Some(l), Some(f)) => format!("{:.0} ms", (f - l) * 1000.0),
            _ => "the same MAC (ferrolb elected node2 too)".into(),
        }
    );
    // ferrolb's speakers stayed up beside MetalLB's throughout.
    p.wait_ready();
}

/// BGP mode, node by node: on each node in turn MetalLB's session goes
/// (its BGPPeer's nodeSelector no longer selects the node; ExaBGP plays
/// MetalLB's speaker) and ferrolb's comes (the node gets the label its
/// peer's nodeSelector asks for). The router keeps at least two next hops
/// for the VIP at every step (ECMP over the nodes still advertising), and a
/// client behind it GETs the VIP throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bgp_moves_from_metallb_node_by_node_without_losing_the_vip() {
    if !require(
        "bgp_moves_from_metallb_node_by_node_without_losing_the_vip",
        &[
            Need::Root,
            Need::Program("ip"),
            Need::Program("python3"),
            Need::Program("bird"),
            Need::Program("birdc"),
            Need::Program("exabgp"),
            Need::StaticImages,
        ],
    ) {
        return;
    }
    let mut p = Product::start_with(
        Mode::Bgp,
        Some(
            "bgp:
  peers: [{name: bird, address: 192.0.2.1, asn: 65000, myAsn: 65001, holdTime: 9s, nodeSelector: {matchLabels: {ferrolb.io/bgp: handed-over}}}]
",
        ),
    )
    .await;
    let vip = p.service("web", 8080, json!({}), &ALL).await;
    let dir = p.cluster.dir.clone();
    for (n, _) in NODES {
        accept_vip(&p.lab, n, &vip);
    }
    let metallb: Vec<FakeBgpSpeaker> = NODES
        .iter()
        .map(|(n, ip)| FakeBgpSpeaker::start(&mut p.lab, n, ip, &[&vip], &dir))
        .collect();
    let all: Vec<&str> = NODES.iter().map(|(_, ip)| *ip).collect();
    p.wait_next_hops(&vip, &all);
    let url = format!("http://{vip}:8080/");
    p.wait_get("the VIP through MetalLB's routes", &url, |b| {
        b.starts_with("node")
    });
    let probe = p.probe(&vip, 8080);
    let mut fewest = all.len();
    let mut steps = Vec::new();
    for (i, (n, ip)) in NODES.iter().enumerate() {
        // MetalLB leaves the node: its route goes, the others carry the VIP.
        metallb[i].stop();
        let others: Vec<&str> = all.iter().copied().filter(|a| a != ip).collect();
        let gone = p.wait_next_hops(&vip, &others);
        fewest = fewest.min(p.next_hops(&vip).len());
        // ferrolb's peer selects the node: its session comes up and advertises.
        p.label_node(n, "ferrolb.io/bgp", "handed-over").await;
        let back = p.wait_next_hops(&vip, &all);
        steps.push(format!(
            "{n}: MetalLB's route gone in {} ms, ferrolb's up {} ms after the label",
            gone.as_millis(),
            back.as_millis()
        ));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let report = probe.finish();
    assert!(
        fewest >= 2,
        "at one step only {fewest} next hop(s) were left"
    );
    assert_eq!(
        report.failed,
        0,
        "requests failed: {report:?}\nMetalLB's stand-ins: {:?}\n{}",
        metallb.iter().map(|m| m.output()).collect::<Vec<_>>(),
        p.logs()
    );
    eprintln!(
        "BGP hand-over of {vip}, node by node: {}; client: {} requests, longest {:.0} ms (median {:.1} ms), {} retried, 0 failed; never fewer than {fewest} next hops",
        steps.join("; "),
        report.requests,
        report.worst_ms,
        report.median_ms,
        report.retried
    );
    p.wait_ready();
}
