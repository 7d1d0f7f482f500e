//! A process playing MetalLB's layer 2 speaker on a lab node, for the
//! migration tests: it binds memberlist's port (UDP and TCP 7946) and FRR
//! mode's metrics port (TCP 7473) as MetalLB's speaker does beside
//! ferrolb's in the node's network namespace (both run with hostNetwork),
//! announces the VIPs its control file lists with gratuitous ARP and
//! answers ARP requests for them with the node's MAC, as MetalLB's elected
//! owner does. kube-proxy's part (every node accepts traffic for a
//! LoadBalancer address, whoever announces it) is [`accept_vip`]. And a
//! client-side monitor of who answers ARP for a VIP, round after round:
//! the "one announcer at every moment" check.

use crate::netns::Lab;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The fake speaker. Arguments: interface, control file (one VIP per line;
/// `exit` ends it), ready file (written once the ports are bound).
const SPEAKER: &str = r#"
import os, socket, struct, sys, time
iface, control, ready = sys.argv[1], sys.argv[2], sys.argv[3]
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); udp.bind(("0.0.0.0", 7946))
tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM); tcp.bind(("0.0.0.0", 7946)); tcp.listen(4)
# FRR mode's frr-metrics.
frr = socket.socket(socket.AF_INET, socket.SOCK_STREAM); frr.bind(("0.0.0.0", 7473)); frr.listen(4)
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0806)); s.bind((iface, 0))
mac = s.getsockname()[4]; s.settimeout(0.02)
open(ready, "w").write("bound 7946/udp 7946/tcp 7473/tcp\n")
def frame(op, dst, sha, spa, tha, tpa):
    return (dst + sha + b"\x08\x06" + struct.pack("!HHBBH", 1, 0x0800, 6, 4, op) + sha + spa + tha + tpa).ljust(60, b"\x00")
owned = set(); answered = 0
while True:
    try: lines = [l.strip() for l in open(control)]
    except FileNotFoundError: lines = []
    if "exit" in lines: break
    want = {socket.inet_aton(l) for l in lines if l}
    for v in want - owned:
        # Taking over: gratuitous ARP, as MetalLB's new owner sends.
        for _ in range(2): s.send(frame(2, b"\xff" * 6, mac, v, b"\xff" * 6, v))
        print("announcing", socket.inet_ntoa(v), flush=True)
    for v in owned - want: print("withdrawn", socket.inet_ntoa(v), flush=True)
    owned = want
    end = time.time() + 0.02
    while time.time() < end:
        try: f = s.recv(128)
        except socket.timeout: break
        if len(f) < 42 or f[12:14] != b"\x08\x06" or f[20:22] != b"\x00\x01": continue
        tpa = f[38:42]
        if tpa in owned:
            s.send(frame(2, f[22:28], mac, tpa, f[22:28], f[28:32])); answered += 1
print("answered", answered, flush=True)
"#;

/// The ARP monitor (client side). Arguments: interface, own address, VIP,
/// stop file, output file. Every 50 ms a broadcast request, and the MACs
/// that answered it within 40 ms; at most 180 s and 3,600 rounds.
const MONITOR: &str = r#"
import json, os, socket, struct, sys, time
iface, me, vip_s, stop, out = sys.argv[1:6]
vip = socket.inet_aton(vip_s); me = socket.inet_aton(me)
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0806)); s.bind((iface, 0))
mac = s.getsockname()[4]; s.settimeout(0.005)
rounds = []; t0 = time.monotonic()
while not os.path.exists(stop) and time.monotonic() - t0 < 180 and len(rounds) < 3600:
    req = (b"\xff" * 6 + mac + b"\x08\x06" + struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + mac + me + b"\x00" * 6 + vip).ljust(60, b"\x00")
    start = time.monotonic(); s.send(req); seen = set()
    while time.monotonic() - start < 0.04:
        try: f = s.recv(128)
        except socket.timeout: continue
        if f[12:14] == b"\x08\x06" and f[20:22] == b"\x00\x02" and f[28:32] == vip: seen.add(f[22:28].hex(":"))
    rounds.append([round(start - t0, 3), sorted(seen)])
    time.sleep(max(0.0, 0.05 - (time.monotonic() - start)))
with open(out + ".tmp", "w") as f: json.dump(rounds, f)
os.rename(out + ".tmp", out)
"#;

/// MetalLB's speaker on one node.
pub struct FakeSpeaker {
    /// The node.
    pub node: String,
    control: PathBuf,
    /// Its log: what it announced, withdrew and answered.
    pub log: PathBuf,
}

