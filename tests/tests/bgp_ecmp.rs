//! ECMP through a real router: two speakers advertise the same VIP to BIRD 2,
//! BIRD installs one multipath route in its kernel table, and a client behind
//! the router reaches the VIP through both nodes (the kernel's L4 multipath
//! hash spreads its connections). When one node's backend dies, that node
//! withdraws and the client is served by the other alone. Needs root, `bird2`
//! and `python3`; skips loudly without them (a failure in CI).

use ferrolb_tests::netns::Lab;
use ferrolb_tests::{binary, require, routers, Need};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

const NODES: [(&str, &str); 2] = [("node1", "192.0.2.11"), ("node2", "192.0.2.12")];

fn bird_conf(dir: &std::path::Path) -> String {
    routers::bird_ecmp_conf(dir, &NODES)
}

fn speaker_conf(router_id: &str) -> String {
    format!(
        "pools: [{{name: vips, addresses: [203.0.113.0/28]}}]
services:
  - name: web
    ip: 203.0.113.10
    ports: [{{port: 8080, backends: [\"127.0.0.1:9000\"], healthCheck: {{type: tcp, interval: 100ms, timeout: 90ms, fall: 2}}}}]
bgp:
  routerId: {router_id}
  peers:
    - {{name: bird, address: 192.0.2.1, asn: 65000, myAsn: 65001, holdTime: 9s}}
"
    )
}

struct Rig {
    lab: Lab,
    dir: PathBuf,
    echo: BTreeMap<String, u32>,
    speakers: BTreeMap<String, u32>,
}

impl Rig {
    fn start() -> Rig {
        let mut lab = Lab::new("e");
        let dir = std::env::temp_dir().join(format!("ferrolb-ecmp-{}", lab.name("x")));
        std::fs::create_dir_all(&dir).unwrap();
        routers::router_with_client(&mut lab);
        std::fs::write(dir.join("bird.conf"), bird_conf(&dir)).unwrap();
        routers::bird(&mut lab, "router", &dir);
        let mut echo = BTreeMap::new();
        for (n, ip) in NODES {
            lab.add(n);
            lab.attach(n, &[&format!("{ip}/24")]);
            lab.exec_ok(
                n,
                &["ip", "route", "add", "198.51.100.0/24", "via", "192.0.2.1"],
            );
            let bin = binary("ferrolb-echo");
            let pid = lab.spawn(
                n,
                &[
                    bin.to_str().unwrap(),
                    "--http",
                    &format!("{n}@127.0.0.1:9000"),
                ],
                &dir.join(format!("{n}-echo.log")),
            );
            echo.insert(n.to_string(), pid);
            std::fs::write(dir.join(format!("{n}.yaml")), speaker_conf(ip)).unwrap();
        }
        let mut rig = Rig {
            lab,
            dir,
            echo,
            speakers: BTreeMap::new(),
        };
        for (n, _) in NODES {
            rig.start_speaker(n);
        }
        rig
    }

    fn start_speaker(&mut self, n: &str) {
        let pid = routers::speaker(
            &mut self.lab,
            n,
            &self.dir.join(format!("{n}.yaml")),
            n,
            &["--log-level", "debug"],
            &self.dir.join(format!("{n}-speaker.log")),
        );
        self.speakers.insert(n.to_string(), pid);
    }

    fn kernel_route(&self) -> String {
        let out = self
            .lab
            .exec("router", &["ip", "route", "show", "203.0.113.10"]);
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    fn logs(&self) -> String {
        let sock = self.dir.join("bird.ctl");
        let birdc = |cmd: &str| routers::birdc(&self.lab, "router", &sock, cmd);
        let mut s = format!(
            "--- router kernel route\n{}--- bird routes\n{}--- bird protocols\n{}",
            self.kernel_route(),
            birdc("show route all"),
            birdc("show protocols all")
        );
        s.push_str(&routers::read_logs(
            &self.dir,
            &["bird.log", "node1-speaker.log", "node2-speaker.log"],
        ));
        s
    }

    fn wait_for(&self, what: &str, within: Duration, cond: impl Fn(&Rig) -> bool) -> Duration {
        routers::wait_for(what, within, || cond(self), || self.logs())
    }

    /// `n` new connections from the client to the VIP: how many each node served
    /// (failures counted under "failed").
    fn spread(&self, n: u32) -> BTreeMap<String, u32> {
        let code = "import sys,urllib.request
for _ in range(int(sys.argv[1])):
    try:
        print(urllib.request.urlopen('http://203.0.113.10:8080/', timeout=1).read().decode().strip())
    except Exception:
        print('failed')";
        let out = self
            .lab
            .exec("client", &["python3", "-c", code, &n.to_string()]);
        let mut by = BTreeMap::new();
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            *by.entry(line.to_string()).or_insert(0) += 1;
        }
        by
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

#[test]
fn two_speakers_give_the_router_two_paths_and_a_dead_backend_withdraws_one() {
    if !require(
        "bgp ecmp",
        &[
            Need::Root,
            Need::Program("ip"),
            Need::Program("bird"),
            Need::Program("python3"),
        ],
    ) {
        return;
    }
    let mut rig = Rig::start();
    let took = rig.wait_for(
        "a two-path route in the router's kernel table",
        Duration::from_secs(20),
        |r| {
            let route = r.kernel_route();
            route.contains("nexthop via 192.0.2.11") && route.contains("nexthop via 192.0.2.12")
        },
    );
    eprintln!("speakers start to ECMP route in the router's kernel: {took:?}");

    // The client reaches the VIP through both nodes; each node accepts the VIP
    // because its speaker made it local.
    let by = rig.spread(40);
    assert_eq!(by.get("failed"), None, "{by:?}\n{}", rig.logs());
    assert!(
        by.get("node1").is_some_and(|&c| c > 0) && by.get("node2").is_some_and(|&c| c > 0),
        "both paths carry connections: {by:?}"
    );
    eprintln!("40 connections through the router: {by:?}");

    // node1's only backend dies: its health check fails, node1 withdraws, and the
    // router is left with one path.
    let pid = rig.echo.remove("node1").unwrap();
    let t = Instant::now();
    rig.lab.kill(pid, "KILL");
    rig.wait_for("node1's path withdrawn", Duration::from_secs(10), |r| {
        let route = r.kernel_route();
        route.contains("via 192.0.2.12") && !route.contains("192.0.2.11")
    });
    eprintln!("backend killed to path withdrawn: {:?}", t.elapsed());
    let by = rig.spread(20);
    assert_eq!(
        by,
        BTreeMap::from([("node2".to_string(), 20)]),
        "{}",
        rig.logs()
    );
}

#[test]
fn graceful_restart_keeps_both_paths_through_a_crash_and_traffic_returns() {
    if !require(
        "bgp graceful restart with traffic",
        &[
            Need::Root,
            Need::Program("ip"),
            Need::Program("bird"),
            Need::Program("python3"),
        ],
    ) {
        return;
    }
    let mut rig = Rig::start();
    let both = |r: &Rig| {
        let route = r.kernel_route();
        route.contains("nexthop via 192.0.2.11") && route.contains("nexthop via 192.0.2.12")
    };
    rig.wait_for("a two-path route", Duration::from_secs(20), both);
    rig.wait_for("both nodes serving", Duration::from_secs(10), |r| {
        let by = r.spread(20);
        !by.contains_key("failed") && by.len() == 2
    });

    // node1's speaker crashes (SIGKILL: no Cease). BIRD, as graceful-restart helper,
    // keeps node1's path: the router's table does not churn.
    let pid = rig.speakers.remove("node1").unwrap();
    rig.lab.kill(pid, "KILL");
    let t = Instant::now();
    while t.elapsed() < Duration::from_millis(1500) {
        assert!(both(&rig), "path kept during the restart:\n{}", rig.logs());
        std::thread::sleep(Duration::from_millis(50));
    }
    // Meanwhile connections hashed to node1 are refused (its forwarder is part of
    // the speaker): the price of keeping the path. node2's share is unaffected.
    let during = rig.spread(20);
    eprintln!("while node1's speaker is down: {during:?}");
    assert!(during.get("node2").is_some_and(|&c| c > 0), "{during:?}");
    assert_eq!(during.get("node1"), None, "{during:?}");

    // It comes back: session up again, End-of-RIB, and every connection is
    // served by both nodes again, without the route ever having been withdrawn.
    let t = Instant::now();
    rig.start_speaker("node1");
    let took = rig.wait_for("both nodes serving again", Duration::from_secs(15), |r| {
        let by = r.spread(20);
        !by.contains_key("failed") && by.len() == 2
    });
    assert!(both(&rig), "{}", rig.logs());
    eprintln!(
        "speaker restarted to all connections served: {took:?} ({:?} since restart)",
        t.elapsed()
    );
}
