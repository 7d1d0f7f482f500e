//! The Kubernetes speaker at scale (prints figures; asserts nothing about
//! time or memory):
//!
//!   tests/bench/speaker_scale.sh                                   # 10,000 Services, 100 changes/s for 60 s
//!   tests/bench/speaker_scale.sh --services 2000 --seconds 20 --mode incremental
//!
//! Needs root and `bird2`. The fake API server holds N LoadBalancer
//! Services with an address each and 3 EndpointSlices per Service; three
//! `ferrolb-speaker kubernetes` run in their own network namespaces and
//! peer with BIRD, which logs every route it learns or loses with a
//! millisecond timestamp. Then, for S seconds, R times a second, one
//! Service's only ready endpoint flips (ready, not ready): every speaker
//! must withdraw or re-advertise that Service's /32. Reported per speaker:
//! CPU (% of one core) and RSS during the churn, and p50/p99/max from the
//! EndpointSlice write to BIRD logging the route change from that speaker.
//! Both implementations run from the same build, one after the other: the
//! incremental index (the default) and `--full-recompute` (every Service
//! re-derived from every EndpointSlice on each change, after a 20 ms
//! debounce: how the speaker worked before), with the ratio.

use ferrolb_kubefake::PatchKind;
use ferrolb_tests::cluster::Cluster;
use ferrolb_tests::netns::Lab;
use ferrolb_tests::{require, routers, Need};
use serde_json::json;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const NODES: [(&str, &str); 3] = [
    ("node1", "192.0.2.11"),
    ("node2", "192.0.2.12"),
    ("node3", "192.0.2.13"),
];

struct Args {
    services: u32,
    rate: u32,
    seconds: u32,
    modes: Vec<&'static str>,
}

fn args() -> Args {
    let a: Vec<String> = std::env::args().collect();
    let get = |name: &str| {
        a.iter()
            .position(|x| x == name)
            .and_then(|i| a.get(i + 1))
            .cloned()
    };
    let num = |name: &str, d: u32| get(name).and_then(|v| v.parse().ok()).unwrap_or(d);
    let modes = match get("--mode").as_deref() {
        Some("incremental") => vec!["incremental"],
        Some("full") => vec!["full"],
        _ => vec!["incremental", "full"],
    };
    Args {
        services: num("--services", 10_000).max(10),
        rate: num("--rate", 100).clamp(1, 1000),
        seconds: num("--seconds", 60).clamp(1, 600),
        modes,
    }
}

/// The VIP of Service `i` (inside 100.64.0.0/16, which only the lab routes).
fn vip(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(0x6440_0000u32 + 1 + i)
}

/// One run's figures.
struct Figures {
    mode: &'static str,
    converge: Duration,
    cpu: Vec<f64>,
    rss_mib: Vec<f64>,
    latency: Vec<Vec<Duration>>,
    missed: Vec<usize>,
    changes: usize,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// utime + stime of `pid`, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command (which may hold spaces) start after ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15; `rest` starts at field 3.
    (ticks(11) + ticks(12)) / 100.0
}

fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