impl FakeSpeaker {
    /// Starts it on `node`'s `eth0` and waits until it has bound its ports.
    pub fn start(lab: &mut Lab, node: &str, dir: &Path) -> FakeSpeaker {
        let control = dir.join(format!("metallb-{node}.control"));
        let ready = dir.join(format!("metallb-{node}.ready"));
        let log = dir.join(format!("metallb-{node}.log"));
        std::fs::write(&control, "").unwrap();
        let _ = std::fs::remove_file(&ready);
        lab.spawn(
            node,
            &[
                "python3",
                "-c",
                SPEAKER,
                "eth0",
                control.to_str().unwrap(),
                ready.to_str().unwrap(),
            ],
            &log,
        );
        let t = Instant::now();
        while !ready.exists() {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "MetalLB's stand-in on {node} could not bind memberlist's port 7946 or FRR's metrics port 7473: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        FakeSpeaker {
            node: node.to_string(),
            control,
            log,
        }
    }

    /// Announces `vips` from now on (none: it answers for nothing).
    pub fn announce(&self, vips: &[&str]) {
        let tmp = self.control.with_extension("tmp");
        std::fs::write(&tmp, vips.join("\n")).unwrap();
        std::fs::rename(&tmp, &self.control).unwrap();
    }

    /// Ends it (MetalLB uninstalled from the node).
    pub fn stop(&self) {
        std::fs::write(&self.control, "exit\n").unwrap();
    }

    /// What it logged.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// kube-proxy's part on `node`: traffic for `vip` is accepted there
/// whoever announces it (a local route in a table of its own, so the
/// speakers' routes in `local` are untouched).
pub fn accept_vip(lab: &Lab, node: &str, vip: &str) {
    let dst = format!("{vip}/32");
    lab.exec_ok(
        node,
        &[
            "ip", "rule", "add", "to", &dst, "lookup", "100", "pref", "100",
        ],
    );
    lab.exec_ok(
        node,
        &[
            "ip", "route", "add", "local", &dst, "dev", "lo", "table", "100",
        ],
    );
}

/// A running [`MONITOR`].
pub struct ArpMonitor {
    stop: PathBuf,
    out: PathBuf,
}

/// One round: seconds since the monitor started, and the MACs that answered.
pub type Round = (f64, Vec<String>);

impl ArpMonitor {
    /// Starts asking for `vip` from `host` (`eth0`, address `me`).
    pub fn start(lab: &mut Lab, host: &str, me: &str, vip: &str, dir: &Path) -> ArpMonitor {
        let stop = dir.join(format!("arp-{vip}.stop"));
        let out = dir.join(format!("arp-{vip}.json"));
        let _ = std::fs::remove_file(&stop);
        let _ = std::fs::remove_file(&out);
        lab.spawn(
            host,
            &[
                "python3",
                "-c",
                MONITOR,
                "eth0",
                me,
                vip,
                stop.to_str().unwrap(),
                out.to_str().unwrap(),
            ],
            &dir.join(format!("arp-{vip}.log")),
        );
        ArpMonitor { stop, out }
    }

    /// Stops it; every round.
    pub fn finish(self) -> Vec<Round> {
        let text = crate::product::stop_and_read(&self.stop, &self.out, "the ARP monitor");
        serde_json::from_str(&text).unwrap()
    }
}

/// MetalLB's BGP speaker on one node, played by ExaBGP: a session from the
/// node's address to the router (AS 65001 to 65000, as the product lab's
/// BIRD expects), advertising the VIPs with the node as next hop.
pub struct FakeBgpSpeaker {
    /// The node.
    pub node: String,
    pid: u32,
    /// Its log.
    pub log: PathBuf,
}

impl FakeBgpSpeaker {
    /// Starts ExaBGP on `node` (address `ip`) advertising `vips`.
    pub fn start(lab: &mut Lab, node: &str, ip: &str, vips: &[&str], dir: &Path) -> FakeBgpSpeaker {
        let conf = dir.join(format!("metallb-{node}-exabgp.conf"));
        let routes: String = vips
            .iter()
            .map(|v| format!("    route {v}/32 next-hop self;\n"))
            .collect();
        std::fs::write(
            &conf,
            format!(
                "neighbor 192.0.2.1 {{\n  router-id {ip};\n  local-address {ip};\n  local-as 65001;\n  peer-as 65000;\n  hold-time 9;\n  static {{\n{routes}  }}\n}}\n"
            ),
        )
        .unwrap();
        let log = dir.join(format!("metallb-{node}-exabgp.log"));
        let pid = lab.spawn(
            node,
            &[
                "env",
                "exabgp_daemon_user=root",
                "exabgp_daemon_daemonize=false",
                "exabgp_api_cli=false",
                "exabgp_log_destination=stdout",
                "exabgp",
                conf.to_str().unwrap(),
            ],
            &log,
        );
        FakeBgpSpeaker {
            node: node.to_string(),
            pid,
            log,
        }
    }

    /// Stops it as MetalLB's speaker leaves a node (its BGPPeer no longer
    /// selects the node, or it is uninstalled): a Cease, the session closed.
    pub fn stop(&self) {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status();
    }

    /// What it logged.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}
