//! The whole product in network namespaces: the fake API server (in the
//! test's own namespace, joined to the lab's bridge on a 198.18.X.0/24 of the
//! lab's own), the real
//! `ferrolb-controller`, and three `ferrolb-speaker kubernetes` nodes on a
//! bridge. In layer 2 mode a client sits on the bridge; in BGP mode BIRD 2 is
//! the router on the bridge (installing multipath routes in its kernel) and
//! the client sits behind it.
//!
//! Everything of ferrolb runs as `deploy/` ships it, through the lab's
//! kubelet ([`crate::pods`]): the manifests rendered, the test's
//! configuration in the ConfigMap, the controller Deployment's two replicas
//! in Pods of their own, the speaker DaemonSet's Pod on each node with its
//! init container, in-cluster credentials and the shipped RBAC.
//!
//! Each node runs an "application" on 0.0.0.0:8080 answering with the node's
//! name (what kube-proxy would deliver to for an announce-only Service) and a
//! "pod" on NODE_IP:9000 answering `NODE-pod` (the endpoints).

use crate::cluster::Cluster;
use crate::netns::Lab;
use crate::pods::{Kubelet, Placement};
use crate::prometheus::Prometheus;
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

/// The layer 2 heartbeat key of the lab's `ferrolb-memberlist` Secret.
pub const MEMBER_KEY: &str = "5f0d8c1e9a7b3f26c4d1e8a0b7f3c6d2e9a1b4c7d0e3f6a9b2c5d8e1f4a7b0c3";

/// How long the waits below wait.
pub const T: Duration = Duration::from_secs(15);

/// Endpoints of a Service on every node, all ready (the pods' port 9000).
pub const ALL_READY: [(&str, &str, bool); 3] = [
    ("192.0.2.11", "node1", true),
    ("192.0.2.12", "node2", true),
    ("192.0.2.13", "node3", true),
];

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
    /// The Pods (dropped first: they stop before their namespaces go).
    pub kubelet: Kubelet,
    /// The namespaces.
    pub lab: Lab,
    /// The API server and the test's client.
    pub cluster: Cluster,
    /// BIRD's control socket (BGP mode).
    bird: Option<PathBuf>,
    /// Where the DaemonSets' Pods run.
    pub nodes: Vec<Placement>,
    /// The first three octets of the subnet the nodes reach the API server on.
    net: String,
}

/// How long every Pod may take to be Ready: the slowest readiness probe's
/// `failureThreshold` periods after the first, plus the first period (the
/// kubelet's budget before it would report the Pod unready).
pub fn ready_budget(objects: &[serde_json::Value]) -> Duration {
    let mut worst = 0;
    for o in objects {
        for c in o
            .pointer("/spec/template/spec/containers")
            .and_then(|c| c.as_array())
            .into_iter()
            .flatten()
        {
            let p = &c["readinessProbe"];
            let secs = p["initialDelaySeconds"].as_u64().unwrap_or(0)
                + p["periodSeconds"].as_u64().unwrap_or(10)
                    * (1 + p["failureThreshold"].as_u64().unwrap_or(3));
            worst = worst.max(secs);
        }
    }
    Duration::from_secs(worst)
}

impl Product {
    /// Builds the lab, starts the API server, the controller and a speaker per node.
    pub async fn start(mode: Mode) -> Product {
        Product::start_with(mode, None).await
    }