/// "2026-12-02 13:00:00.123" (UTC) as milliseconds since the epoch.
fn bird_time(date: &str, time: &str) -> Option<u64> {
    let d: Vec<i64> = date.split('-').filter_map(|x| x.parse().ok()).collect();
    let (hms, ms) = time.split_once('.')?;
    let t: Vec<i64> = hms.split(':').filter_map(|x| x.parse().ok()).collect();
    if d.len() != 3 || t.len() != 3 {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let (y, m, day) = (if d[1] <= 2 { d[0] - 1 } else { d[0] }, d[1], d[2]);
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + t[0] * 3600 + t[1] * 60 + t[2];
    Some(secs as u64 * 1000 + ms.parse::<u64>().ok()?)
}

/// Route events in BIRD's log: (ms since epoch, protocol, added?, prefix).
fn bird_events(log: &str) -> Vec<(u64, String, bool, String)> {
    let mut out = Vec::new();
    for line in log.lines() {
        let w: Vec<&str> = line.split_whitespace().collect();
        if w.len() < 6 {
            continue;
        }
        let Some(at) = bird_time(w[0], w[1]) else {
            continue;
        };
        let Some(pos) = w.iter().position(|x| *x == ">") else {
            continue;
        };
        let proto = w[pos - 1].split('.').next().unwrap_or("").to_string();
        let added = match w.get(pos + 1) {
            Some(&"added") => true,
            Some(&"removed") => false,
            _ => continue,
        };
        let Some(prefix) = w[pos + 1..].iter().find(|x| x.contains('/')) else {
            continue;
        };
        out.push((at, proto, added, prefix.to_string()));
    }
    out
}

fn count_routes(lab: &Lab, sock: &std::path::Path) -> usize {
    let text = routers::birdc(lab, "router", sock, "show route count");
    text.split_whitespace()
        .zip(text.split_whitespace().skip(1))
        .find(|(_, w)| w.starts_with("of"))
        .and_then(|(c, _)| c.parse().ok())
        .unwrap_or(0)
}

fn slice_body(i: u32, part: &str, ready: bool) -> serde_json::Value {
    // Slice "a" holds the endpoint that flips; "b" and "c" hold endpoints
    // that are not ready (a rollout in progress), so the Service's route
    // depends on "a" alone.
    let (ip, node, r) = match part {
        "a" => (
            format!("10.{}.{}.10", i / 256 % 256, i % 256),
            "node1",
            ready,
        ),
        "b" => (
            format!("10.{}.{}.11", i / 256 % 256, i % 256),
            "node2",
            false,
        ),
        _ => (
            format!("10.{}.{}.12", i / 256 % 256, i % 256),
            "node3",
            false,
        ),
    };
    json!({"metadata": {"name": format!("s{i}-{part}"), "labels": {"kubernetes.io/service-name": format!("s{i}")}},
           "addressType": "IPv4",
           "endpoints": [{"addresses": [ip], "nodeName": node, "conditions": {"ready": r}}],
           "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]})
}

async fn run(a: &Args, mode: &'static str) -> Figures {
    let n = a.services;
    let mut lab = Lab::new("sc");
    lab.add("router");
    lab.attach("router", &["192.0.2.1/24"]);
    for (node, ip) in NODES {
        lab.add(node);
        lab.attach(node, &[&format!("{ip}/24")]);
    }
    let net = format!("198.18.{}", lab.unique_octet());
    lab.attach_test_host(&[&format!("{net}.1/24")]);
    for (i, (node, _)) in NODES.iter().enumerate() {
        lab.exec_ok(
            node,
            &[
                "ip",
                "addr",
                "add",
                &format!("{net}.{}/24", 11 + i),
                "dev",
                "eth0",
            ],
        );
    }
    let cluster = Cluster::start_with(ferrolb_kubefake::Options {
        bind: format!("{net}.1").parse().unwrap(),
        ..Default::default()
    })
    .await;
    let dir = cluster.dir.clone();
    let bird_log = dir.join("bird.log");
    let mut conf = format!(
        "router id 192.0.2.1;\ntimeformat log iso long ms;\nlog \"{}\" all;\nprotocol device {{ }}\n",
        bird_log.display()
    );
    for (node, ip) in NODES {
        conf.push_str(&format!(
            "protocol bgp {node} {{\n  local 192.0.2.1 as 65000;\n  neighbor {ip} as 65001;\n  hold time 90;\n  passive on;\n  debug {{ routes }};\n  ipv4 {{ import all; export none; }};\n}}\n"
        ));
    }
    std::fs::write(dir.join("bird.conf"), conf).unwrap();
    let sock = routers::bird(&mut lab, "router", &dir);
    cluster
        .set_config(
            "pools: [{name: vips, addresses: [100.64.0.0/16]}]\nbgp:\n  peers: [{name: bird, address: 192.0.2.1, asn: 65000, myAsn: 65001, holdTime: 90s}]\n",
        )
        .await;
    for (node, ip) in NODES {
        cluster.create_node(node, ip, json!({}));
        cluster.create_speaker_pod(node, ip);
    }
    // The objects, written straight into the store (as the controller and
    // the EndpointSlice controller would have).
    let t = Instant::now();
    {
        let services = ferrolb_kubefake::resource::by_name("services", "").unwrap();
        let slices =
            ferrolb_kubefake::resource::by_name("endpointslices", "discovery.k8s.io").unwrap();
        cluster.server.create_namespace("scale");
        let mut store = cluster.server.store();
        for i in 0..n {
            let name = format!("s{i}");
            store
                .create(
                    services,
                    Some("scale"),
                    json!({"metadata": {"name": name, "annotations": {"ferrolb.io/allocated-from-pool": "vips"}},
                           "spec": {"type": "LoadBalancer", "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]}}),
                    "bench",
                )
                .expect("create Service");
            store
                .patch(
                    services,
                    Some("scale"),
                    &name,
                    true,
                    PatchKind::Merge,
                    json!({"status": {"loadBalancer": {"ingress": [{"ip": vip(i).to_string()}]}}}),
                    "ferrolb-controller",
                )
                .expect("Service status");
            for part in ["a", "b", "c"] {
                store
                    .create(slices, Some("scale"), slice_body(i, part, true), "bench")
                    .expect("create EndpointSlice");
            }
        }
    }
    println!(
        "[{mode}] {n} Services and {} EndpointSlices written in {:?}",
        3 * n,
        t.elapsed()
    );
    let speaker = ferrolb_tests::binary("ferrolb-speaker");
    let kubeconfig = cluster.speaker_kubeconfig.to_str().unwrap().to_string();
    let started = Instant::now();
    let mut pids = Vec::new();
    for (node, ip) in NODES {
        let mut cmd = vec![
            speaker.to_str().unwrap(),
            "kubernetes",
            "--kubeconfig",
            &kubeconfig,
            "--node",
            node,
            "--log-level",
            "warn",
        ];
        let metrics = format!("{ip}:7474");
        cmd.extend(["--metrics-address", &metrics]);
        if mode == "full" {
            cmd.push("--full-recompute");
        }
        let log = dir.join(format!("{node}.log"));
        pids.push(lab.spawn(node, &cmd, &log));
    }
    // Converged: BIRD holds every route from every speaker.
    let want = 3 * n as usize;
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut have = 0;
    while Instant::now() < deadline {
        have = count_routes(&lab, &sock);
        if have >= want {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let converge = started.elapsed();
    println!("[{mode}] start to {have} of {want} routes in BIRD: {converge:?}");
    // Let start-up work (Events, reports) settle before measuring.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let cpu0: Vec<f64> = pids.iter().map(|p| cpu_seconds(*p)).collect();
    let t0 = Instant::now();
    // The churn: change k flips Service (k * step) % n, a different one each
    // time within a run of n changes, so no change undoes one in flight.
    let total = (a.rate * a.seconds) as usize;
    let step = 7919 % n.max(2);
    let mut ready: BTreeMap<u32, bool> = BTreeMap::new();
    let mut changes: Vec<(u64, u32, bool)> = Vec::with_capacity(total);
    let slices = ferrolb_kubefake::resource::by_name("endpointslices", "discovery.k8s.io").unwrap();
    let period = Duration::from_secs_f64(1.0 / a.rate as f64);
    for k in 0..total {
        let due = t0 + period * k as u32;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            tokio::time::sleep(wait).await;
        }
        let i = ((k as u64 * step as u64) % n as u64) as u32;
        let now_ready = !ready.get(&i).copied().unwrap_or(true);
        ready.insert(i, now_ready);
        let at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        cluster
            .server
            .store()
            .patch(
                slices,
                Some("scale"),
                &format!("s{i}-a"),
                false,
                PatchKind::Merge,
                json!({"endpoints": slice_body(i, "a", now_ready)["endpoints"]}),
                "endpointslice-controller",
            )
            .expect("flip the endpoint");
        changes.push((at, i, now_ready));
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu: Vec<f64> = pids
        .iter()
        .zip(&cpu0)
        .map(|(p, c0)| (cpu_seconds(*p) - c0) / elapsed * 100.0)
        .collect();
    let rss: Vec<f64> = pids.iter().map(|p| rss_mib(*p)).collect();
    // The last changes get up to 5 s to arrive.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let events = bird_events(&std::fs::read_to_string(&bird_log).unwrap_or_default());
    // Per (protocol, prefix): the events in time order.
    let mut by_route: BTreeMap<(String, String), Vec<(u64, bool)>> = BTreeMap::new();
    for (at, proto, added, prefix) in events {
        by_route
            .entry((proto, prefix))
            .or_default()
            .push((at, added));
    }
    let mut latency = vec![Vec::new(); NODES.len()];
    let mut missed = vec![0; NODES.len()];
    for (at, i, now_ready) in &changes {
        let prefix = format!("{}/32", vip(*i));
        for (j, (node, _)) in NODES.iter().enumerate() {
            let seen = by_route
                .get(&(node.to_string(), prefix.clone()))
                .and_then(|evs| {
                    evs.iter()
                        .find(|(t, added)| *t + 1 >= *at && *added == *now_ready)
                });
            match seen {
                Some((t, _)) => latency[j].push(Duration::from_millis(t.saturating_sub(*at))),
                None => missed[j] += 1,
            }
        }
    }
    for l in &mut latency {
        l.sort();
    }
    drop(lab);
    Figures {
        mode,
        converge,
        cpu,
        rss_mib: rss,
        latency,
        missed,
        changes: changes.len(),
    }
}

fn main() {
    let a = args();
    if !require(
        "speaker_scale benchmark",
        &[Need::Root, Need::Program("bird"), Need::Program("birdc")],
    ) {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut all = Vec::new();
    for mode in &a.modes {
        all.push(rt.block_on(run(&a, mode)));
    }
    println!();
    println!(
        "speaker at scale: {} Services, {} EndpointSlices, 3 speakers (BGP to BIRD), {} endpoint flips/s for {} s",
        a.services,
        3 * a.services,
        a.rate,
        a.seconds
    );
    println!(
        "{:<12} {:<7} {:>10} {:>8} {:>9} {:>9} {:>9} {:>7} {:>10}",
        "mode", "node", "converge", "CPU %", "RSS MiB", "p50 ms", "p99 ms", "max ms", "missed"
    );
    for f in &all {
        for (j, (node, _)) in NODES.iter().enumerate() {
            let l = &f.latency[j];
            println!(
                "{:<12} {:<7} {:>9.1}s {:>8.1} {:>9.1} {:>9} {:>9} {:>7} {:>4}/{:<5}",
                f.mode,
                node,
                f.converge.as_secs_f64(),
                f.cpu[j],
                f.rss_mib[j],
                percentile(l, 0.5).as_millis(),
                percentile(l, 0.99).as_millis(),
                l.last().copied().unwrap_or_default().as_millis(),
                f.missed[j],
                f.changes
            );
        }
    }
    if let [inc, full] = &all[..] {
        let avg = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
        let p99 = |f: &Figures| {
            f.latency
                .iter()
                .map(|l| percentile(l, 0.99).as_secs_f64() * 1000.0)
                .fold(0.0, f64::max)
        };
        println!(
            "ratio incremental/full: CPU {:.2}, RSS {:.2}, worst p99 {:.2}",
            avg(&inc.cpu) / avg(&full.cpu).max(1e-9),
            avg(&inc.rss_mib) / avg(&full.rss_mib).max(1e-9),
            p99(inc) / p99(full).max(1e-9)
        );
    }
}
