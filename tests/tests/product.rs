//! The whole product end to end in network namespaces (see
//! `ferrolb_tests::product`): layer 2 mode with a client on the segment, and
//! BGP mode with BIRD as the router and the client behind it. Needs root
//! (and `bird2` for BGP); skips loudly without them (a failure in CI).

use ferrolb_tests::product::{Mode, Product, T};
use ferrolb_tests::{require, Need};
use serde_json::json;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

const ALL: [(&str, &str, bool); 3] = [
    ("192.0.2.11", "node1", true),
    ("192.0.2.12", "node2", true),
    ("192.0.2.13", "node3", true),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_apply_to_reachable_vip_with_failover_in_layer_2() {
    if !require(
        "the product end to end in layer 2 mode",
        &[Need::Root, Need::Program("ip"), Need::Program("python3")],
    ) {
        return;
    }
    let mut p = Product::start(Mode::Layer2).await;

    // Announce-only (ipMode VIP): the owner's node answers for the VIP.
    p.cluster
        .create_service(
            "shop",
            "web",
            json!({"spec": {"ports": [{"name": "http", "port": 8080, "targetPort": 9000}]}}),
        )
        .await;
    p.cluster.set_endpoints("shop", "web", 9000, &ALL);
    let vip = p.cluster.wait_ingress("shop", "web", 1, T).await[0].clone();
    let url = format!("http://{vip}:8080/");
    let owner = p.wait_get("the announce-only VIP", &url, |b| b.starts_with("node"));
    eprintln!("{vip} is answered by {owner}");

    // Forwarded (ipMode Proxy): the owner's forwarder spreads requests over the pods.
    p.cluster
        .create_service(
            "shop",
            "api",
            json!({"metadata": {"annotations": {"ferrolb.io/forward": "true"}},
                   "spec": {"ports": [{"name": "http", "port": 8081, "targetPort": 9000}]}}),
        )
        .await;
    p.cluster.set_endpoints("shop", "api", 9000, &ALL);
    let vip2 = p.cluster.wait_ingress("shop", "api", 1, T).await[0].clone();
    let url2 = format!("http://{vip2}:8081/");
    let mut pods = BTreeSet::new();
    let t = Instant::now();
    while pods.len() < 3 {
        if let Some(b) = p.get(&url2, 0.5) {
            assert!(b.ends_with("-pod"), "{b}");
            pods.insert(b);
        }
        assert!(
            t.elapsed() < T,
            "pods reached through the forwarder: {pods:?}\n{}",
            p.logs()
        );
    }

    // The owner of the first VIP dies (speaker killed, link cut): another node takes over.
    p.stop_speaker(&owner, "KILL");
    p.lab.cut(&owner);
    let t = Instant::now();
    let next = p.wait_get("failover", &url, |b| b.starts_with("node") && b != owner);
    let took = t.elapsed();
    eprintln!("node {owner} died; {next} answers after {took:?}");
    assert!(
        took < Duration::from_secs(5),
        "failover took {took:?}\n{}",
        p.logs()
    );
    // Each owner said so on the Service, once.
    let announced: Vec<String> = p
        .cluster
        .events_for("shop", "web")
        .into_iter()
        .filter(|(_, r, _)| r == "IPAnnounced")
        .map(|(_, _, n)| n)
        .collect();
    for node in [&owner, &next] {
        let want = format!("node {node} announces {vip} as its layer 2 owner");
        assert_eq!(
            announced.iter().filter(|a| a.starts_with(&want)).count(),
            1,
            "{node}: {announced:?}"
        );
    }
    // The status view on the new owner says the same.
    let bin = ferrolb_tests::binary("ferrolb-speaker");
    let status = String::from_utf8_lossy(
        &p.lab
            .exec_ok(&next, &[bin.to_str().unwrap(), "status"])
            .stdout,
    )
    .to_string();
    eprintln!("ferrolb-speaker status on {next}:\n{status}");
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("shop/web") && l.contains(&format!("{vip} (layer 2 owner)"))),
        "{status}"
    );
    let metrics = p.lab.metrics_on(&next, 7473);
    assert!(
        metrics.contains(&format!(
            "ferrolb_vip_announced{{service=\"shop/web\",vip=\"{vip}\",mode=\"l2\"}} 1"
        )),
        "{metrics}"
    );
    p.lab.uncut(&owner);
    p.start_speaker(&owner);

    // externalTrafficPolicy Local: only a node with a ready endpoint announces.
    p.cluster
        .create_service(
            "shop",
            "local",
            json!({"spec": {"externalTrafficPolicy": "Local", "ports": [{"name": "http", "port": 8080, "targetPort": 9000}]}}),
        )
        .await;
    p.cluster.set_endpoints(
        "shop",
        "local",
        9000,
        &[
            ("192.0.2.12", "node2", true),
            ("192.0.2.13", "node3", false),
        ],
    );
    let vip3 = p.cluster.wait_ingress("shop", "local", 1, T).await[0].clone();
    let url3 = format!("http://{vip3}:8080/");
    p.wait_get("the Local service on node2", &url3, |b| b == "node2");
    // node2's endpoint stops being ready and node3's becomes ready: node3 takes the VIP.
    p.cluster.set_endpoints(
        "shop",
        "local",
        9000,
        &[
            ("192.0.2.12", "node2", false),
            ("192.0.2.13", "node3", true),
        ],
    );
    p.wait_get("the Local service moving to node3", &url3, |b| b == "node3");
    assert!(!p.logs().contains("panicked"), "{}", p.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_apply_to_reachable_vip_in_bgp_mode_against_bird() {
    if !require(
        "the product end to end in BGP mode",
        &[
            Need::Root,
            Need::Program("ip"),
            Need::Program("python3"),
            Need::Program("bird"),
            Need::Program("birdc"),
        ],
    ) {
        return;
    }
    let mut p = Product::start(Mode::Bgp).await;

    // Every eligible node advertises the VIP: BIRD holds three paths and the
    // client behind it is served by all three nodes.
    p.cluster
        .create_service(
            "shop",
            "web",
            json!({"spec": {"ports": [{"name": "http", "port": 8080, "targetPort": 9000}]}}),
        )
        .await;
    p.cluster.set_endpoints("shop", "web", 9000, &ALL);
    let vip = p.cluster.wait_ingress("shop", "web", 1, T).await[0].clone();
    p.wait_next_hops(&vip, &["192.0.2.11", "192.0.2.12", "192.0.2.13"]);
    let url = format!("http://{vip}:8080/");
    // Every advertising node said so on the Service.
    let announced = p
        .cluster
        .events_for("shop", "web")
        .into_iter()
        .filter(|(_, r, n)| r == "IPAnnounced" && n.contains("over BGP to bird"))
        .count();
    assert_eq!(announced, 3, "{:?}", p.cluster.events_for("shop", "web"));
    let mut nodes = BTreeSet::new();
    let t = Instant::now();
    while nodes.len() < 3 {
        if let Some(b) = p.get(&url, 0.5) {
            nodes.insert(b);
        }
        assert!(
            t.elapsed() < T,
            "nodes reached through ECMP: {nodes:?}\n{}",
            p.logs()
        );
    }

    // A forwarded Service behind the same router.
    p.cluster
        .create_service(
            "shop",
            "api",
            json!({"metadata": {"annotations": {"ferrolb.io/forward": "true"}},
                   "spec": {"ports": [{"name": "http", "port": 8081, "targetPort": 9000}]}}),
        )
        .await;
    p.cluster.set_endpoints("shop", "api", 9000, &ALL);
    let vip2 = p.cluster.wait_ingress("shop", "api", 1, T).await[0].clone();
    p.wait_get(
        "a pod through the forwarder",
        &format!("http://{vip2}:8081/"),
        |b| b.ends_with("-pod"),
    );

    // A speaker stops (SIGTERM: Cease): its path is withdrawn, traffic goes on through the others.
    p.stop_speaker("node1", "TERM");
    let took = p.wait_next_hops(&vip, &["192.0.2.12", "192.0.2.13"]);
    eprintln!("node1's path withdrawn {took:?} after SIGTERM");
    p.wait_get("the VIP through the remaining nodes", &url, |b| {
        b == "node2" || b == "node3"
    });

    // externalTrafficPolicy Local: only nodes with a ready endpoint advertise.
    p.cluster
        .create_service(
            "shop",
            "local",
            json!({"spec": {"externalTrafficPolicy": "Local", "ports": [{"name": "http", "port": 8080, "targetPort": 9000}]}}),
        )
        .await;
    p.cluster.set_endpoints(
        "shop",
        "local",
        9000,
        &[
            ("192.0.2.12", "node2", true),
            ("192.0.2.13", "node3", false),
        ],
    );
    let vip3 = p.cluster.wait_ingress("shop", "local", 1, T).await[0].clone();
    p.wait_next_hops(&vip3, &["192.0.2.12"]);
    p.cluster.set_endpoints(
        "shop",
        "local",
        9000,
        &[
            ("192.0.2.12", "node2", false),
            ("192.0.2.13", "node3", true),
        ],
    );
    let took = p.wait_next_hops(&vip3, &["192.0.2.13"]);
    eprintln!("the Local service's path moved from node2 to node3 in {took:?}");
    p.wait_get(
        "the Local service on node3",
        &format!("http://{vip3}:8080/"),
        |b| b == "node3",
    );
    assert!(!p.logs().contains("panicked"), "{}", p.logs());
}
