//! The whole product in layer 2 mode: the fake API server (in the test's own
//! namespace, joined to the lab's bridge), `ferrolb-controller`, and three
//! `ferrolb-speaker kubernetes` nodes in network namespaces on a bridge with
//! a client. Needs root; skips loudly without it (a failure in CI).
//!
//! Each node runs an "application" on 0.0.0.0:8080 answering with the node's
//! name (what kube-proxy would deliver to for an announce-only Service) and
//! a "pod" on NODE_IP:9000 answering `NODE-pod` (the endpoints).

use ferrolb_kubefake::Options;
use ferrolb_tests::cluster::{Cluster, Controller};
use ferrolb_tests::netns::Lab;
use ferrolb_tests::{binary, require, Need};
use serde_json::json;
use std::time::{Duration, Instant};

const NODES: [(&str, &str); 3] = [
    ("node1", "192.0.2.11"),
    ("node2", "192.0.2.12"),
    ("node3", "192.0.2.13"),
];
const T: Duration = Duration::from_secs(15);

struct Product {
    lab: Lab,
    cluster: Cluster,
    speakers: Vec<(String, u32)>,
    _controller: Controller,
}

impl Product {
    async fn start() -> Product {
        let mut lab = Lab::new("pk");
        lab.add("client");
        lab.attach("client", &["192.0.2.1/24"]);
        for (n, ip) in NODES {
            lab.add(n);
            lab.attach(n, &[&format!("{ip}/24")]);
        }
        lab.attach_test_host(&["198.18.0.1/24"]);
        for (n, _) in NODES {
            // The nodes reach the API server over the bridge.
            lab.exec_ok(
                n,
                &[
                    "ip",
                    "addr",
                    "add",
                    &format!("198.18.0.{}/24", 10 + n[4..].parse::<u8>().unwrap()),
                    "dev",
                    "eth0",
                ],
            );
        }
        let cluster = Cluster::start_with(Options {
            bind: "198.18.0.1".parse().unwrap(),
            ..Options::default()
        })
        .await;
        cluster
            .set_config("pools: [{name: vips, addresses: [192.0.2.100-192.0.2.110]}]\nl2: [{pools: [vips], interfaces: [eth0]}]\n")
            .await;
        let echo = binary("ferrolb-echo");
        for (n, ip) in NODES {
            cluster.create_node(n, ip, json!({}));
            cluster.create_speaker_pod(n, ip);
            let log = cluster.dir.join(format!("{n}-echo.log"));
            lab.spawn(
                n,
                &[
                    echo.to_str().unwrap(),
                    "--http",
                    &format!("{n}@0.0.0.0:8080"),
                    "--http",
                    &format!("{n}-pod@{ip}:9000"),
                ],
                &log,
            );
        }
        let controller = Controller::start(&cluster, "ctl", &[]).await;
        let mut p = Product {
            lab,
            cluster,
            speakers: Vec::new(),
            _controller: controller,
        };
        for (n, _) in NODES {
            p.start_speaker(n);
        }
        p
    }

    fn start_speaker(&mut self, node: &str) {
        let bin = binary("ferrolb-speaker");
        let kc = self.cluster.kubeconfig.clone();
        let log = self.cluster.dir.join(format!("{node}-speaker.log"));
        let pid = self.lab.spawn(
            node,
            &[
                bin.to_str().unwrap(),
                "kubernetes",
                "--kubeconfig",
                kc.to_str().unwrap(),
                "--node",
                node,
                "--log-level",
                "debug",
            ],
            &log,
        );
        self.speakers.push((node.to_string(), pid));
    }

    fn kill_speaker(&mut self, node: &str) {
        let i = self
            .speakers
            .iter()
            .position(|(n, _)| n == node)
            .expect("running");
        let (_, pid) = self.speakers.remove(i);
        self.lab.kill(pid, "KILL");
    }

    fn logs(&self) -> String {
        let mut out = String::new();
        for (n, _) in NODES {
            out += &format!(
                "--- {n}\n{}\n",
                std::fs::read_to_string(self.cluster.dir.join(format!("{n}-speaker.log")))
                    .unwrap_or_default()
            );
        }
        out
    }

    /// One GET from the client; the body names who answered.
    fn get(&self, url: &str, timeout: f64) -> Option<String> {
        let code = "import sys,urllib.request\ntry:\n print(urllib.request.urlopen(sys.argv[1], timeout=float(sys.argv[2])).read().decode().strip())\nexcept Exception as e:\n sys.exit(1)";
        let out = self.lab.exec(
            "client",
            &["python3", "-c", code, url, &timeout.to_string()],
        );
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Waits until a GET of `url` is answered and `ok` accepts the answer; returns it.
    fn wait_get(&self, what: &str, url: &str, ok: impl Fn(&str) -> bool) -> String {
        let t = Instant::now();
        loop {
            if let Some(body) = self.get(url, 0.5) {
                if ok(&body) {
                    return body;
                }
            }
            assert!(
                t.elapsed() < T,
                "{what}: {url} not answered as expected within {T:?}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_apply_to_reachable_vip_with_failover_in_layer_2() {
    if !require(
        "the product end to end in layer 2 mode",
        &[Need::Root, Need::Program("ip"), Need::Program("python3")],
    ) {
        return;
    }
    let mut p = Product::start().await;
    let all = [
        ("192.0.2.11", "node1", true),
        ("192.0.2.12", "node2", true),
        ("192.0.2.13", "node3", true),
    ];

    // Announce-only (ipMode VIP): the owner's node answers for the VIP.
    p.cluster
        .create_service(
            "shop",
            "web",
            json!({"spec": {"ports": [{"name": "http", "port": 8080, "targetPort": 9000}]}}),
        )
        .await;
    p.cluster.set_endpoints("shop", "web", 9000, &all);
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
    p.cluster.set_endpoints("shop", "api", 9000, &all);
    let vip2 = p.cluster.wait_ingress("shop", "api", 1, T).await[0].clone();
    let url2 = format!("http://{vip2}:8081/");
    let mut pods = std::collections::BTreeSet::new();
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
    p.kill_speaker(&owner);
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
