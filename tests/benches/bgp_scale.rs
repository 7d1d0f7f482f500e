//! BGP measurements against BIRD 2 (prints figures; asserts nothing about time).
//!
//!   tests/bench/bgp_scale.sh            # 10,000 VIPs
//!   tests/bench/bgp_scale.sh --n 2000
//!
//! Needs root and `bird2`. BIRD in one namespace, the speaker in another.
//! (1) 10,000 services, each with its own VIP: time from the speaker's start
//! until BIRD holds every route, and the UPDATE count. (2) one service
//! added by SIGHUP reload: time until its route is in BIRD, 10 trials.

use ferrolb_tests::netns::Lab;
use ferrolb_tests::{require, routers, Need};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n: u32 = args
        .iter()
        .position(|a| a == "--n")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    if !require(
        "bgp_scale benchmark",
        &[Need::Root, Need::Program("bird"), Need::Program("birdc")],
    ) {
        return;
    }
    let (mut lab, dir) = routers::router_and_node("s", "bgpscale");
    std::fs::write(
        dir.join("bird.conf"),
        "router id 192.0.2.1;\nprotocol device { }\nprotocol bgp ferrolb {\n  local 192.0.2.1 as 65000;\n  neighbor 192.0.2.11 as 65001;\n  passive on;\n  ipv4 { import all; export none; };\n}\n",
    )
    .unwrap();
    let sock = routers::bird(&mut lab, "router", &dir);
    std::thread::sleep(Duration::from_millis(500));
    let count = |lab: &Lab| -> usize {
        let text = routers::birdc(lab, "router", &sock, "show route count");
        text.split_whitespace()
            .zip(text.split_whitespace().skip(1))
            .find(|(_, w)| w.starts_with("of"))
            .and_then(|(c, _)| c.parse().ok())
            .unwrap_or(0)
    };
    let services = |k: u32| -> String {
        (0..k)
            .map(|i| {
                format!(
                    "  - {{name: s{i}, ip: {}}}\n",
                    Ipv4Addr::from(0xcb00_0000u32 + i)
                )
            })
            .collect()
    };
    let config = |k: u32| {
        format!(
            "pools: [{{name: vips, addresses: [203.0.0.0/16]}}]\nservices:\n{}bgp:\n  routerId: 192.0.2.11\n  peers: [{{name: bird, address: 192.0.2.1, asn: 65000, myAsn: 65001, holdTime: 90s}}]\n  advertisements: [{{}}]\n",
            services(k)
        )
    };
    let cfg = dir.join("speaker.yaml");
    std::fs::write(&cfg, config(n)).unwrap();
    let t = Instant::now();
    let speaker = routers::speaker(
        &mut lab,
        "node",
        &cfg,
        "n1",
        &["--reload-poll", "1h", "--log-level", "warn"],
        &dir.join("speaker.log"),
    );
    let last = until(n, t, || count(&lab));
    println!("{n} VIPs: speaker start to all {last} routes in BIRD: {:?} (includes config parsing, allocation and session setup)", t.elapsed());
    // One more service, by SIGHUP: time to its route.
    let mut lat = Vec::new();
    for k in 0..10 {
        std::fs::write(&cfg, config(n + k + 1)).unwrap();
        let t = Instant::now();
        let _ = std::process::Command::new("kill")
            .args(["-HUP", &speaker.to_string()])
            .status();
        while count(&lab) < (n + k + 1) as usize && t.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(2));
        }
        lat.push(t.elapsed());
    }
    lat.sort();
    println!("service added (SIGHUP reload of {n} services) to its route in BIRD: p50 {:?}, max {:?} over 10 trials", lat[5], lat[9]);
    drop(lab);
    let _ = std::fs::remove_dir_all(&dir);
    gobgp(n, &config(n));
}

/// (3) The same table into GoBGP (passive, so its 4-7 s connect delay does not
/// count): time from the speaker's start until `gobgp global rib summary` shows
/// every route.
fn gobgp(n: u32, config: &str) {
    if !ferrolb_tests::available(Need::Program("gobgpd"))
        || !ferrolb_tests::available(Need::Program("gobgp"))
    {
        println!("GoBGP: not installed (apt-get install gobgpd); skipped");
        return;
    }
    let (mut lab, dir) = routers::router_and_node("t", "bgpscale");
    let conf = dir.join("gobgpd.toml");
    std::fs::write(
        &conf,
        "[global.config]\n  as = 65000\n  router-id = \"192.0.2.1\"\n  local-address-list = [\"192.0.2.1\"]\n\
         [[neighbors]]\n  [neighbors.config]\n    neighbor-address = \"192.0.2.11\"\n    peer-as = 65001\n\
         \x20 [neighbors.transport.config]\n    passive-mode = true\n",
    )
    .unwrap();
    routers::gobgpd(&mut lab, "router", &conf, &dir.join("gobgpd.log"));
    std::thread::sleep(Duration::from_millis(1000));
    let count = |lab: &Lab| -> usize {
        let text = routers::gobgp(lab, "router", &["global", "rib", "summary", "-a", "ipv4"]);
        // "Table ipv4-unicast\nDestination: 10000, Path: 10000"
        text.split("Destination:")
            .nth(1)
            .and_then(|r| r.split(',').next())
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    let cfg = dir.join("speaker.yaml");
    std::fs::write(&cfg, config.replace("name: bird,", "name: gobgp,")).unwrap();
    let t = Instant::now();
    routers::speaker(
        &mut lab,
        "node",
        &cfg,
        "n1",
        &["--log-level", "warn"],
        &dir.join("speaker.log"),
    );
    let last = until(n, t, || count(&lab));
    println!(
        "{n} VIPs: speaker start to all {last} routes in GoBGP: {:?}",
        t.elapsed()
    );
    drop(lab);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Polls `count` every 20 ms until it reaches `n` (at most 60 s after `t`); the last count.
fn until(n: u32, t: Instant, count: impl Fn() -> usize) -> usize {
    loop {
        let last = count();
        if last >= n as usize || t.elapsed() >= Duration::from_secs(60) {
            return last;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