    /// As [`Product::start`], with `section` instead of the ConfigMap's
    /// default one after `pools:` (layer 2 mode: its `l2:` line; BGP mode:
    /// its `bgp:` section).
    pub async fn start_with(mode: Mode, section: Option<&str>) -> Product {
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
        let (config, bird) = match mode {
            Mode::Layer2 => (
                format!(
                    "pools: [{{name: vips, addresses: [192.0.2.100-192.0.2.110]}}]\n{}\n",
                    section.unwrap_or("l2: [{pools: [vips], interfaces: [eth0]}]")
                ),
                None,
            ),
            Mode::Bgp => {
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
                (
                    format!(
                        "pools: [{{name: vips, addresses: [203.0.113.0/28]}}]\n{}",
                        section.unwrap_or(
                            "bgp:
  peers: [{name: bird, address: 192.0.2.1, asn: 65000, myAsn: 65001, holdTime: 9s}]
"
                        )
                    ),
                    Some(routers::bird(&mut lab, "router", &dir)),
                )
            }
        };
        let echo = binary("ferrolb-echo");
        for (n, ip) in NODES {
            cluster.create_node(n, ip, json!({}));
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
        // The controller's two replicas get Pod networks of their own on the bridge.
        let mut controllers = Vec::new();
        for (i, node) in ["node1", "node2"].iter().enumerate() {
            let short = format!("ctl{i}");
            let ip = format!("{net}.{}", 31 + i);
            lab.add(&short);
            lab.attach(&short, &[&format!("{ip}/24")]);
            controllers.push(Placement {
                node: node.to_string(),
                host_ip: NODES[i].1.to_string(),
                node_ns: node.to_string(),
                pod_net: Some((short, ip)),
            });
        }
        let nodes: Vec<Placement> = NODES
            .iter()
            .map(|(n, ip)| Placement {
                node: n.to_string(),
                host_ip: ip.to_string(),
                node_ns: n.to_string(),
                pod_net: None,
            })
            .collect();
        // The heartbeat keys, as docs/install.md has users create them.
        cluster.create_secret(
            crate::cluster::SYSTEM_NS,
            "ferrolb-memberlist",
            &[("keys", MEMBER_KEY)],
        );
        let objects = crate::deploy::with_config(crate::deploy::render(), &config);
        let kubelet = Kubelet::start(
            &lab,
            &cluster.server,
            &cluster.dir,
            &objects,
            &controllers,
            &nodes,
        );
        let p = Product {
            kubelet,
            lab,
            cluster,
            bird,
            nodes,
            net,
        };
        // Ready: every Pod passed its readiness probe (for a speaker: the
        // first lists are in and the configuration applies; what it finds
        // advertised then is its baseline).
        p.kubelet.wait_ready(ready_budget(&objects));
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

    /// Sets label `key=value` on Node `node`, as `kubectl label node` does.
    pub async fn label_node(&self, node: &str, key: &str, value: &str) {
        let nodes: kube::Api<k8s_openapi::api::core::v1::Node> =
            kube::Api::all(self.cluster.client.clone());
        nodes
            .patch(
                node,
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(json!({"metadata": {"labels": {key: value}}})),
            )
            .await
            .unwrap_or_else(|e| panic!("label node {node}: {e}"));
    }

    /// The speaker Pod on `node`.
    pub fn speaker_pod(&self, node: &str) -> String {
        self.kubelet.pod_on("ferrolb-speaker", node)
    }

    /// The process id of `node`'s speaker container.
    pub fn speaker_pid(&self, node: &str) -> Option<u32> {
        self.kubelet.pid(&self.speaker_pod(node), "speaker")
    }

    /// Signals the speaker container of `node` (`KILL`, `TERM`); the kubelet restarts it.
    pub fn stop_speaker(&mut self, node: &str, signal: &'static str) {
        let pod = self.speaker_pod(node);
        self.kubelet.signal(&pod, "speaker", signal);
    }

    /// Stops the kubelet from restarting `node`'s speaker (`true`: the node
    /// is down), or lets it restart it again.
    pub fn hold_speaker(&self, node: &str, held: bool) {
        self.kubelet.hold(&self.speaker_pod(node), held);
    }

    /// Deletes `node`'s speaker Pod (forced); the DaemonSet's new Pod takes
    /// its place without a restart back-off. Waits until it is Ready.
    pub fn replace_speaker(&mut self, node: &str) {
        let pod = self.speaker_pod(node);
        self.kubelet.replace(&pod);
        self.kubelet.wait_ready(T);
    }

    /// Waits until every Pod is Ready again (after a restart).
    pub fn wait_ready(&self) {
        self.kubelet.wait_ready(T);
    }

    /// Uninstalls as docs/install.md says: `kubectl delete -k deploy/`, then
    /// the cleanup DaemonSet of `deploy/uninstall/` until its Pods run (they
    /// are Running once their init container cleaned the node), then it is
    /// deleted too.
    pub fn uninstall(&mut self) {
        self.kubelet.stop();
        let dir = self.cluster.dir.join("uninstall");
        std::fs::create_dir_all(&dir).unwrap();
        let objects = crate::deploy::render_dir(&crate::deploy::dir().join("uninstall"));
        let mut cleanup = Kubelet::start(
            &self.lab,
            &self.cluster.server,
            &dir,
            &objects,
            &[],
            &self.nodes,
        );
        cleanup.wait_ready(T);
        assert_eq!(cleanup.pods().len(), NODES.len(), "{}", cleanup.describe());
        cleanup.stop();
    }

    /// The local routes ferrolb made on `node` (`ip route show table local proto 249`).
    pub fn local_routes(&self, node: &str) -> Vec<String> {
        let out = self.lab.exec_ok(
            node,
            &["ip", "route", "show", "table", "local", "proto", "249"],
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1).map(str::to_string))
            .collect()
    }

    /// `net.ipv4.conf.all.NAME` on `node`.
    pub fn sysctl(&self, node: &str, name: &str) -> String {
        let out = self.lab.exec_ok(
            node,
            &["cat", &format!("/proc/sys/net/ipv4/conf/all/{name}")],
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Starts a real Prometheus on a host of its own on the segment (it
    /// reaches the speakers on the nodes' addresses and the controllers on
    /// their Pod addresses), scraping as `deploy/monitoring/` says, with the
    /// shipped alert rules; it discovers the Pods in the API now.
    pub async fn start_prometheus(&mut self) -> Prometheus {
        self.lab.add("prom");
        let api = format!("{}.5", self.net);
        self.lab
            .attach("prom", &["192.0.2.5/24", &format!("{api}/24")]);
        let pods = self.api_pods().await;
        let dir = self.cluster.dir.join("prometheus");
        Prometheus::start(
            &mut self.lab,
            "prom",
            format!("{api}:9090").parse().unwrap(),
            &dir,
            &pods,
        )
    }

    /// The Pods in the API server's `ferrolb-system`, as it serves them.
    pub async fn api_pods(&self) -> Vec<serde_json::Value> {
        let api: kube::Api<k8s_openapi::api::core::v1::Pod> =
            kube::Api::namespaced(self.cluster.client.clone(), crate::cluster::SYSTEM_NS);
        api.list(&Default::default())
            .await
            .expect("list Pods")
            .items
            .iter()
            .map(|p| serde_json::to_value(p).unwrap())
            .collect()
    }

    /// The controllers' metrics addresses (their Pod addresses, port 7472).
    pub fn controller_metrics(&self) -> Vec<std::net::SocketAddr> {
        (0..2)
            .map(|i| format!("{}.{}:7472", self.net, 31 + i).parse().unwrap())
            .collect()
    }

    /// Stops BIRD (`birdc down`: it closes its sessions with a Cease and
    /// exits), BGP mode.
    pub fn stop_router(&mut self) {
        let sock = self.bird.clone().expect("BGP mode");
        routers::birdc(&self.lab, "router", &sock, "down");
        let t = Instant::now();
        while sock.exists() && routers::birdc_try(&self.lab, "router", &sock, "show status") {
            assert!(t.elapsed() < T, "BIRD still answers after down");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Starts BIRD again on the same configuration.
    pub fn start_router(&mut self) {
        let dir = self.cluster.dir.clone();
        self.bird = Some(routers::bird(&mut self.lab, "router", &dir));
    }

    /// Every Pod's state and log (and BIRD's).
    pub fn logs(&self) -> String {
        let mut out = format!("{}\n{}\n", self.kubelet.describe(), self.kubelet.all_logs());
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

/// A client that GETs a URL over and over from the client's namespace, a
/// new connection each time (as short requests and health checkers do),
/// retrying a failed request every 10 ms (200 ms timeout each) for up to
/// 2 s, so that the time one request takes is the interruption a client
/// with retries sees; for at most `secs` seconds and 20,000 requests, or
/// until its stop file exists.
/// Writes `[[start, end, attempts, body or null], ...]` (seconds since its
/// start) to its output file.
pub const PROBE: &str = r#"
import http.client, json, os, sys, time
host, port, path, secs, stop, out = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4]), sys.argv[5], sys.argv[6]
rows = []; t0 = time.monotonic()
while time.monotonic() - t0 < secs and not os.path.exists(stop) and len(rows) < 20000:
    start = time.monotonic(); attempts = 0; body = None
    while body is None and (attempts == 0 or time.monotonic() - start < 2.0):
        attempts += 1
        try:
            c = http.client.HTTPConnection(host, port, timeout=0.2)
            c.request("GET", path); body = c.getresponse().read().decode().strip(); c.close()
        except Exception:
            time.sleep(0.01)
    rows.append([round(start - t0, 4), round(time.monotonic() - t0, 4), attempts, body])
    time.sleep(0.01)
with open(out + ".tmp", "w") as f: json.dump(rows, f)
os.rename(out + ".tmp", out)
"#;

/// Asks a lab script to stop (its `stop` file) and returns what it wrote
/// to `out` once it has (within 10 s; `what` names it in the failure).
pub fn stop_and_read(stop: &std::path::Path, out: &std::path::Path, what: &str) -> String {
    std::fs::write(stop, "").unwrap();
    let t = Instant::now();
    while !out.exists() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "{what} never wrote its result"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::fs::read_to_string(out).unwrap()
}

/// What a [`PROBE`] saw.
#[derive(Debug, Clone)]
pub struct ProbeReport {
    /// Requests made.
    pub requests: usize,
    /// Requests that needed more than one attempt.
    pub retried: usize,
    /// Requests that failed every attempt for 2 s.
    pub failed: usize,
    /// The longest time one request took, retries included, in ms: the
    /// interruption a client with retries saw.
    pub worst_ms: f64,
    /// The median request time, in ms.
    pub median_ms: f64,
    /// Who answered, in order, with repeats collapsed.
    pub answered_by: Vec<String>,
}

/// A running [`PROBE`].
pub struct Probe {
    stop: PathBuf,
    out: PathBuf,
}

impl Probe {
    /// Stops it and reads what it saw.
    pub fn finish(self) -> ProbeReport {
        let rows: Vec<(f64, f64, u32, Option<String>)> =
            serde_json::from_str(&stop_and_read(&self.stop, &self.out, "the probe")).unwrap();
        let mut took: Vec<f64> = rows.iter().map(|r| (r.1 - r.0) * 1000.0).collect();
        took.sort_by(f64::total_cmp);
        let mut answered_by: Vec<String> = Vec::new();
        for body in rows.iter().filter_map(|r| r.3.clone()) {
            if answered_by.last() != Some(&body) {
                answered_by.push(body);
            }
        }
        ProbeReport {
            requests: rows.len(),
            retried: rows.iter().filter(|r| r.2 > 1).count(),
            failed: rows.iter().filter(|r| r.3.is_none()).count(),
            worst_ms: took.last().copied().unwrap_or(0.0),
            median_ms: took.get(took.len() / 2).copied().unwrap_or(0.0),
            answered_by,
        }
    }
}

impl Product {
    /// Starts a [`PROBE`] of `http://host:port/` from the client (at most 180 s).
    pub fn probe(&mut self, host: &str, port: u16) -> Probe {
        let id = self.lab.name(&format!("probe-{host}-{port}"));
        let stop = self.cluster.dir.join(format!("{id}.stop"));
        let out = self.cluster.dir.join(format!("{id}.json"));
        let log = self.cluster.dir.join(format!("{id}.log"));
        let _ = std::fs::remove_file(&stop);
        let _ = std::fs::remove_file(&out);
        let port = port.to_string();
        self.lab.spawn(
            "client",
            &[
                "python3",
                "-c",
                PROBE,
                host,
                &port,
                "/",
                "180",
                stop.to_str().unwrap(),
                out.to_str().unwrap(),
            ],
            &log,
        );
        Probe { stop, out }
    }
}
