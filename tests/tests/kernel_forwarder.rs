//! `forwarder: {mode: kernel}` in the real speaker (`ferrolb-speaker
//! standalone`, as a plain host runs it): the speaker announces the VIPs
//! over layer 2 to a client namespace, loads the eBPF program, attaches it
//! and feeds it its ports, backends and their health; the client is the
//! kernel's TCP and UDP stack. Kernel service is told from user-space
//! service by what the client gets: the program balances with Maglev on
//! the client address, the user-space forwarder here (round robin) would
//! spread one client's addresses evenly over both backends, and its
//! connection counters stay at zero.

use ferrolb_tests::kernel_lab::{self, maglev_choice};
use ferrolb_tests::netns::Lab;
use ferrolb_tests::speaker::metric_sum;
use ferrolb_tests::{binary, require, Need};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

const VIP4: &str = "10.10.0.100";
const VIP6: &str = "fd10::100";
const CLIENTS: u8 = 16;
const METRICS: u16 = 9470;

/// N connections one after another, each a GET with `Connection: close`,
/// from one source address: prints "SERVED FAILED".
const CHURN: &str = r#"
import socket, sys
vip, port, n, src = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
ok = bad = 0
for _ in range(n):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM); s.settimeout(0.5)
    try:
        s.bind((src, 0)); s.connect((vip, port))
        s.sendall(b"GET / HTTP/1.1\r\nHost: vip\r\nConnection: close\r\n\r\n"); data = b""
        while True:
            c = s.recv(4096)
            if not c: break
            data += c
        ok += data.startswith(b"HTTP/1.1 200")
        bad += not data.startswith(b"HTTP/1.1 200")
    except OSError:
        bad += 1
    finally:
        s.close()
print(ok, bad)
"#;

/// For SECONDS, one `Connection: close` GET after another, the source
/// addresses taken in turn: prints "start EPOCH" (wall clock), then
/// "T SRC BODY" per request (T: seconds since the start, BODY "-" when it
/// failed), at most 20,000 requests.
const LOAD: &str = r#"
import socket, sys, time
vip, port, secs, srcs = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4:]
t0 = time.monotonic(); i = 0; out = ["start %.6f" % time.time()]
while time.monotonic() - t0 < secs and i < 20000:
    src = srcs[i % len(srcs)]; i += 1
    t = time.monotonic() - t0
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM); s.settimeout(0.5)
    body = "-"
    try:
        s.bind((src, 0)); s.connect((vip, port))
        s.sendall(b"GET / HTTP/1.1\r\nHost: vip\r\nConnection: close\r\n\r\n"); data = b""
        while True:
            c = s.recv(4096)
            if not c: break
            data += c
        if data.startswith(b"HTTP/1.1 200"):
            body = data.split(b"\r\n\r\n", 1)[-1].decode().strip() or "-"
    except OSError:
        pass
    finally:
        s.close()
    out.append("%.4f %s %s" % (t, src, body))
print("\n".join(out))
"#;

struct Setup {
    lab: Lab,
    /// Backend name -> the pid of its echo server.
    backends: BTreeMap<String, u32>,
    log: PathBuf,
    /// The speaker's command line and pid.
    cmd: Vec<String>,
    speaker: u32,
    cfg: PathBuf,
}

/// Health checks every 100 ms, one failure takes a backend out.
const FAST_CHECKS: &str = "{type: tcp, interval: 100ms, timeout: 90ms, rise: 1, fall: 1}";

fn config() -> String {
    config_with(FAST_CHECKS)
}

