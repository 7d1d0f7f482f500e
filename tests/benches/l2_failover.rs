//! Layer 2 failover measurement (prints figures; asserts nothing about time).
//!
//!   cargo bench -p ferrolb-tests --bench l2_failover            # 20 trials each
//!   cargo bench -p ferrolb-tests --bench l2_failover -- --trials 5
//!   cargo bench -p ferrolb-tests --bench l2_failover -- --only "fast profile, link"
//!
//! Needs root (network namespaces) and nft. Three nodes and a client on one
//! bridge (`ferrolb_tests::l2lab`). Each trial, a prober inside the client
//! namespace acts on the owner (SIGKILL of its speaker, or its link set
//! down) and, with the same clock, records (a) when the first announcement
//! (gratuitous ARP or unsolicited NA) for the VIP from another node reaches
//! the client, and (b) when the client's first request through the VIP
//! succeeds on another node (new TCP connection every attempt, 50 ms
//! connect timeout, a new one every 5 ms). The owner is restored (speaker
//! restarted, link up; it must not take the VIP back, and the bench counts
//! the trials after which it did) before the next trial.
//!
//! Every combination of MAC (node, virtual) and failover profile (default:
//! heartbeat 100 ms, dead after 400 ms; fast: also pings every 20 ms to two
//! ring successors, down 80 ms after they stop) runs: SIGKILL over IPv4
//! and IPv6, link down, and a client that drops gratuitous ARP (nft). That
//! last one with the node MAC waits for the client's neighbour entry to fail
//! (about 30 s a trial), so it runs `--slow-trials` times (3 by default).

use ferrolb_tests::l2lab::{config, probe_failover_with, vmac_config, Cluster, FailoverStats};
use std::time::Duration;

const FAST: &str = "failover: {profile: fast}\n";

use ferrolb_tests::bench_arg as arg;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let trials = arg(&args, "--trials", 20);
    let slow_trials = arg(&args, "--slow-trials", 3);
    // `--only TEXT`: run the setups and scenarios whose label contains TEXT.
    let only: String = arg(&args, "--only", String::new());
    if !ferrolb_tests::require(
        "l2_failover benchmark",
        &[
            ferrolb_tests::Need::Root,
            ferrolb_tests::Need::Program("python3"),
            ferrolb_tests::Need::Program("nft"),
        ],
    ) {
        return;
    }
    println!("layer 2 failover: {trials} trials each ({slow_trials} for a client dropping gratuitous ARP with the node MAC); 3 nodes");
    let setups = [
        ("node MAC, default profile", config(), 1500),
        ("virtual MAC, default profile", vmac_config(), 1500),
        ("node MAC, fast profile", format!("{}{FAST}", config()), 600),
        (
            "virtual MAC, fast profile",
            format!("{}{FAST}", vmac_config()),
            600,
        ),
    ];
    let scenarios = [
        ("SIGKILL, IPv4", "192.0.2.100", "http://192.0.2.100:8080/"),
        (
            "SIGKILL, IPv6",
            "2001:db8::100",
            "http://[2001:db8::100]:8080/",
        ),
        ("link down, IPv4", "192.0.2.100", "http://192.0.2.100:8080/"),
        (
            "SIGKILL, client drops gratuitous ARP",
            "192.0.2.100",
            "http://192.0.2.100:8080/",
        ),
    ];
    for (n, (setup, text, settle_ms)) in setups.into_iter().enumerate() {
        let virtual_mac = setup.starts_with("virtual");
        let wanted = |scenario: &str| format!("{setup}, {scenario}").contains(&only);
        if !scenarios.iter().any(|(s, _, _)| wanted(s)) {
            continue;
        }
        let mut c = Cluster::start_with_config(&format!("m{n}"), None, &text);
        let settle = Duration::from_millis(settle_ms);
        for &(scenario, vip, url) in &scenarios {
            if !wanted(scenario) {
                continue;
            }
            let drops = scenario.contains("drops");
            if drops {
                c.drop_announcements();
            }
            let (n_trials, limit): (usize, f64) = if drops && !virtual_mac {
                (slow_trials, 90.0)
            } else {
                (trials, 5.0)
            };
            let mut stats = FailoverStats::default();
            let (mut moved_back, mut unreached) = (0, 0);
            // A client that ignores announcements follows a move only when
            // its neighbour entry fails (about 30 s).
            let reach = Duration::from_secs_f64(limit.max(10.0));
            for trial in 0..n_trials {
                let Some(owner) = c.try_wait_served(url, reach) else {
                    println!("  trial {trial}: the client reached no node within {reach:?}; trial not counted");
                    unreached += 1;
                    continue;
                };
                let cut = scenario.starts_with("link");
                let action = if cut {
                    format!("cut:{}", c.lab.name(&owner))
                } else {
                    c.speaker_pid(&owner)
                        .expect("owner runs a speaker")
                        .to_string()
                };
                stats.add(&probe_failover_with(
                    &c.lab, &action, vip, 8080, &owner, limit,
                ));
                if cut {
                    c.lab.uncut(&owner);
                } else {
                    c.reap_speaker(&owner);
                    c.start_speaker(&owner);
                }
                // Let the returning node settle (it must not take anything back).
                std::thread::sleep(settle);
                if c.get(url, 1.0).as_deref() == Some(owner.as_str()) {
                    moved_back += 1;
                }
            }
            stats.report(&format!("{setup}, {scenario}"), n_trials);
            println!("  the VIP went back to the returned node after {moved_back} of {n_trials} trials; {unreached} trials found no node serving");
        }
    }
    println!("(default profile: heartbeats every 100 ms to all, down after 400 ms; fast profile: the same plus pings every 20 ms to two ring successors, down 80 ms after they stop: docs/l2.md)");
}
