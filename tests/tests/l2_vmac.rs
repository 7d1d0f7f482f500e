//! Virtual MAC mode against the real kernel: three node namespaces and a
//! client on one Linux bridge (the switch), each node running
//! `ferrolb-speaker standalone`. The client is the kernel; its neighbour
//! entries are pinned (`nud permanent`) the way a router or appliance that
//! ignores gratuitous ARP behaves. Needs root; skips loudly without it (and
//! fails under CI's no-skip rule).

use ferrolb_tests::l2lab::{config, vmac_config, Cluster, NODES};
use ferrolb_tests::{require, Need};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

const URL4: &str = "http://192.0.2.100:8080/";
const URL6: &str = "http://[2001:db8::100]:8080/";

fn needs(name: &str) -> bool {
    require(
        name,
        &[
            Need::Root,
            Need::Program("ip"),
            Need::Program("bridge"),
            Need::Program("python3"),
        ],
    )
}

fn derived(vip: &str) -> String {
    ferrolb_l2::vmac::derive(vip.parse().expect("ip")).to_string()
}

/// Pins the client's neighbour entry for `vip` to `mac`: it never asks again.
fn pin(c: &Cluster, vip: &str, mac: &str) {
    c.lab.exec_ok(
        "client",
        &[
            "ip",
            "neigh",
            "replace",
            vip,
            "lladdr",
            mac,
            "nud",
            "permanent",
            "dev",
            "eth0",
        ],
    );
}

