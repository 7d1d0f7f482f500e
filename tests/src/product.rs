//! The whole product in network namespaces: the fake API server (in the
//! test's own namespace, joined to the lab's bridge on a 198.18.X.0/24 of the
//! lab's own), the real
//! `ferrolb-controller`, and three `ferrolb-speaker kubernetes` nodes on a
//! bridge. In layer 2 mode a client sits on the bridge; in BGP mode BIRD 2 is
//! the router on the bridge (installing multipath routes in its kernel) and
//! the client sits behind it.
//!
//! Each node runs an "application" on 0.0.0.0:8080 answering with the node's
//! name (what kube-proxy would deliver to for an announce-only Service) and a
//! "pod" on NODE_IP:9000 answering `NODE-pod` (the endpoints).

use crate::cluster::{Cluster, Controller};
use crate::netns::Lab;
use crate::{binary, routers};
use ferrolb_kubefake::Options;
use serde_json::json;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The nodes and their addresses.
pub const NODES: [(&str, &str); 3] = [
    ("node1", "192.0.2.11"),
    ("node2", "192.0.2.12"),
    ("node3", "192.0.2.13"),
];

/// How long the waits below wait.
pub const T: Duration = Duration::from_secs(15);

/// How VIPs reach the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The client is on the nodes' segment; an owner answers ARP.
    Layer2,
    /// BIRD on the segment learns the VIPs; the client is behind it.
    Bgp,
}

/// A running product.
pub struct Product {
    /// The namespaces.
    pub lab: Lab,
    /// The API server and the test's client.
    pub cluster: Cluster,
    speakers: Vec<(String, u32)>,
    _controller: Controller,
    /// BIRD's control socket (BGP mode).
    bird: Option<PathBuf>,
}

