//! Layer 2 failover measurement (prints figures; asserts nothing about time).
//!
//!   cargo bench -p ferrolb-tests --bench l2_failover            # 20 trials per family
//!   cargo bench -p ferrolb-tests --bench l2_failover -- --trials 5
//!
//! Needs root (network namespaces). Three nodes and a client on one bridge
//! (`ferrolb_tests::l2lab`). Each trial, a prober inside the client
//! namespace SIGKILLs the owner's speaker and, with the same clock, records
//! (a) when the first announcement (gratuitous ARP or unsolicited NA) for
//! the VIP from another node reaches the client, and (b) when the client's
//! first request through the VIP succeeds on another node (new TCP
//! connection every attempt, 50 ms connect timeout). The killed speaker is
//! restarted (it must not take the VIP back) before the next trial.

use ferrolb_tests::l2lab::Cluster;
use std::time::Duration;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let trials: usize = args
        .iter()
        .position(|a| a == "--trials")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    if !ferrolb_tests::require(
        "l2_failover benchmark",
        &[
            ferrolb_tests::Need::Root,
            ferrolb_tests::Need::Program("python3"),
        ],
    ) {
        return;
    }
    let mut c = Cluster::start("m");
    println!("layer 2 failover: {trials} trials per family; 3 nodes, heartbeat 100 ms, dead after 400 ms");
    for (family, vip, url) in [
        ("IPv4", "192.0.2.100", "http://192.0.2.100:8080/"),
        ("IPv6", "2001:db8::100", "http://[2001:db8::100]:8080/"),
    ] {
        let mut stats = ferrolb_tests::l2lab::FailoverStats::default();
        for _ in 0..trials {
            let owner = c.wait_served(url, Duration::from_secs(10));
            let pid = c.speaker_pid(&owner).expect("owner runs a speaker");
            stats.add(&ferrolb_tests::l2lab::probe_failover(
                &c.lab, pid, vip, 8080, &owner,
            ));
            c.reap_speaker(&owner);
            c.start_speaker(&owner);
            // Let the restarted node settle (it must not take anything back).
            std::thread::sleep(Duration::from_millis(1500));
        }
        stats.report(family, trials);
    }
    println!("(the new owner announces within microseconds of deciding; the time above is detection: dead after 400 ms, confirmed by the other member)");
}