/// The lab's configuration with the TCP ports' `healthCheck`.
fn config_with(health: &str) -> String {
    let ports = |port: u16, b: &[&str]| {
        let list: Vec<String> = b.iter().map(|x| format!("\"{x}\"")).collect();
        format!(
            "{{port: {port}, backends: [{}], healthCheck: {health}}}",
            list.join(", ")
        )
    };
    format!(
        "pools: [{{name: vips, addresses: [\"{VIP4}\", \"{VIP6}\"]}}]
l2: [{{pools: [vips], interfaces: [to-client]}}]
members: [{{name: lb, address: \"10.10.0.1:7946\"}}]
forwarder: {{mode: kernel}}
services:
  - name: web
    ip: {VIP4}
    ports:
      - {}
      - {{port: 53, protocol: UDP, backends: [\"10.11.1.2:8053\", \"10.11.2.2:8053\"]}}
  - name: web6
    ip: \"{VIP6}\"
    ports:
      - {}
      - {{port: 53, protocol: UDP, backends: [\"[fd11:1::2]:8053\", \"[fd11:2::2]:8053\"]}}
",
        ports(80, &["10.11.1.2:8080", "10.11.2.2:8080"]),
        ports(80, &["[fd11:1::2]:8080", "[fd11:2::2]:8080"]),
    )
}

/// The shared lab (client, `lb`, backends b1 and b2), then the speaker in
/// `lb`, run through `wrap` (a command prefix, e.g. setpriv).
fn setup(tag: &str, wrap: &[&str]) -> Setup {
    setup_with(tag, wrap, &config())
}

/// [`setup`] with another configuration.
fn setup_with(tag: &str, wrap: &[&str], config: &str) -> Setup {
    setup_full(tag, wrap, config, &[])
}

/// [`setup_with`] and more speaker arguments.
fn setup_full(tag: &str, wrap: &[&str], config: &str, extra: &[&str]) -> Setup {
    let (mut lab, backends) = kernel_lab::lab(tag, CLIENTS);
    let dir = std::env::temp_dir().join(lab.name("kf"));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("config.yaml");
    std::fs::write(&cfg, config).unwrap();
    let log = dir.join("speaker.log");
    let speaker = binary("ferrolb-speaker");
    let metrics = format!("127.0.0.1:{METRICS}");
    let mut cmd: Vec<&str> = wrap.to_vec();
    cmd.extend([
        speaker.to_str().unwrap(),
        "standalone",
        "--config",
        cfg.to_str().unwrap(),
        "--node",
        "lb",
        "--metrics-address",
        &metrics,
        "--log-level",
        "debug",
    ]);
    cmd.extend(extra);
    let speaker_pid = lab.spawn("lb", &cmd, &log);
    Setup {
        lab,
        backends,
        log,
        cmd: cmd.iter().map(|c| c.to_string()).collect(),
        speaker: speaker_pid,
        cfg,
    }
}

impl Setup {
    /// Starts the speaker again (the same command line), logging on.
    fn restart_speaker(&mut self) {
        let log = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.log)
            .unwrap();
        let cmd: Vec<&str> = self.cmd.iter().map(String::as_str).collect();
        let child = std::process::Command::new("ip")
            .args(["netns", "exec", &self.lab.name("lb")])
            .args(&cmd)
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.speaker = child.id();
        self.lab.adopt(child);
    }

    fn metrics(&self) -> String {
        self.lab.metrics_on("lb", METRICS)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until `ok` holds for the metrics body, or fails with the log.
    fn wait_metrics(&self, what: &str, ok: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let m = self.metrics();
            if ok(&m) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{what} not seen in 20 s; metrics:\n{}\nlog:\n{}",
                m.lines()
                    .filter(|l| l.contains("kernel") || l.contains("mode"))
                    .collect::<Vec<_>>()
                    .join("\n"),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn gets(&self, vip: &str, v6: bool) -> BTreeMap<String, Option<String>> {
        kernel_lab::gets(&self.lab, vip, 80, &kernel_lab::sources(CLIENTS, v6), 3.0)
    }

    fn udp(&self, v6: bool) -> BTreeMap<String, Option<String>> {
        let vip = if v6 { VIP6 } else { VIP4 };
        kernel_lab::udp(&self.lab, vip, 53, &kernel_lab::sources(CLIENTS, v6))
    }
}

fn needs(test: &str, more: &[Need]) -> bool {
    let mut n = vec![
        Need::Root,
        Need::Program("ip"),
        Need::Program("python3"),
        Need::BpfProgram,
    ];
    n.extend_from_slice(more);
    require(test, &n)
}

fn mode_is(m: &str, service: &str, port: &str, mode: &str) -> bool {
    metric_sum(
        m,
        "ferrolb_forwarder_mode",
        &[
            &format!("service=\"{service}\""),
            &format!("port=\"{port}\""),
            &format!("mode=\"{mode}\""),
        ],
    ) == 1.0
}

#[test]
fn kernel_mode_serves_both_families_and_protocols_from_the_program_and_follows_health() {
    if !needs(
        "kernel_mode_serves_both_families_and_protocols_from_the_program_and_follows_health",
        &[],
    ) {
        return;
    }
    let mut s = setup("kfa", &[]);
    s.wait_metrics("every port in kernel mode", |m| {
        mode_is(m, "web", "80/TCP", "kernel")
            && mode_is(m, "web", "53/UDP", "kernel")
            && mode_is(m, "web6", "80/TCP", "kernel")
            && mode_is(m, "web6", "53/UDP", "kernel")
            && metric_sum(m, "ferrolb_kernel_datapath_active", &[]) == 1.0
    });
    let v4 = [("10.11.1.2:8080", "b1"), ("10.11.2.2:8080", "b2")];
    let v6 = [("[fd11:1::2]:8080", "b1"), ("[fd11:2::2]:8080", "b2")];
    let udp = [("10.11.1.2:8053", "b1"), ("10.11.2.2:8053", "b2")];
    for (vip, table, is6) in [(VIP4, &v4, false), (VIP6, &v6, true)] {
        let got = s.gets(vip, is6);
        assert_eq!(got.len(), CLIENTS as usize, "{vip}: {got:?}\n{}", s.log());
        for (src, body) in &got {
            assert_eq!(
                body.as_deref(),
                Some(maglev_choice(table, src).as_str()),
                "{vip} from {src}: the program's Maglev choice; all: {got:?}"
            );
        }
    }
    let udp6 = [("[fd11:1::2]:8053", "b1"), ("[fd11:2::2]:8053", "b2")];
    for (table, v6) in [(&udp, false), (&udp6, true)] {
        let got = s.udp(v6);
        assert_eq!(got.len(), CLIENTS as usize, "{got:?}");
        for (src, body) in &got {
            let name = body.as_deref().and_then(|b| b.split(':').next());
            assert_eq!(
                name,
                Some(maglev_choice(table, src).as_str()),
                "UDP from {src}: {body:?}"
            );
        }
    }
    // The program counted them, and user space forwarded none.
    s.wait_metrics("the program's flow counters", |m| {
        metric_sum(
            m,
            "ferrolb_kernel_flows_total",
            &["service=\"web\"", "port=\"80/TCP\""],
        ) >= CLIENTS as f64
            && metric_sum(m, "ferrolb_kernel_flows_total", &["service=\"web6\""]) >= CLIENTS as f64
            && metric_sum(
                m,
                "ferrolb_kernel_backend_flows_total",
                &["backend=\"10.11.1.2:8080\""],
            ) >= 1.0
    });
    let m = s.metrics();
    assert_eq!(
        metric_sum(&m, "ferrolb_connections_total", &[]),
        0.0,
        "user space forwarded connections:\n{m}"
    );
    // More connections from one client than the NAT range had when it was
    // 61000-65535: every one is served (one client's ports never collide).
    let churn = s.lab.exec(
        "client",
        &["python3", "-c", CHURN, VIP4, "80", "6000", "10.10.0.2"],
    );
    let out = String::from_utf8_lossy(&churn.stdout);
    assert_eq!(out.trim(), "6000 0", "served, failed:\n{}", s.log());
    // b1 dies: its health check takes it out of the program's table.
    let b1 = s.backends["b1"];
    s.lab.kill(b1, "KILL");
    s.wait_metrics("b1 down", |m| {
        metric_sum(m, "ferrolb_backend_up", &["backend=\"10.11.1.2:8080\""]) == 0.0
            && metric_sum(m, "ferrolb_backend_up", &["backend=\"[fd11:1::2]:8080\""]) == 0.0
    });
    // The maps follow on the next health tick (100 ms).
    std::thread::sleep(Duration::from_millis(400));
    for (vip, is6) in [(VIP4, false), (VIP6, true)] {
        let got = s.gets(vip, is6);
        assert!(
            got.values().all(|b| b.as_deref() == Some("b2")),
            "{vip} after b1 died: {got:?}"
        );
    }
    let m = s.metrics();
    assert_eq!(metric_sum(&m, "ferrolb_connections_total", &[]), 0.0);
    assert_eq!(
        metric_sum(&m, "ferrolb_kernel_datapath_fallbacks_total", &[]),
        0.0
    );
}

#[test]
fn without_cap_bpf_kernel_ports_fall_back_to_user_space_and_say_so() {
    if !needs(
        "without_cap_bpf_kernel_ports_fall_back_to_user_space_and_say_so",
        &[Need::Program("setpriv")],
    ) {
        return;
    }
    // The capabilities the DaemonSet had before the kernel data path.
    let s = setup(
        "kfb",
        &[
            "setpriv",
            "--inh-caps=-all",
            "--ambient-caps=-all",
            "--bounding-set=-all,+net_admin,+net_raw,+net_bind_service",
        ],
    );
    s.wait_metrics("every port in user space after the fallback", |m| {
        mode_is(m, "web", "80/TCP", "userspace")
            && mode_is(m, "web", "53/UDP", "userspace")
            && mode_is(m, "web6", "80/TCP", "userspace")
            && metric_sum(m, "ferrolb_kernel_datapath_fallbacks_total", &[]) == 1.0
            && metric_sum(m, "ferrolb_kernel_datapath_active", &[]) == 0.0
    });
    let log = s.log();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("kernel data path unavailable"))
        .collect();
    assert_eq!(lines.len(), 1, "one clear line:\n{log}");
    assert!(
        lines[0].contains("Operation not permitted") && lines[0].contains("CAP_BPF"),
        "the line names the cause and the fix: {}",
        lines[0]
    );
    for (vip, is6) in [(VIP4, false), (VIP6, true)] {
        let got = s.gets(vip, is6);
        assert_eq!(got.len(), CLIENTS as usize);
        assert!(
            got.values()
                .all(|b| matches!(b.as_deref(), Some("b1" | "b2"))),
            "{vip} in user space: {got:?}\n{log}"
        );
    }
    let udp = s.udp(false);
    assert!(
        udp.values().all(|b| b
            .as_deref()
            .is_some_and(|b| b.starts_with("b1:") || b.starts_with("b2:"))),
        "UDP in user space: {udp:?}"
    );
    let m = s.metrics();
    assert!(
        metric_sum(&m, "ferrolb_connections_total", &[]) >= 2.0 * CLIENTS as f64,
        "user space forwarded them:\n{m}"
    );
    assert_eq!(metric_sum(&m, "ferrolb_kernel_flows_total", &[]), 0.0);
}

#[test]
fn validate_says_which_ports_ask_for_the_kernel_and_whether_it_loads_here() {
    if !needs(
        "validate_says_which_ports_ask_for_the_kernel_and_whether_it_loads_here",
        &[Need::Program("setpriv")],
    ) {
        return;
    }
    let dir = std::env::temp_dir().join(format!("ferrolb-kv-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("config.yaml");
    std::fs::write(
        &cfg,
        "pools: [{name: p, addresses: [192.0.2.10]}]
forwarder: {mode: kernel}
services:
  - name: web
    ports:
      - {port: 80, backends: [\"10.0.0.1:80\"]}
      - {port: 82, backends: [\"10.0.0.1:80\"], proxyProtocol: v1}
      - {port: 83, backends: [\"10.0.0.1:80\"], mode: userspace}
",
    )
    .unwrap();
    let speaker = binary("ferrolb-speaker");
    let validate = |wrap: &[&str]| {
        let mut cmd: Vec<&str> = wrap.to_vec();
        cmd.extend([
            speaker.to_str().unwrap(),
            "validate",
            "--config",
            cfg.to_str().unwrap(),
        ]);
        let out = std::process::Command::new(cmd[0])
            .args(&cmd[1..])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let root = validate(&["env"]);
    assert!(
        root.contains("in kernel mode: web 80/TCP\n")
            && root.contains("kernel data path: loads on this host"),
        "{root}"
    );
    let plain = validate(&["setpriv", "--inh-caps=-all", "--bounding-set=-all"]);
    assert!(
        plain.contains("in kernel mode: web 80/TCP\n")
            && plain.contains("cannot load here")
            && plain.contains("CAP_BPF"),
        "{plain}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_backend_killed_under_load_fails_only_what_it_held_and_passive_health_takes_it_out() {
    if !needs(
        "a_backend_killed_under_load_fails_only_what_it_held_and_passive_health_takes_it_out",
        &[],
    ) {
        return;
    }
    // Active checks far too slow to matter here (a dead backend would be
    // marked down after 10 s): what takes b1 out within the run is the
    // program seeing b1 refuse connections (passive health).
    let s = setup_with(
        "kfl",
        &[],
        &config_with("{type: tcp, interval: 5s, timeout: 1s, rise: 1, fall: 2}"),
    );
    s.wait_metrics("kernel mode", |m| {
        mode_is(m, "web", "80/TCP", "kernel")
            && metric_sum(m, "ferrolb_kernel_datapath_active", &[]) == 1.0
    });
    let srcs = kernel_lab::sources(CLIENTS, false);
    let table = [("10.11.1.2:8080", "b1"), ("10.11.2.2:8080", "b2")];
    let on_b1: Vec<&String> = srcs
        .iter()
        .filter(|c| maglev_choice(&table, c) == "b1")
        .collect();
    assert!(!on_b1.is_empty() && on_b1.len() < srcs.len());
    let ns = s.lab.name("client");
    let load = std::process::Command::new("ip")
        .args(["netns", "exec", &ns, "python3", "-c", LOAD, VIP4, "80", "4"])
        .args(&srcs)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // b1's server dies a second into the load; its host stays, so new
    // connections to it are refused (reset), as when a process crashes.
    std::thread::sleep(Duration::from_millis(1000));
    let b1 = s.backends["b1"];
    let mut s = s;
    let killed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    s.lab.kill(b1, "KILL");
    let out = load.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let started: f64 = text
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("start "))
        .and_then(|t| t.parse().ok())
        .expect("the load's start time");
    let kill_at = killed - started;
    let lines: Vec<(f64, String, String)> = text
        .lines()
        .skip(1)
        .filter_map(|l| {
            let mut w = l.split(' ');
            Some((
                w.next()?.parse().ok()?,
                w.next()?.to_string(),
                w.next()?.to_string(),
            ))
        })
        .collect();
    assert!(lines.len() > 200, "the load ran: {} requests", lines.len());
    let failed: Vec<&(f64, String, String)> = lines.iter().filter(|l| l.2 == "-").collect();
    let (first, last) = (
        failed.first().map(|f| f.0).unwrap_or(0.0),
        failed.last().map(|f| f.0).unwrap_or(0.0),
    );
    eprintln!(
        "{} requests, {} failed, between {first:.3} s and {last:.3} s (b1 killed at {kill_at:.3} s)",
        lines.len(),
        failed.len()
    );
    assert!(!failed.is_empty(), "the kill was seen by b1's clients");
    // Only b1's clients failed; b2's never did.
    for f in &failed {
        assert!(
            on_b1.contains(&&f.1),
            "{} failed at {:.3} s though Maglev gives it b2 (b2 ListenDrops {}, ListenOverflows {}, program drops {})\n{}",
            f.1,
            f.0,
            s.lab.tcp_ext("b2", "ListenDrops"),
            s.lab.tcp_ext("b2", "ListenOverflows"),
            metric_sum(&s.metrics(), "ferrolb_kernel_dropped_total", &[]),
            plain(&s.log())
                .lines()
                .filter(|l| l.contains("backend") && !l.contains("DEBUG"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    // Nothing failed that started well before the kill (a request in flight
    // at the kill started at most a request's time before it), and nothing
    // from 1.5 s after it: by then (active checks would take 10 s) b1's
    // clients are on b2.
    assert!(
        first > kill_at - 0.1,
        "a failure at {first:.3} s, before b1 died at {kill_at:.3} s"
    );
    assert!(
        last < kill_at + 1.5,
        "requests still failing at {last:.3} s (b1 killed at {kill_at:.3} s): passive health did not take b1 out\n{}",
        plain(&s.log())
            .lines()
            .filter(|l| l.contains("backend") || l.contains("refused"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let late: Vec<&(f64, String, String)> = lines.iter().filter(|l| l.0 > kill_at + 1.5).collect();
    assert!(!late.is_empty(), "the load ran past the removal");
    assert!(
        late.iter().all(|l| l.2 == "b2"),
        "after b1's removal only b2 answers"
    );
    assert!(
        late.iter().any(|l| on_b1.contains(&&l.1)),
        "b1's clients served by b2"
    );
    let m = s.metrics();
    assert!(
        metric_sum(
            &m,
            "ferrolb_backend_connect_failures_total",
            &["backend=\"10.11.1.2:8080\""]
        ) >= 2.0,
        "the refusals counted as b1's connect failures:\n{m}"
    );
    assert_eq!(
        metric_sum(&m, "ferrolb_backend_up", &["backend=\"10.11.1.2:8080\""]),
        0.0
    );
    assert_eq!(
        metric_sum(&m, "ferrolb_connections_total", &[]),
        0.0,
        "all in the kernel"
    );
}

/// `text` without terminal colour codes.
fn plain(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut it = text.chars();
    while let Some(c) = it.next() {
        if c == '\x1b' {
            for d in it.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A bpffs of the test's own, unmounted at the end (pins of one test never
/// meet another's).
struct Bpffs(PathBuf);

impl Bpffs {
    fn mount(tag: &str) -> Bpffs {
        let dir = std::env::temp_dir().join(format!("ferrolb-bpffs-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "bpf", "bpf"])
            .arg(&dir)
            .output()
            .unwrap();
        assert!(out.status.success(), "mount -t bpf: {out:?}");
        Bpffs(dir)
    }

    /// Pinned links left, over every namespace directory.
    fn links(&self) -> Vec<String> {
        let mut out = Vec::new();
        for ns in std::fs::read_dir(&self.0).unwrap().flatten() {
            if let Ok(l) = std::fs::read_dir(ns.path().join("links")) {
                out.extend(
                    l.flatten()
                        .map(|e| e.file_name().to_string_lossy().to_string()),
                );
            }
        }
        out
    }

    /// Pinned map directories left.
    fn maps(&self) -> usize {
        std::fs::read_dir(&self.0)
            .unwrap()
            .flatten()
            .filter_map(|ns| std::fs::read_dir(ns.path()).ok())
            .flat_map(|d| d.flatten())
            .filter(|e| e.file_name().to_string_lossy().starts_with("maps-"))
            .count()
    }
}

impl Drop for Bpffs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

#[test]
fn a_killed_speaker_leaves_the_kernel_forwarding_and_the_next_adopts_its_flows() {
    if !needs(
        "a_killed_speaker_leaves_the_kernel_forwarding_and_the_next_adopts_its_flows",
        &[Need::Program("mount")],
    ) {
        return;
    }
    let pins = Bpffs::mount("adopt");
    let pin_arg = pins.0.to_str().unwrap().to_string();
    let mut s = setup_full("kfp", &[], &config(), &["--datapath-pin-dir", &pin_arg]);
    s.wait_metrics("kernel mode", |m| {
        mode_is(m, "web", "80/TCP", "kernel")
            && metric_sum(m, "ferrolb_kernel_datapath_active", &[]) == 1.0
    });
    assert!(plain(&s.log()).contains("pinned=true"), "{}", s.log());
    assert!(!pins.links().is_empty() && pins.maps() == 1);
    // Kept-alive connections, through the program's NAT: their translations
    // live in the maps.
    let srcs = kernel_lab::sources(CLIENTS, false);
    let (mut holder, ready) = kernel_lab::Holder::start(&s.lab, "client", VIP4, 80, 32, &srcs);
    assert_eq!(ready, "ready 32 b1 b2", "{}", s.log());
    assert_eq!(holder.check(), (32, 32));

    // The speaker dies without a word: the pinned program keeps forwarding.
    let pid = s.speaker;
    s.lab.kill(pid, "KILL");
    assert_eq!(holder.check(), (32, 32), "forwarded while no speaker runs");

    // The next speaker takes it over: same ids, same translations.
    s.restart_speaker();
    s.wait_metrics("kernel mode again", |m| {
        mode_is(m, "web", "80/TCP", "kernel")
            && metric_sum(m, "ferrolb_kernel_datapath_active", &[]) == 1.0
    });
    assert!(
        s.log().contains("adopted from the previous speaker"),
        "{}",
        s.log()
    );
    assert_eq!(
        holder.check(),
        (32, 32),
        "every connection kept through the restart"
    );
    // New connections too, on the backends Maglev picks.
    let table = [("10.11.1.2:8080", "b1"), ("10.11.2.2:8080", "b2")];
    let got = s.gets(VIP4, false);
    for (src, body) in &got {
        assert_eq!(
            body.as_deref(),
            Some(maglev_choice(&table, src).as_str()),
            "{src}"
        );
    }
    assert_eq!(holder.check(), (32, 32));
    drop(holder);

    // Killed again, and the next speaker has no port in kernel mode: it
    // takes the program off instead of leaving it forwarding.
    let pid = s.speaker;
    s.lab.kill(pid, "KILL");
    assert!(!pins.links().is_empty(), "left in place by the kill");
    std::fs::write(
        &s.cfg,
        config().replace("forwarder: {mode: kernel}", "forwarder: {mode: userspace}"),
    )
    .unwrap();
    s.restart_speaker();
    s.wait_metrics("user space", |m| {
        mode_is(m, "web", "80/TCP", "userspace") || !m.contains("mode=\"kernel\"")
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while !pins.links().is_empty() || pins.maps() != 0 {
        assert!(
            Instant::now() < deadline,
            "pins left: {:?}\n{}",
            pins.links(),
            s.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        s.log()
            .contains("removed the kernel data path a previous speaker left"),
        "{}",
        s.log()
    );
    let got = s.gets(VIP4, false);
    assert!(
        got.values().all(|b| b.is_some()),
        "served in user space: {got:?}"
    );

    // Back to kernel mode, then an orderly stop: nothing is left behind.
    std::fs::write(&s.cfg, config()).unwrap();
    s.wait_metrics("kernel mode after the reload", |m| {
        mode_is(m, "web", "80/TCP", "kernel")
    });
    assert!(!pins.links().is_empty());
    let pid = s.speaker;
    s.lab.kill(pid, "TERM");
    assert!(
        pins.links().is_empty() && pins.maps() == 0,
        "an orderly stop leaves no pins: {:?}",
        pins.links()
    );

    // After a kill, cleanup-node (an uninstall) takes it off.
    s.restart_speaker();
    s.wait_metrics("kernel mode once more", |m| {
        mode_is(m, "web", "80/TCP", "kernel")
    });
    let pid = s.speaker;
    s.lab.kill(pid, "KILL");
    assert!(!pins.links().is_empty());
    let speaker = binary("ferrolb-speaker");
    let out = s.lab.exec_ok(
        "lb",
        &[
            speaker.to_str().unwrap(),
            "cleanup-node",
            "--keep-arp-sysctls",
            "--datapath-pin-dir",
            &pin_arg,
        ],
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("detached the kernel data path a speaker left from 3 interface(s)"),
        "{said}"
    );
    assert!(
        pins.links().is_empty() && pins.maps() == 0,
        "{:?}",
        pins.links()
    );
}