/// Waits until `node`'s speaker is the only one answering ARP for `vip`
/// (the positive signal that a takeover happened).
fn wait_answers(c: &Cluster, vip: &str, mac: &str, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        if c.arp_answers(vip) == BTreeSet::from([mac.to_string()]) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{vip} never answered by {mac} alone; logs:\n{}",
            c.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_pinned_client_is_served_across_a_sigkill_failover_only_with_a_virtual_mac() {
    if !needs("a_pinned_client_is_served_across_a_sigkill_failover_only_with_a_virtual_mac") {
        return;
    }
    let vmac = derived("192.0.2.100");

    // Without a virtual MAC: the pinned entry names the dead node's MAC, and
    // the new owner's announcements cannot move it.
    {
        let mut c = Cluster::start("vn");
        let owner = c.wait_served(URL4, Duration::from_secs(10));
        pin(&c, "192.0.2.100", &c.lab.mac(&owner));
        c.kill_speaker(&owner);
        let deadline = Instant::now() + Duration::from_secs(5);
        let next = loop {
            let answers = c.arp_answers("192.0.2.100");
            let taken = NODES
                .iter()
                .map(|(n, _, _)| n.to_string())
                .find(|n| *n != owner && answers.contains(&c.lab.mac(n)));
            if taken.is_some() || Instant::now() > deadline {
                break taken;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let next = next.unwrap_or_else(|| panic!("no takeover; logs:\n{}", c.logs()));
        assert_eq!(
            c.neighbour_mac("192.0.2.100"),
            c.lab.mac(&owner),
            "the pinned entry stayed"
        );
        for _ in 0..3 {
            assert_eq!(
                c.get(URL4, 1.0),
                None,
                "{next} took over, yet the pinned client still sends to {owner}'s MAC, where no speaker serves"
            );
        }
    }

    // With one: the entry names the group's MAC, which moves with the group.
    let mut c = Cluster::start_with_config("vm", None, &vmac_config());
    let owner = c.wait_served(URL4, Duration::from_secs(10));
    assert_eq!(
        c.arp_answers("192.0.2.100"),
        BTreeSet::from([vmac.clone()]),
        "the owner answers with the virtual MAC; logs:\n{}",
        c.logs()
    );
    assert_eq!(c.neighbour_mac("192.0.2.100"), vmac);
    assert_eq!(
        c.holders(&vmac),
        vec![owner.clone()],
        "only the owner holds it"
    );
    // The announcements came from the virtual MAC: the switch learned it on the owner's port.
    assert_eq!(c.lab.fdb_host(&vmac).as_deref(), Some(owner.as_str()));
    pin(&c, "192.0.2.100", &vmac);

    let t = Instant::now();
    c.kill_speaker(&owner);
    let next = c.wait_served(URL4, Duration::from_secs(5));
    eprintln!("pinned client served again {:?} after SIGKILL", t.elapsed());
    assert_ne!(next, owner);
    assert_eq!(c.neighbour_mac("192.0.2.100"), vmac, "still pinned");
    assert_eq!(
        c.lab.fdb_host(&vmac).as_deref(),
        Some(next.as_str()),
        "the switch moved the virtual MAC to the new owner's port"
    );
    // The killed speaker could not remove its link; its node passes traffic
    // for the MAC only if the switch floods it, and the switch does not.
    assert!(c.holders(&vmac).contains(&next));

    // The old owner returns: its start removes the link it left, the VIP
    // stays, and the switch's entry never flaps back.
    c.start_speaker(&owner);
    let deadline = Instant::now() + Duration::from_secs(5);
    while c.holders(&vmac) != vec![next.clone()] {
        assert!(
            Instant::now() < deadline,
            "holders {:?}; logs:\n{}",
            c.holders(&vmac),
            c.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    for _ in 0..10 {
        assert_eq!(c.lab.fdb_host(&vmac).as_deref(), Some(next.as_str()));
        assert_eq!(c.get(URL4, 1.0).as_deref(), Some(next.as_str()));
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(c.holders(&vmac), vec![next.clone()]);
}

#[test]
fn ipv6_answers_with_the_virtual_mac_and_a_pinned_client_survives_failover() {
    if !needs("ipv6_answers_with_the_virtual_mac_and_a_pinned_client_survives_failover") {
        return;
    }
    let vmac = derived("2001:db8::100");
    let mut c = Cluster::start_with_config("v6", None, &vmac_config());
    let owner = c.wait_served(URL6, Duration::from_secs(10));
    assert_eq!(
        c.neighbour_mac("2001:db8::100"),
        vmac,
        "NA carried the virtual MAC"
    );
    assert_eq!(c.holders(&vmac), vec![owner.clone()]);
    // The link sends nothing of its own: no IPv6 address, so no DAD or MLD
    // from the virtual MAC that could pull the switch's entry.
    let out = c.lab.exec_ok(&owner, &["ip", "-o", "-6", "addr", "show"]);
    let link = ferrolb_l2::vmac::LINK_NAME_PREFIX;
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains(link),
        "the virtual MAC link has no IPv6 address: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    pin(&c, "2001:db8::100", &vmac);
    c.kill_speaker(&owner);
    let next = c.wait_served(URL6, Duration::from_secs(5));
    assert_ne!(next, owner);
    assert_eq!(c.lab.fdb_host(&vmac).as_deref(), Some(next.as_str()));
}

#[test]
fn a_virtual_mac_that_cannot_be_made_falls_back_to_the_node_mac() {
    if !needs("a_virtual_mac_that_cannot_be_made_falls_back_to_the_node_mac") {
        return;
    }
    // Every node already has a link with the name the virtual MAC's would
    // take (another program's), so none can make it.
    let vmac = ferrolb_l2::vmac::derive("192.0.2.100".parse().expect("ip"));
    let mut c = Cluster::start_with_config("vf", None, &vmac_config());
    // Stopped first, so that the names are taken before anything is owned.
    for (n, _, _) in NODES {
        c.kill_speaker(n);
    }
    for (n, _, _) in NODES {
        let name = ferrolb_l2::vmac::link_name(vmac, c.lab.ifindex(n, "eth0"));
        // The link a speaker may have made before it was stopped.
        let _ = c.lab.exec(n, &["ip", "link", "del", &name]);
        c.lab.exec_ok(
            n,
            &[
                "ip", "link", "add", &name, "type", "veth", "peer", "name", "flbtaken",
            ],
        );
    }
    for (n, _, _) in NODES {
        c.start_speaker(n);
    }
    let owner = c.wait_served(URL4, Duration::from_secs(10));
    assert_eq!(
        c.arp_answers("192.0.2.100"),
        BTreeSet::from([c.lab.mac(&owner)]),
        "answered with the node MAC; logs:\n{}",
        c.logs()
    );
    assert!(c.counter(&owner, "ferrolb_l2_virtual_mac_fallbacks_total") >= 1);
    assert_eq!(c.counter(&owner, "ferrolb_l2_virtual_macs"), 0);
    let log = c.logs();
    assert!(
        log.contains("cannot hold the virtual MAC")
            && log.contains("exists and is not this virtual MAC's"),
        "one clear line naming the cause; logs:\n{log}"
    );
    // The other program's link is untouched.
    let out = c
        .lab
        .exec_ok(&owner, &["ip", "-o", "link", "show", "flbtaken"]);
    assert!(!out.stdout.is_empty());
}

#[test]
fn a_client_that_drops_gratuitous_arp_follows_a_virtual_mac_at_once() {
    if !needs("a_client_that_drops_gratuitous_arp_follows_a_virtual_mac_at_once")
        || !require(
            "a_client_that_drops_gratuitous_arp_follows_a_virtual_mac_at_once",
            &[Need::Program("nft")],
        )
    {
        return;
    }
    let mut figures = Vec::new();
    for (mode, tag, text) in [
        ("virtual MAC", "gv", vmac_config()),
        ("node MAC", "gn", config()),
    ] {
        let mut c = Cluster::start_with_config(tag, None, &text);
        c.drop_announcements();
        let owner = c.wait_served(URL4, Duration::from_secs(10));
        let before = c.dropped_announcements();
        let t = Instant::now();
        c.kill_speaker(&owner);
        // The kernel's neighbour timers bound the node-MAC case: the entry
        // stays reachable for up to 45 s, then delay and probes (about 8 s).
        let deadline = t + Duration::from_secs(90);
        let next = loop {
            if let Some(n) = c.get(URL4, 0.3).filter(|n| *n != owner) {
                break n;
            }
            assert!(
                Instant::now() < deadline,
                "{mode}: never served again; logs:\n{}",
                c.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let took = t.elapsed();
        assert!(
            c.dropped_announcements() > before,
            "{mode}: the new owner's gratuitous ARP reached the client and was dropped"
        );
        if mode == "virtual MAC" {
            assert!(
                took < Duration::from_secs(5),
                "{mode}: the client's entry stays right, so only detection counts ({took:?}); logs:\n{}",
                c.logs()
            );
            wait_answers(
                &c,
                "192.0.2.100",
                &derived("192.0.2.100"),
                Duration::from_secs(2),
            );
        }
        figures.push(format!("{mode}: served by {next} {took:?} after SIGKILL"));
    }
    // Figures, not limits (tests/bench/l2_failover.sh has the percentiles).
    for f in figures {
        eprintln!("a client that drops gratuitous ARP: {f}");
    }
}

#[test]
fn fifty_failovers_and_returns_never_leave_two_live_holders() {
    if !needs("fifty_failovers_and_returns_never_leave_two_live_holders") {
        return;
    }
    let vmac = derived("192.0.2.100");
    let mut c = Cluster::start_with_config("v50", None, &vmac_config());
    let mut owner = c.wait_served(URL4, Duration::from_secs(10));
    let mut moves = BTreeSet::new();
    for round in 0..50 {
        c.kill_speaker(&owner);
        let next = c.wait_served(URL4, Duration::from_secs(5));
        assert_ne!(next, owner, "round {round}");
        // While the old owner is down, its left-over link is the only other
        // one, and the switch sends the MAC to the new owner.
        let live: Vec<String> = c
            .holders(&vmac)
            .into_iter()
            .filter(|h| *h != owner)
            .collect();
        assert_eq!(
            live,
            vec![next.clone()],
            "round {round}; logs:\n{}",
            c.logs()
        );
        assert_eq!(
            c.lab.fdb_host(&vmac).as_deref(),
            Some(next.as_str()),
            "round {round}"
        );
        c.start_speaker(&owner);
        // Converged: the returned node removed its link and took nothing back.
        let deadline = Instant::now() + Duration::from_secs(5);
        while c.holders(&vmac) != vec![next.clone()] {
            assert!(
                Instant::now() < deadline,
                "round {round}: holders {:?}; logs:\n{}",
                c.holders(&vmac),
                c.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(
            c.get(URL4, 1.0).as_deref(),
            Some(next.as_str()),
            "round {round}"
        );
        assert_eq!(
            c.lab.fdb_host(&vmac).as_deref(),
            Some(next.as_str()),
            "round {round}"
        );
        moves.insert((owner.clone(), next.clone()));
        owner = next;
    }
    eprintln!("50 failovers and returns; moves seen: {moves:?}");
}
