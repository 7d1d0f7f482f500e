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

const PROBER: &str = r#"
import os, signal, socket, sys, time
pid = int(sys.argv[1]); vip = sys.argv[2]; port = int(sys.argv[3]); old = sys.argv[4]
fam = socket.AF_INET6 if ":" in vip else socket.AF_INET
vipb = socket.inet_pton(fam, vip)
raw = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003)); raw.bind(("eth0", 0)); raw.setblocking(False)
t0 = time.monotonic(); os.kill(pid, signal.SIGKILL)
garp = None; ok = None
while time.monotonic() - t0 < 5 and ok is None:
    while True:
        try: f = raw.recv(256)
        except BlockingIOError: break
        if garp is None:
            if f[12:14] == b"\x08\x06" and f[28:32] == vipb and f[38:42] == vipb: garp = time.monotonic() - t0
            if f[12:14] == b"\x86\xdd" and len(f) >= 78 and f[20] == 58 and f[54] == 136 and f[62:78] == vipb: garp = time.monotonic() - t0
    s = socket.socket(fam, socket.SOCK_STREAM); s.settimeout(0.05)
    try:
        s.connect((vip, port)); s.sendall(b"GET / HTTP/1.1\r\nHost: vip\r\nConnection: close\r\n\r\n"); data = b""
        while True:
            c = s.recv(1024)
            if not c: break
            data += c
        body = data.split(b"\r\n\r\n", 1)[-1].decode().strip()
        if body and body != old: ok = time.monotonic() - t0
    except OSError: pass
    finally: s.close()
print(ok, garp)
"#;

fn pct(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * q).round() as usize]
}

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
        let mut served = Vec::new();
        let mut announced = Vec::new();
        for _ in 0..trials {
            let owner = c.wait_served(url, Duration::from_secs(10));
            let pid = c.speaker_pid(&owner).expect("owner runs a speaker");
            let out = c.lab.exec_ok(
                "client",
                &[
                    "python3",
                    "-c",
                    PROBER,
                    &pid.to_string(),
                    vip,
                    "8080",
                    &owner,
                ],
            );
            let text = String::from_utf8_lossy(&out.stdout).to_string();
            let mut it = text.split_whitespace();
            let ok: Option<f64> = it.next().and_then(|v| v.parse().ok());
            let garp: Option<f64> = it.next().and_then(|v| v.parse().ok());
            match ok {
                Some(t) => served.push(t * 1000.0),
                None => println!("  trial failed: no service within 5 s (prober said {text:?})"),
            }
            if let Some(g) = garp {
                announced.push(g * 1000.0);
            }
            c.reap_speaker(&owner);
            c.start_speaker(&owner);
            // Let the restarted node settle (it must not take anything back).
            std::thread::sleep(Duration::from_millis(1500));
        }
        served.sort_by(|a, b| a.partial_cmp(b).unwrap());
        announced.sort_by(|a, b| a.partial_cmp(b).unwrap());
        if served.is_empty() {
            println!("{family}: no successful trial");
            continue;
        }
        println!(
            "{family}: owner SIGKILL -> first successful request: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms ({} of {trials} trials)",
            pct(&served, 0.5),
            pct(&served, 0.99),
            served[served.len() - 1],
            served.len()
        );
        if !announced.is_empty() {
            println!(
                "{family}: owner SIGKILL -> first announcement from the new owner at the client: p50 {:.0} ms, p99 {:.0} ms",
                pct(&announced, 0.5),
                pct(&announced, 0.99)
            );
        }
    }
    println!("(the new owner announces within microseconds of deciding; the time above is detection: dead after 400 ms, confirmed by the other member)");
}
