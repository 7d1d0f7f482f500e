//! The whole product end to end in network namespaces (see
//! `ferrolb_tests::product`): layer 2 mode with a client on the segment, and
//! BGP mode with BIRD as the router and the client behind it, both watched
//! by a real Prometheus scraping and alerting as deploy/monitoring/ ships.
//! Needs root, `prometheus` (and `bird2` for BGP); skips loudly without
//! them (a failure in CI).

use ferrolb_tests::pods::Kubelet;
use ferrolb_tests::product::{Mode, Product, NODES, T};
use ferrolb_tests::prometheus::Prometheus;
use ferrolb_tests::speaker::metric_sum;
use ferrolb_tests::{binary, require, Need};
use serde_json::json;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

const ALL: [(&str, &str, bool); 3] = ferrolb_tests::product::ALL_READY;
const ONLY_NODE2: [(&str, &str, bool); 2] = [
    ("192.0.2.12", "node2", true),
    ("192.0.2.13", "node3", false),
];
const ONLY_NODE3: [(&str, &str, bool); 2] = [
    ("192.0.2.12", "node2", false),
    ("192.0.2.13", "node3", true),
];

fn forwarded() -> serde_json::Value {
    json!({"metadata": {"annotations": {"ferrolb.io/forward": "true"}}})
}

fn local() -> serde_json::Value {
    json!({"spec": {"externalTrafficPolicy": "Local"}})
}

/// A `/proc/PID/status` field (`CapEff`, `Uid`).
fn proc_status(pid: u32, field: &str) -> String {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("/proc/{pid}/status has no {field}:\n{text}"))
        .trim()
        .to_string()
}

/// What a user of `kubectl apply -k deploy/` would check first: every Pod
/// Ready with no restart, the speakers with exactly the three capabilities
/// the DaemonSet adds (in every set but the inheritable one), the controllers
/// as their non-root user with none.
fn assert_pods_as_shipped(k: &Kubelet) {
    let pods = k.pods();
    assert_eq!(
        pods.len(),
        5,
        "2 controllers and 3 speakers:\n{}",
        k.describe()
    );
    for pod in &pods {
        let (name, node) = (&pod.name, &pod.node);
        assert_eq!(
            pod.restarts,
            0,
            "{name} on {node} restarted:\n{}\n{}",
            k.describe(),
            k.logs(name)
        );
        assert!(
            pod.ready_after.is_some(),
            "{name} never Ready:\n{}",
            k.describe()
        );
        let c = &pod.containers[0];
        let pid = c.pid.expect("running");
        if name.starts_with("ferrolb-speaker") {
            // NET_BIND_SERVICE (10), NET_ADMIN (12), NET_RAW (13), PERFMON (38), BPF (39).
            for set in ["CapEff", "CapPrm", "CapBnd", "CapAmb"] {
                assert_eq!(proc_status(pid, set), "000000c000003400", "{name} {set}");
            }
            assert_eq!(proc_status(pid, "Uid"), "0\t0\t0\t0");
            assert_eq!(proc_status(pid, "NoNewPrivs"), "1", "{name}");
            assert_eq!(proc_status(pid, "Seccomp"), "2", "{name}: RuntimeDefault");
        } else {
            assert!(name.starts_with("ferrolb-controller"), "{name}");
            assert_eq!(
                proc_status(pid, "Uid"),
                "65532\t65532\t65532\t65532",
                "{name}"
            );
            assert_eq!(
                proc_status(pid, "Gid"),
                "65532\t65532\t65532\t65532",
                "{name}"
            );
            for set in ["CapEff", "CapPrm", "CapBnd", "CapAmb"] {
                assert_eq!(proc_status(pid, set), "0000000000000000", "{name} {set}");
            }
            assert_eq!(proc_status(pid, "Seccomp"), "2", "{name}: RuntimeDefault");
        }
    }
    eprintln!("Pods as shipped:\n{}", k.describe());
}