impl Product {
    /// Builds the lab, starts the API server, the controller and a speaker per node.
    pub async fn start(mode: Mode) -> Product {
        let mut lab = Lab::new(if mode == Mode::Layer2 { "pl" } else { "pb" });
        match mode {
            Mode::Layer2 => {
                lab.add("client");
                lab.attach("client", &["192.0.2.1/24"]);
            }
            Mode::Bgp => {
                routers::router_with_client(&mut lab);
            }
        }
        for (n, ip) in NODES {
            lab.add(n);
            lab.attach(n, &[&format!("{ip}/24")]);
            if mode == Mode::Bgp {
                lab.exec_ok(
                    n,
                    &["ip", "route", "add", "198.51.100.0/24", "via", "192.0.2.1"],
                );
            }
        }
        // The nodes reach the API server over the bridge, on a subnet of this lab's own.
        let net = format!("198.18.{}", lab.unique_octet());
        lab.attach_test_host(&[&format!("{net}.1/24")]);
        for (i, (n, _)) in NODES.iter().enumerate() {
            let addr = format!("{net}.{}/24", 11 + i);
            lab.exec_ok(n, &["ip", "addr", "add", &addr, "dev", "eth0"]);
        }
        let cluster = Cluster::start_with(Options {
            bind: format!("{net}.1").parse().unwrap(),
            ..Options::default()
        })
        .await;
        let bird = match mode {
            Mode::Layer2 => {
                cluster
                    .set_config("pools: [{name: vips, addresses: [192.0.2.100-192.0.2.110]}]\nl2: [{pools: [vips], interfaces: [eth0]}]\n")
                    .await;
                None
            }
            Mode::Bgp => {
                cluster
                    .set_config(
                        "pools: [{name: vips, addresses: [203.0.113.0/28]}]
bgp:
  peers: [{name: bird, address: 192.0.2.1, asn: 65000, myAsn: 65001, holdTime: 9s}]
",
                    )
                    .await;
                let dir = cluster.dir.clone();
                let mut conf = format!(
                    "router id 192.0.2.1;\nlog \"{}/bird.log\" all;\nprotocol device {{ }}\nprotocol kernel {{\n  ipv4 {{ export all; }};\n  merge paths yes;\n}}\n",
                    dir.display()
                );
                for (n, ip) in NODES {
                    conf.push_str(&format!(
                        "protocol bgp {n} {{\n  local 192.0.2.1 as 65000;\n  neighbor {ip} as 65001;\n  hold time 9;\n  passive on;\n  ipv4 {{ import all; export none; }};\n}}\n"
                    ));
                }
                std::fs::write(dir.join("bird.conf"), conf).unwrap();
                Some(routers::bird(&mut lab, "router", &dir))
            }
        };
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
            bird,
        };
        for (n, _) in NODES {
            p.start_speaker(n);
        }
        // Ready: the first lists are in and the configuration applies. What a
        // speaker finds advertised when it gets there is its baseline.
        for (n, _) in NODES {
            let t = Instant::now();
            while !p.lab.http_status(n, 7473, "/readyz").contains(" 200") {
                assert!(t.elapsed() < T, "speaker on {n} not ready\n{}", p.logs());
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        p
    }

    /// Creates Service `shop/NAME` (port `port` to the pods' 9000, with `extra`
    /// merged in) whose endpoints are `endpoints` (ip, node, ready); returns
    /// its address once the controller assigned it.
    pub async fn service(
        &self,
        name: &str,
        port: u16,
        extra: serde_json::Value,
        endpoints: &[(&str, &str, bool)],
    ) -> String {
        let base = json!({"spec": {"ports": [{"name": "http", "port": port, "targetPort": 9000}]}});
        self.cluster
            .create_service("shop", name, crate::cluster::merged(base, &extra))
            .await;
        self.cluster.set_endpoints("shop", name, 9000, endpoints);
        self.cluster.wait_ingress("shop", name, 1, T).await[0].clone()
    }

    /// Starts the speaker of `node` in its namespace.
    pub fn start_speaker(&mut self, node: &str) {
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

    /// The process id of `node`'s speaker.
    pub fn speaker_pid(&self, node: &str) -> Option<u32> {
        self.speakers
            .iter()
            .find(|(n, _)| n == node)
            .map(|(_, p)| *p)
    }

    /// Signals the speaker of `node` (`KILL`, `TERM`) and waits for it to end.
    pub fn stop_speaker(&mut self, node: &str, signal: &str) {
        let i = self
            .speakers
            .iter()
            .position(|(n, _)| n == node)
            .expect("running");
        let (_, pid) = self.speakers.remove(i);
        self.lab.kill(pid, signal);
    }

    /// Every speaker's log (and BIRD's).
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for (n, _) in NODES {
            out += &format!(
                "--- {n}\n{}\n",
                std::fs::read_to_string(self.cluster.dir.join(format!("{n}-speaker.log")))
                    .unwrap_or_default()
            );
        }
        if self.bird.is_some() {
            out += &format!(
                "--- bird\n{}\n",
                std::fs::read_to_string(self.cluster.dir.join("bird.log")).unwrap_or_default()
            );
        }
        out
    }

    /// BIRD's next hops for `vip`/32 (BGP mode).
    pub fn next_hops(&self, vip: &str) -> Vec<String> {
        let sock = self.bird.as_ref().expect("BGP mode");
        let text = routers::birdc(
            &self.lab,
            "router",
            sock,
            &format!("show route for {vip}/32"),
        );
        let mut hops: Vec<String> = text
            .split_whitespace()
            .collect::<Vec<_>>()
            .windows(2)
            .filter(|w| w[0] == "via")
            .map(|w| w[1].to_string())
            .collect();
        hops.sort();
        hops.dedup();
        hops
    }

    /// Waits until BIRD's next hops for `vip` are exactly `want`.
    pub fn wait_next_hops(&self, vip: &str, want: &[&str]) -> Duration {
        let t = Instant::now();
        loop {
            let hops = self.next_hops(vip);
            if hops == want {
                return t.elapsed();
            }
            assert!(
                t.elapsed() < T,
                "next hops of {vip}: {hops:?}, wanted {want:?}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// One GET from the client; the body names who answered.
    pub fn get(&self, url: &str, timeout: f64) -> Option<String> {
        self.lab.http_get("client", url, timeout)
    }

    /// Waits until a GET of `url` is answered and `ok` accepts the answer; returns it.
    pub fn wait_get(&self, what: &str, url: &str, ok: impl Fn(&str) -> bool) -> String {
        let t = Instant::now();
        loop {
            // A short timeout keeps the measurement of a failover close to the truth.
            if let Some(body) = self.get(url, 0.2) {
                if ok(&body) {
                    return body;
                }
            }
            assert!(
                t.elapsed() < T,
                "{what}: {url} not answered as expected within {T:?}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