/// GETs `url` until every one of `want` answered; panics after [`T`].
fn reach_all(p: &Product, url: &str, want: usize, ok: impl Fn(&str) -> bool) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let t = Instant::now();
    while seen.len() < want {
        if let Some(b) = p.get(url, 0.5) {
            assert!(ok(&b), "{url} answered {b}");
            seen.insert(b);
        }
        assert!(t.elapsed() < T, "{url} reached only {seen:?}\n{}", p.logs());
    }
    seen
}

/// Prometheus found the five Pods through the shipped scrape job (the
/// speakers on their nodes' addresses, the controllers on their Pods'),
/// labelled as docs/monitoring.md says, every one up; and every shipped
/// alert is loaded and evaluates without error.
fn assert_scraped_as_shipped(prom: &Prometheus) {
    let targets = prom.wait_targets_up(5, T);
    let mut seen: Vec<(String, String, String)> = targets
        .iter()
        .map(|t| {
            let l = &t["labels"];
            (
                l["component"].as_str().unwrap_or_default().to_string(),
                l["node"].as_str().unwrap_or_default().to_string(),
                l["instance"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    seen.sort();
    let mut want: Vec<(String, String, String)> = NODES
        .iter()
        .map(|(n, ip)| ("speaker".into(), n.to_string(), format!("{ip}:7474")))
        .collect();
    want.sort();
    assert_eq!(&seen[2..], &want[..], "{targets:#?}");
    assert!(
        seen[..2]
            .iter()
            .all(|(c, _, i)| c == "controller" && i.ends_with(":7472")),
        "{seen:?}"
    );
    let t = Instant::now();
    loop {
        let rules = prom.alerting_rules();
        let shipped = std::fs::read_to_string(
            ferrolb_tests::prometheus::monitoring_dir().join("ferrolb.rules.yml"),
        )
        .unwrap()
        .matches("- alert: ")
        .count();
        let ok = rules.iter().filter(|(_, h, _)| h == "ok").count();
        if rules.len() == shipped && ok == shipped {
            eprintln!("Prometheus: 5 targets up, {ok} alerting rules evaluated without error");
            break;
        }
        assert!(
            t.elapsed() < T && rules.iter().all(|(_, h, _)| h != "err"),
            "rules loaded {} of {shipped}: {rules:?}",
            rules.len()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Every query of the shipped Grafana dashboard runs on the lab's
/// Prometheus, and each returns data unless its row is one of `empty_rows`
/// (the other mode's).
fn assert_dashboard_has_data(prom: &Prometheus, empty_rows: &[&str]) {
    let d = ferrolb_tests::prometheus::dashboard();
    // A series that appeared a moment ago has one sample, too few for
    // rate() and increase(): a query without data is asked again for a while.
    let t = Instant::now();
    loop {
        let mut failed = Vec::new();
        let mut with_data = 0;
        for (row, panel, expr) in ferrolb_tests::prometheus::dashboard_queries(&d) {
            let q = ferrolb_tests::prometheus::grafana_expand(&expr);
            match prom.query(&q) {
                Err(e) => panic!("{row} / {panel}: {q}: {e}"),
                Ok(r) if r.is_empty() && !empty_rows.contains(&row.as_str()) => {
                    failed.push(format!("{row} / {panel}: {q}: no data"))
                }
                Ok(r) => with_data += usize::from(!r.is_empty()),
            }
        }
        if failed.is_empty() {
            eprintln!("dashboard: every query parses, {with_data} return data");
            return;
        }
        assert!(t.elapsed() < T, "dashboard queries:\n{}", failed.join("\n"));
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The leading controller's own value of `ferrolb_controller_pool_addresses`
/// for `pool`, `state` (read from its metrics endpoint, not Prometheus).
fn leader_pool(p: &Product, pool: &str, state: &str) -> f64 {
    for addr in p.controller_metrics() {
        let Ok((200, body)) = ferrolb_tests::prometheus::http_get(addr, "/metrics") else {
            continue;
        };
        if metric_sum(&body, "ferrolb_controller_leader", &[]) == 1.0 {
            return metric_sum(
                &body,
                "ferrolb_controller_pool_addresses",
                &[&format!("pool=\"{pool}\""), &format!("state=\"{state}\"")],
            );
        }
    }
    panic!("no controller leads")
}

/// A Service asking for an address no pool holds: the controller counts an
/// allocation failure (the dashboard's failure panel has data) and the
/// Service waits.
async fn unallocatable(p: &Product) {
    p.cluster
        .create_service(
            "shop",
            "nowhere",
            json!({"metadata": {"annotations": {"ferrolb.io/loadBalancerIPs": "198.51.100.77"}}}),
        )
        .await;
}

/// Pool usage: Prometheus' view equals the leader's own and the Services holding addresses.
fn assert_pool_usage(p: &Product, prom: &Prometheus, pool: &str, used: usize) {
    let q = format!(
        "max by (pool) (ferrolb_controller_pool_addresses{{pool=\"{pool}\",state=\"used\"}})"
    );
    let seen = prom.wait_value(&q, T, |v| v == used as f64);
    assert_eq!(seen, leader_pool(p, pool, "used"));
    let total = prom
        .value(&format!(
            "max by (pool) (ferrolb_controller_pool_addresses{{pool=\"{pool}\",state=\"total\"}})"
        ))
        .expect("pool total");
    assert_eq!(total, leader_pool(p, pool, "total"));
    eprintln!("pool {pool}: {seen} of {total} used, in Prometheus as at the leader");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_apply_to_reachable_vip_with_failover_in_layer_2() {
    if !require(
        "the product end to end in layer 2 mode",
        &[
            Need::Root,
            Need::Program("ip"),
            Need::Program("python3"),
            Need::Program("prometheus"),
            Need::StaticImages,
        ],
    ) {
        return;
    }
    let mut p = Product::start(Mode::Layer2).await;
    assert_pods_as_shipped(&p.kubelet);
    let prom = p.start_prometheus().await;
    assert_scraped_as_shipped(&prom);

    // Announce-only (ipMode VIP): the owner's node answers for the VIP.
    let vip = p.service("web", 8080, json!({}), &ALL).await;
    let url = format!("http://{vip}:8080/");
    let owner = p.wait_get("the announce-only VIP", &url, |b| b.starts_with("node"));
    eprintln!("{vip} is answered by {owner}");

    // Forwarded (ipMode Proxy): the owner's forwarder spreads requests over the pods.
    let vip2 = p.service("api", 8081, forwarded(), &ALL).await;
    reach_all(&p, &format!("http://{vip2}:8081/"), 3, |b| {
        b.ends_with("-pod")
    });

    // The owner's speaker is killed: another node takes over, measured at the
    // client (the prober kills it, then polls the VIP and watches for the
    // new owner's gratuitous ARP).
    // The node is down: the kubelet does not restart the speaker meanwhile.
    p.hold_speaker(&owner, true);
    prom.wait_value("sum(ferrolb_l2_failover_seconds_count)", T, |v| v == 0.0);
    let pid = p.speaker_pid(&owner).expect("owner runs a speaker");
    let probe = ferrolb_tests::l2lab::probe_failover(&p.lab, pid, &vip, 8080, &owner);
    let took = probe.served_ms.unwrap_or_else(|| {
        panic!(
            "no other node answered within 5 s (prober: {})\n{}",
            probe.raw,
            p.logs()
        )
    });
    let next = p.wait_get("the new owner", &url, |b| {
        b.starts_with("node") && b != owner
    });
    eprintln!(
        "owner {owner}'s speaker killed; {next} answers after {took:.0} ms (prober: {})",
        probe.raw
    );
    // Each owner said so on the Service, once (Events are published off the
    // speakers' main loop: give them a moment).
    let once = |announced: &[String]| {
        [&owner, &next].iter().all(|node| {
            let want = format!("node {node} announces {vip} as its layer 2 owner");
            announced.iter().filter(|a| a.starts_with(&want)).count() == 1
        })
    };
    let t = Instant::now();
    loop {
        let announced: Vec<String> = p
            .cluster
            .events_for("shop", "web")
            .into_iter()
            .filter(|(_, r, _)| r == "IPAnnounced")
            .map(|(_, _, n)| n)
            .collect();
        if once(&announced) {
            break;
        }
        assert!(
            t.elapsed() < T,
            "{owner} and {next} must each announce once: {announced:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // The status view and the metrics of the new owner say the same.
    let bin = binary("ferrolb-speaker");
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
    // The cluster-wide view from the API (the NodeAnnouncements, rewritten
    // at most once a second) names the new owner only.
    let t = Instant::now();
    loop {
        let out = std::process::Command::new(&bin)
            .args(["status", "--api", "--kubeconfig"])
            .arg(&p.cluster.kubeconfig)
            .output()
            .unwrap();
        let cluster = String::from_utf8_lossy(&out.stdout).to_string();
        let web = cluster
            .lines()
            .find(|l| l.starts_with("shop/web"))
            .unwrap_or_default();
        if web.ends_with(&format!("{next} (layer 2 owner)")) {
            eprintln!("ferrolb-speaker status --api:\n{cluster}");
            break;
        }
        assert!(
            t.elapsed() < T,
            "status --api: {cluster}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let metrics = p.lab.metrics_on(&next, 7474);
    assert!(
        metrics.contains(&format!(
            "ferrolb_vip_announced{{service=\"shop/web\",vip=\"{vip}\",mode=\"l2\"}} 1"
        )),
        "{metrics}"
    );
    // Prometheus counted the failover as the surviving speakers did, and
    // knows who owns the VIP now, since when.
    let direct = || -> f64 {
        NODES
            .iter()
            .filter(|(n, _)| *n != owner)
            .map(|(n, _)| {
                metric_sum(
                    &p.lab.metrics_on(n, 7474),
                    "ferrolb_l2_failover_seconds_count",
                    &[],
                )
            })
            .sum()
    };
    let counted = prom.wait_value("sum(ferrolb_l2_failover_seconds_count)", T, |v| {
        v >= 1.0 && v == direct()
    });
    let mean = prom
        .value("sum(ferrolb_l2_failover_seconds_sum) / sum(ferrolb_l2_failover_seconds_count)")
        .unwrap_or(f64::NAN);
    eprintln!(
        "Prometheus: {counted} failover(s) counted, mean {:.0} ms",
        mean * 1000.0
    );
    let who = prom.wait_value(
        &format!("count(ferrolb_vip_announced_since_timestamp_seconds{{vip=\"{vip}\",mode=\"l2\",node=\"{next}\"}})"),
        T,
        |v| v == 1.0,
    );
    assert_eq!(who, 1.0);
    // The node is back: the kubelet restarts the killed container (once, at
    // once); the returning speaker does not take the VIP back.
    p.hold_speaker(&owner, false);
    p.wait_ready();
    assert_eq!(
        p.kubelet.restarts(&p.speaker_pod(&owner)),
        1,
        "{}",
        p.logs()
    );
    let again = p.wait_get("the VIP after the restart", &url, |b| b.starts_with("node"));
    assert_eq!(
        again, next,
        "the VIP went back to {owner} after its restart"
    );

    // externalTrafficPolicy Local: only a node with a ready endpoint announces,
    // and the VIP follows the ready endpoint to another node.
    let vip3 = p.service("local", 8080, local(), &ONLY_NODE2).await;
    let url3 = format!("http://{vip3}:8080/");
    p.wait_get("the Local service on node2", &url3, |b| b == "node2");
    p.cluster.set_endpoints("shop", "local", 9000, &ONLY_NODE3);
    p.wait_get("the Local service moving to node3", &url3, |b| b == "node3");
    unallocatable(&p).await;
    assert_pool_usage(&p, &prom, "vips", 3);
    prom.wait_value(
        "sum(ferrolb_controller_allocation_failures_total)",
        T,
        |v| v >= 1.0,
    );

    // A rogue host on the segment answers ARP for the web VIP with its own
    // MAC for 2 s (40 forgeries): the owner re-asserts, and the Service gets
    // one Warning Event, not one per forgery.
    p.lab.add("rogue");
    p.lab.attach("rogue", &["192.0.2.66/24"]);
    let log = std::env::temp_dir().join(format!("{}-steal.log", p.lab.name("x")));
    p.lab.spawn(
        "rogue",
        &["python3", "-c", ferrolb_tests::rogue::STEAL_ARP, "2", &vip],
        &log,
    );
    let note = p.cluster.wait_event("shop", "web", "IPConflict", T).await;
    eprintln!("conflict Event: {note}");
    assert!(
        note.contains(&p.lab.mac("rogue")) && note.contains(&format!("node {next} owns")),
        "{note}"
    );
    std::thread::sleep(std::time::Duration::from_secs(3));
    let conflicts: Vec<(String, String, String)> = p
        .cluster
        .events_for("shop", "web")
        .into_iter()
        .filter(|(_, r, _)| r == "IPConflict")
        .collect();
    assert_eq!(conflicts.len(), 1, "{conflicts:?}");
    assert_eq!(conflicts[0].0, "Warning", "{conflicts:?}");
    assert_eq!(
        p.wait_get("the VIP after the theft", &url, |b| b.starts_with("node")),
        next
    );
    // The conflict alert fires (it has no `for`), naming the VIP and the owner.
    let t = Instant::now();
    loop {
        let firing: Vec<serde_json::Value> = prom
            .alerts("FerrolbVIPConflict")
            .into_iter()
            .filter(|a| a["state"] == "firing")
            .collect();
        if let Some(a) = firing.first() {
            assert_eq!(a["labels"]["vip"], vip.as_str(), "{a}");
            let ip = NODES.iter().find(|(n, _)| *n == next).unwrap().1;
            assert_eq!(
                a["labels"]["instance"],
                format!("{ip}:7474").as_str(),
                "{a}"
            );
            eprintln!(
                "FerrolbVIPConflict firing: {}",
                a["annotations"]["description"]
            );
            break;
        }
        assert!(t.elapsed() < T, "FerrolbVIPConflict never fired");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_dashboard_has_data(&prom, &["BGP"]);
    ferrolb_tests::prometheus::export_dashboard(&prom, "layer2", Duration::ZERO);
    assert!(!p.logs().contains("panicked"), "{}", p.logs());

    // Uninstall: the VIPs' local routes and the ARP sysctls stay on the
    // nodes after `kubectl delete -k deploy/`, until the cleanup DaemonSet ran.
    let vips = {
        let mut v = vec![vip.clone(), vip2.clone(), vip3.clone()];
        v.sort();
        v
    };
    for (n, _) in ferrolb_tests::product::NODES {
        assert_eq!(p.local_routes(n), vips, "{n}");
        assert_eq!(p.sysctl(n, "arp_ignore"), "1", "{n}");
    }
    p.uninstall();
    for (n, _) in ferrolb_tests::product::NODES {
        assert!(p.local_routes(n).is_empty(), "{n}: {:?}", p.local_routes(n));
        assert_eq!(p.sysctl(n, "arp_ignore"), "0", "{n}");
        assert_eq!(p.sysctl(n, "arp_announce"), "0", "{n}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_apply_to_reachable_vip_in_bgp_mode_against_bird() {
    if !require(
        "the product end to end in BGP mode",
        &[
            Need::Root,
            Need::Program("ip"),
            Need::Program("python3"),
            Need::Program("prometheus"),
            Need::Program("bird"),
            Need::Program("birdc"),
            Need::StaticImages,
        ],
    ) {
        return;
    }
    let mut p = Product::start(Mode::Bgp).await;
    assert_pods_as_shipped(&p.kubelet);
    let prom = p.start_prometheus().await;
    assert_scraped_as_shipped(&prom);

    // Every eligible node advertises the VIP: BIRD holds three paths and the
    // client behind it is served by all three nodes.
    let vip = p.service("web", 8080, json!({}), &ALL).await;
    p.wait_next_hops(&vip, &["192.0.2.11", "192.0.2.12", "192.0.2.13"]);
    let url = format!("http://{vip}:8080/");
    reach_all(&p, &url, 3, |b| b.starts_with("node"));
    // Every advertising node said so on the Service (Events are published
    // off the speakers' main loop: wait for them).
    let t = Instant::now();
    loop {
        let announced = p
            .cluster
            .events_for("shop", "web")
            .into_iter()
            .filter(|(_, r, n)| r == "IPAnnounced" && n.contains("over BGP to bird"))
            .count();
        if announced == 3 {
            break;
        }
        assert!(
            t.elapsed() < T,
            "{announced} IPAnnounced: {:?}",
            p.cluster.events_for("shop", "web")
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }

    // A forwarded Service behind the same router.
    let vip2 = p.service("api", 8081, forwarded(), &ALL).await;
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
    let vip3 = p.service("local", 8080, local(), &ONLY_NODE2).await;
    p.wait_next_hops(&vip3, &["192.0.2.12"]);
    p.cluster.set_endpoints("shop", "local", 9000, &ONLY_NODE3);
    let took = p.wait_next_hops(&vip3, &["192.0.2.13"]);
    eprintln!("the Local service's path moved from node2 to node3 in {took:?}");
    p.wait_get(
        "the Local service on node3",
        &format!("http://{vip3}:8080/"),
        |b| b == "node3",
    );
    unallocatable(&p).await;
    assert_pool_usage(&p, &prom, "vips", 3);
    prom.wait_value(
        "sum(ferrolb_controller_allocation_failures_total)",
        T,
        |v| v >= 1.0,
    );
    prom.wait_value("sum(ferrolb_bgp_session_up)", T, |v| v == 3.0);
    assert_dashboard_has_data(&prom, &["Layer 2"]);

    // The router stops: every speaker's session is down, the alert goes
    // pending at once and fires after its minute; the router returns, the
    // sessions come back and the alert resolves.
    p.stop_router();
    let stopped = Instant::now();
    let states = |prom: &Prometheus| -> Vec<String> {
        let mut s: Vec<String> = prom
            .alerts("FerrolbBGPSessionDown")
            .iter()
            .map(|a| {
                format!(
                    "{} {} {}",
                    a["labels"]["instance"].as_str().unwrap_or_default(),
                    a["labels"]["peer"].as_str().unwrap_or_default(),
                    a["state"].as_str().unwrap_or_default()
                )
            })
            .collect();
        s.sort();
        s
    };
    let all = |state: &str| -> Vec<String> {
        NODES
            .iter()
            .map(|(_, ip)| format!("{ip}:7474 bird {state}"))
            .collect()
    };
    let long = Duration::from_secs(100);
    let wait_states = |p: &Product, want: Vec<String>| -> Duration {
        loop {
            let now = states(&prom);
            if now == want {
                return stopped.elapsed();
            }
            assert!(
                stopped.elapsed() < long,
                "FerrolbBGPSessionDown: {now:?}, wanted {want:?}\n{}",
                p.logs()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    let pending = wait_states(&p, all("pending"));
    let firing = wait_states(&p, all("firing"));
    assert!(
        firing >= Duration::from_secs(60),
        "fired {firing:?} after the router stopped: its `for` is a minute"
    );
    eprintln!(
        "FerrolbBGPSessionDown: pending {pending:?}, firing {firing:?} after the router stopped"
    );
    p.start_router();
    let back = Instant::now();
    wait_states(&p, Vec::new());
    let resolved = back.elapsed();
    p.wait_next_hops(&vip, &["192.0.2.11", "192.0.2.12", "192.0.2.13"]);
    eprintln!("FerrolbBGPSessionDown resolved {resolved:?} after the router returned");
    ferrolb_tests::prometheus::export_dashboard(&prom, "bgp", Duration::from_secs(15));
    assert!(!p.logs().contains("panicked"), "{}", p.logs());
}

/// Virtual MAC mode in Kubernetes mode, as shipped: the speaker Pods (their
/// capabilities, read-only `/proc/sys`, seccomp) make the macvlan, answer
/// with the group's MAC, and a client pinned to it follows a failover.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn virtual_mac_in_kubernetes_mode_through_the_kubelet() {
    if !require(
        "virtual_mac_in_kubernetes_mode_through_the_kubelet",
        &[
            Need::Root,
            Need::Program("ip"),
            Need::Program("python3"),
            Need::StaticImages,
        ],
    ) {
        return;
    }
    let mut p = Product::start_with(
        Mode::Layer2,
        Some("l2: [{pools: [vips], interfaces: [eth0], virtualMac: true}]"),
    )
    .await;
    let vip = p.service("web", 8080, json!({}), &ALL).await;
    let url = format!("http://{vip}:8080/");
    let owner = p.wait_get("the VIP", &url, |b| b.starts_with("node"));
    let vmac = ferrolb_l2::vmac::derive(vip.parse().expect("ip")).to_string();
    let neigh = |p: &Product| {
        let out = p.lab.exec_ok("client", &["ip", "neigh", "show", &vip]);
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    assert!(
        neigh(&p).contains(&vmac),
        "the client resolved {vip} to {vmac}: {}\n{}",
        neigh(&p),
        p.logs()
    );
    let holders = |p: &Product| p.lab.holders(&["node1", "node2", "node3"], &vmac);
    assert_eq!(holders(&p), vec![owner.clone()]);
    p.lab.exec_ok(
        "client",
        &[
            "ip",
            "neigh",
            "replace",
            &vip,
            "lladdr",
            &vmac,
            "nud",
            "permanent",
            "dev",
            "eth0",
        ],
    );
    p.hold_speaker(&owner, true);
    let pid = p.speaker_pid(&owner).expect("owner runs a speaker");
    let probe = ferrolb_tests::l2lab::probe_failover(&p.lab, pid, &vip, 8080, &owner);
    let took = probe.served_ms.unwrap_or_else(|| {
        panic!(
            "the pinned client was not served again ({})\n{}",
            probe.raw,
            p.logs()
        )
    });
    let next = p.wait_get("the new owner", &url, |b| {
        b.starts_with("node") && b != owner
    });
    eprintln!("pinned client served by {next} {took:.0} ms after {owner}'s speaker was killed");
    assert!(holders(&p).contains(&next));
    // A new Pod on the old owner's node removes the link its predecessor left.
    p.replace_speaker(&owner);
    let t = Instant::now();
    while holders(&p) != vec![next.clone()] {
        assert!(
            t.elapsed() < std::time::Duration::from_secs(60),
            "holders {:?}\n{}",
            holders(&p),
            p.logs()
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// A virtual MAC that cannot be made in Kubernetes mode: the VIP is
/// answered with the node MAC, and the Service gets a Warning Event saying
/// why (the name of the link the speaker needs is taken on every node).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn virtual_mac_fallback_in_kubernetes_mode_warns_on_the_service() {
    if !require(
        "virtual_mac_fallback_in_kubernetes_mode_warns_on_the_service",
        &[
            Need::Root,
            Need::Program("ip"),
            Need::Program("python3"),
            Need::StaticImages,
        ],
    ) {
        return;
    }
    let p = Product::start_with(
        Mode::Layer2,
        Some("l2: [{pools: [vips], interfaces: [eth0], virtualMac: true}]"),
    )
    .await;
    let vip = "192.0.2.105";
    let vmac = ferrolb_l2::vmac::derive(vip.parse().expect("ip"));
    for n in ["node1", "node2", "node3"] {
        let name = ferrolb_l2::vmac::link_name(vmac, p.lab.ifindex(n, "eth0"));
        p.lab.exec_ok(
            n,
            &[
                "ip", "link", "add", &name, "type", "veth", "peer", "name", "flbtaken",
            ],
        );
    }
    let got = p
        .service(
            "web",
            8080,
            json!({"metadata": {"annotations": {"ferrolb.io/loadBalancerIPs": vip}}}),
            &ALL,
        )
        .await;
    assert_eq!(got, vip);
    let url = format!("http://{vip}:8080/");
    let owner = p.wait_get("the VIP", &url, |b| b.starts_with("node"));
    let note = p
        .cluster
        .wait_event("shop", "web", "VirtualMACUnavailable", T)
        .await;
    assert!(
        note.contains(&vmac.to_string()) && note.contains(&owner),
        "the Warning names the MAC and the node: {note}"
    );
    let warning = p
        .cluster
        .events_for("shop", "web")
        .into_iter()
        .find(|(_, r, _)| r == "VirtualMACUnavailable")
        .expect("found above");
    assert_eq!(warning.0, "Warning");
    // Answered with the owner's own MAC.
    let out = p.lab.exec_ok("client", &["ip", "neigh", "show", vip]);
    let neigh = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        neigh.contains(&p.lab.mac(&owner)) && !neigh.contains(&vmac.to_string()),
        "{neigh}\n{}",
        p.logs()
    );
}

/// `forwarder: {mode: kernel}` in the ConfigMap, the DaemonSet as shipped
/// (its BPF and PERFMON capabilities, seccomp RuntimeDefault, read-only
/// root): the owner forwards in the eBPF program to an endpoint on another
/// node, and a node whose own endpoint the program cannot reach (a backend
/// on this host) serves in user space and says so on the Service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kernel_mode_in_kubernetes_forwards_in_the_program_and_warns_where_it_cannot() {
    if !require(
        "kernel_mode_in_kubernetes_forwards_in_the_program_and_warns_where_it_cannot",
        &[
            Need::Root,
            Need::Program("ip"),
            Need::Program("python3"),
            Need::StaticImages,
            Need::BpfProgram,
        ],
    ) {
        return;
    }
    let p = Product::start_with(
        Mode::Layer2,
        Some("l2: [{pools: [vips], interfaces: [eth0]}]\nforwarder: {mode: kernel}"),
    )
    .await;
    // Every node has its own endpoint: none can serve it in the kernel.
    let vip = p.service("web", 8081, forwarded(), &ALL).await;
    let url = format!("http://{vip}:8081/");
    p.wait_get("the VIP in user space", &url, |b| b.ends_with("-pod"));
    let note = p
        .cluster
        .wait_event("shop", "web", "KernelDatapathUnavailable", T)
        .await;
    assert!(
        note.contains("8081/TCP") && note.contains("is on this host") && note.contains("node"),
        "the Warning names the port, the node and the cause: {note}"
    );
    // The owner, from its metrics; the endpoint moves to another node.
    let metrics = |n: &str| p.lab.metrics_on(n, 7474);
    let owner = ["node1", "node2", "node3"]
        .into_iter()
        .find(|n| {
            metric_sum(
                &metrics(n),
                "ferrolb_vip_announced",
                &["service=\"shop/web\"", "mode=\"l2\""],
            ) == 1.0
        })
        .unwrap_or_else(|| panic!("no owner:\n{}", p.logs()));
    let (other_ip, other) = NODES
        .iter()
        .find(|(n, _)| *n != owner)
        .map(|(n, ip)| (*ip, *n))
        .unwrap();
    p.cluster
        .set_endpoints("shop", "web", 9000, &[(other_ip, other, true)]);
    let deadline = Instant::now() + T;
    loop {
        let m = metrics(owner);
        if metric_sum(
            &m,
            "ferrolb_forwarder_mode",
            &["service=\"shop/web\"", "mode=\"kernel\""],
        ) == 1.0
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the owner never served shop/web in the kernel:\n{m}\n{}",
            p.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The DaemonSet's bpffs volume lets it pin, as the shipped capabilities
    // and the node's bpffs allow: a restarted speaker would adopt it.
    assert_eq!(
        metric_sum(&metrics(owner), "ferrolb_kernel_datapath_pinned", &[]),
        1.0,
        "the speaker pinned its data path in the node's bpffs:\n{}",
        p.logs()
    );
    let before = metric_sum(
        &metrics(owner),
        "ferrolb_connections_total",
        &["service=\"shop/web\""],
    );
    let want = format!("{other}-pod");
    for _ in 0..5 {
        let body = p.lab.http_get("client", &url, 3.0);
        assert_eq!(body.as_deref(), Some(want.as_str()), "{}", p.logs());
    }
    let deadline = Instant::now() + T;
    loop {
        let m = metrics(owner);
        let flows = metric_sum(&m, "ferrolb_kernel_flows_total", &["service=\"shop/web\""]);
        if flows >= 5.0 {
            assert_eq!(
                metric_sum(&m, "ferrolb_connections_total", &["service=\"shop/web\""]),
                before,
                "user space forwarded none of them"
            );
            assert_eq!(metric_sum(&m, "ferrolb_kernel_datapath_active", &[]), 1.0);
            break;
        }
        assert!(Instant::now() < deadline, "flows {flows}:\n{m}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
