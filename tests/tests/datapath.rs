//! The kernel data path (crates/sys/bpf/forward.bpf.c) against the real
//! kernel: a client namespace, a load-balancer namespace running the
//! program (loaded, attached and fed by `ferrolb-datapath-harness`, the
//! planner and loader the speaker uses), and two backend namespaces. The
//! client is the kernel's own TCP and UDP stack; every check is what the
//! client receives.

use ferrolb_tests::kernel_lab::{self, maglev_choice};
use ferrolb_tests::netns::{run, Lab};
use ferrolb_tests::{binary, require, Need};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

const VIP4: &str = "10.99.0.10";
const VIP6: &str = "fd99::10";
/// Client source addresses (balancing is per client address).
const CLIENTS: u8 = 24;

/// Two requests on one kept-alive connection from SRC, `pause` seconds
/// apart: prints both bodies.
const KEEPALIVE: &str = r#"
import socket, sys, time
src, vip, port, pause = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
s = socket.create_connection((vip, port), timeout=2.0, source_address=(src, 0))
def get():
    s.sendall(b"GET / HTTP/1.1\r\nHost: vip\r\n\r\n"); data = b""
    while b"\r\n\r\n" not in data: data += s.recv(4096)
    head, body = data.split(b"\r\n\r\n", 1)
    n = [int(l.split(b":")[1]) for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")][0]
    while len(body) < n: body += s.recv(4096)
    return body.decode().strip()
a = get(); time.sleep(pause); b = get()
print(a, b)
"#;

struct Harness {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Harness {
    /// Attached where the lab's client and backends come in, serving `services`.
    fn start(lab: &Lab, services: &[String]) -> Harness {
        let mut args: Vec<String> = ["to-client", "to-b1", "to-b2"]
            .iter()
            .flat_map(|i| ["--attach".to_string(), i.to_string()])
            .collect();
        for s in services {
            args.push("--service".into());
            args.push(s.clone());
        }
        let mut child = Command::new("ip")
            .args(["netns", "exec", &lab.name("lb")])
            .arg(binary("ferrolb-datapath-harness"))
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the harness");
        let stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        assert_eq!(
            line.trim(),
            "ready",
            "the data path did not load (its error is above)"
        );
        Harness {
            child,
            stdin,
            stdout,
        }
    }

    /// Sends a command; returns its answer's lines (up to `end` for stats).
    fn say(&mut self, cmd: &str) -> Vec<String> {
        writeln!(self.stdin, "{cmd}").unwrap();
        self.stdin.flush().unwrap();
        let mut lines = Vec::new();
        loop {
            let mut l = String::new();
            assert!(self.stdout.read_line(&mut l).unwrap() > 0, "harness exited");
            let l = l.trim().to_string();
            if cmd != "stats" || l == "end" {
                if cmd != "stats" {
                    lines.push(l);
                }
                return lines;
            }
            lines.push(l);
        }
    }

    /// `service VIP ...` and `backend ADDR ...` counters by name.
    fn stats(&mut self) -> BTreeMap<String, Vec<u64>> {
        self.say("stats")
            .into_iter()
            .map(|l| {
                let w: Vec<&str> = l.split_whitespace().collect();
                assert!(w.len() >= 5, "stats line {l:?}");
                (
                    format!("{} {}", w[0], w[1]),
                    w[2..].iter().map(|n| n.parse().unwrap()).collect(),
                )
            })
            .collect()
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "quit");
        let _ = self.child.wait();
    }
}

/// The shared lab, the client routing the VIPs' prefixes through `lb`.
fn lab(tag: &str) -> Lab {
    let (lab, _) = kernel_lab::lab(tag, CLIENTS);
    let ns = lab.name("client");
    run(&[
        "ip",
        "-n",
        &ns,
        "route",
        "add",
        "10.99.0.0/24",
        "via",
        "10.10.0.1",
    ]);
    run(&[
        "ip",
        "-n",
        &ns,
        "-6",
        "route",
        "add",
        "fd99::/64",
        "via",
        "fd10::1",
    ]);
    lab
}

fn sources(v6: bool) -> Vec<String> {
    kernel_lab::sources(CLIENTS, v6)
}

/// Client address -> what answered (None: nothing), 1 s per connection
/// (a lost SYN-ACK, resent after 1 s, fails it).
fn gets(lab: &Lab, vip: &str, port: u16, srcs: &[String]) -> BTreeMap<String, Option<String>> {
    kernel_lab::gets(lab, vip, port, srcs, 1.0)
}

fn needs(test: &str) -> bool {
    require(
        test,
        &[
            Need::Root,
            Need::Program("ip"),
            Need::Program("python3"),
            Need::BpfProgram,
        ],
    )
}

#[test]
fn tcp_and_udp_over_ipv4_and_ipv6_reach_the_backends_maglev_chooses() {
    if !needs("tcp_and_udp_over_ipv4_and_ipv6_reach_the_backends_maglev_chooses") {
        return;
    }
    let lab = lab("dpa");
    let mut h = Harness::start(
        &lab,
        &[
            &format!("tcp:{VIP4}:80=10.11.1.2:8080,10.11.2.2:8080"),
            &format!("tcp:[{VIP6}]:80=[fd11:1::2]:8080,[fd11:2::2]:8080"),
            &format!("udp:{VIP4}:53=10.11.1.2:8053,10.11.2.2:8053"),
        ]
        .map(String::from),
    );
    for (vip, v6, backends) in [
        (
            VIP4,
            false,
            [("10.11.1.2:8080", "b1"), ("10.11.2.2:8080", "b2")],
        ),
        (
            VIP6,
            true,
            [("[fd11:1::2]:8080", "b1"), ("[fd11:2::2]:8080", "b2")],
        ),
    ] {
        let srcs = sources(v6);
        let got = gets(&lab, vip, 80, &srcs);
        assert_eq!(got.len(), srcs.len());
        let mut seen = BTreeSet::new();
        for (src, body) in &got {
            let body = body
                .as_deref()
                .unwrap_or_else(|| panic!("{src} -> {vip}:80 not served"));
            assert_eq!(
                body,
                maglev_choice(&backends, src),
                "{src} -> {vip}: the kernel and user space disagree"
            );
            seen.insert(body.to_string());
        }
        assert_eq!(seen.len(), 2, "{vip}: both backends used: {got:?}");
        // Again: every client keeps its backend.
        assert_eq!(
            gets(&lab, vip, 80, &srcs),
            got,
            "{vip}: a client changed backend"
        );
    }
    // UDP, answered from the VIP (the client's socket is connected to it).
    let srcs = sources(false);
    let out = kernel_lab::udp(&lab, VIP4, 53, &srcs);
    let udp_backends = [("10.11.1.2:8053", "b1"), ("10.11.2.2:8053", "b2")];
    for (src, reply) in &out {
        assert!(
            reply
                .as_deref()
                .is_some_and(|r| r.contains(&maglev_choice(&udp_backends, src))),
            "UDP from {src}: {reply:?} (all: {out:?})"
        );
    }
    assert_eq!(out.len(), srcs.len());
    // Counters: per service and backend, new flows among them.
    let stats = h.stats();
    let svc = &stats[&format!("service {VIP4}:80")];
    assert!(svc[0] > 0 && svc[2] as usize >= srcs.len(), "{stats:?}");
    assert_eq!(svc[3], 0, "nothing dropped: {stats:?}");
    let b1 = &stats["backend 10.11.1.2:8080"];
    let b2 = &stats["backend 10.11.2.2:8080"];
    assert!(b1[2] > 0 && b2[2] > 0, "{stats:?}");
}

#[test]
fn health_and_changes_rewrite_the_maps_in_place_and_flows_keep_their_backend() {
    if !needs("health_and_changes_rewrite_the_maps_in_place_and_flows_keep_their_backend") {
        return;
    }
    let lab = lab("dpb");
    let spec = format!("tcp:{VIP4}:80=10.11.1.2:8080,10.11.2.2:8080");
    let mut h = Harness::start(&lab, &[&spec].map(String::from));
    let srcs = sources(false);
    let before = gets(&lab, VIP4, 80, &srcs);
    assert!(before.values().all(Option::is_some), "{before:?}");
    // b1 down: everyone on b2, at once, without reloading anything.
    assert_eq!(h.say("down 10.11.1.2:8080"), ["ok"]);
    let down = gets(&lab, VIP4, 80, &srcs);
    assert!(
        down.values().all(|b| b.as_deref() == Some("b2")),
        "{down:?}"
    );
    // Back up: everyone back where Maglev puts them.
    assert_eq!(h.say("up 10.11.1.2:8080"), ["ok"]);
    assert_eq!(gets(&lab, VIP4, 80, &srcs), before);
    // A kept-alive connection keeps its backend while the service changes
    // under it: a third backend (a closed port) takes over about a third
    // of the slots, this client's among them.
    let old = [("10.11.1.2:8080", "b1"), ("10.11.2.2:8080", "b2")];
    let new = [
        ("10.11.1.2:8080", "b1"),
        ("10.11.2.2:8080", "b2"),
        ("10.11.1.2:9999", "closed"),
    ];
    let src = srcs
        .iter()
        .find(|s| maglev_choice(&new, s) == "closed")
        .expect("some client's slot moves to the new backend")
        .clone();
    let first = maglev_choice(&old, &src);
    let keep = Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.name("client"),
            "python3",
            "-c",
            KEEPALIVE,
            &src,
            VIP4,
            "80",
            "1.5",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_eq!(
        h.say(&format!(
            "add tcp:{VIP4}:80=10.11.1.2:8080,10.11.2.2:8080,10.11.1.2:9999"
        )),
        ["ok"]
    );
    let out = keep.wait_with_output().unwrap();
    let bodies = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(
        bodies.split_whitespace().collect::<Vec<_>>(),
        [first.as_str(), first.as_str()],
        "the established flow from {src} lost its backend"
    );
    // A new connection from the same client goes where the new table says.
    let fresh = gets(&lab, VIP4, 80, std::slice::from_ref(&src));
    assert_eq!(
        fresh[&src], None,
        "{src}: new flows follow the new table (a closed port)"
    );
    // All backends down: dropped and counted, not sent to the stack.
    for b in ["10.11.1.2:8080", "10.11.2.2:8080", "10.11.1.2:9999"] {
        assert_eq!(h.say(&format!("down {b}")), ["ok"]);
    }
    let none = gets(&lab, VIP4, 80, &srcs[..2]);
    assert!(none.values().all(Option::is_none), "{none:?}");
    let stats = h.stats();
    assert!(stats[&format!("service {VIP4}:80")][3] > 0, "{stats:?}");
}

#[test]
fn source_ranges_are_enforced_in_the_program() {
    if !needs("source_ranges_are_enforced_in_the_program") {
        return;
    }
    let lab = lab("dpc");
    // 10.10.0.0/29: .2 to .7 allowed, the rest not.
    let mut h = Harness::start(
        &lab,
        &[&format!(
            "tcp:{VIP4}:80=10.11.1.2:8080,10.11.2.2:8080;ranges=10.10.0.0/29"
        )]
        .map(String::from),
    );
    // .2 to .11: six allowed, four refused (each refused one waits out 1 s).
    let srcs: Vec<String> = sources(false).into_iter().take(10).collect();
    let got = kernel_lab::gets(&lab, VIP4, 80, &srcs, 1.0);
    for (src, body) in &got {
        let last: u8 = src.rsplit('.').next().unwrap().parse().unwrap();
        assert_eq!(body.is_some(), last < 8, "{src}: {body:?}");
    }
    let stats = h.stats();
    assert!(
        stats[&format!("service {VIP4}:80")][3] > 0,
        "drops counted: {stats:?}"
    );
    // A bad plan changes nothing that works.
    let bad = h.say(&format!("add tcp:{VIP4}:80=[fd11:1::2]:8080"));
    assert!(
        bad[0].starts_with("error") && bad[0].contains("address family"),
        "{bad:?}"
    );
    assert_eq!(kernel_lab::gets(&lab, VIP4, 80, &srcs, 1.0), got);
}

/// Makes b1 and b2 DSR backends of VIP4 and VIP6 the way an operator
/// would (`ferrolb-speaker prepare-backend`), routes their replies to the
/// clients through `lb` as a plain router (the program does not touch
/// them), and starts ferrolb-echo on the service ports: HTTP on port 80 of
/// every address, UDP on the VIPs themselves (a UDP server answers from
/// the address it is bound to).
fn prepare_dsr_backends(lab: &mut Lab) {
    let lb = lab.name("lb");
    run(&[
        "ip",
        "netns",
        "exec",
        &lb,
        "sysctl",
        "-qw",
        "net.ipv4.ip_forward=1",
    ]);
    run(&[
        "ip",
        "netns",
        "exec",
        &lb,
        "sysctl",
        "-qw",
        "net.ipv6.conf.all.forwarding=1",
    ]);
    let speaker = binary("ferrolb-speaker");
    for (b, i) in [("b1", 1), ("b2", 2)] {
        let ns = lab.name(b);
        run(&[
            "ip",
            "-n",
            &ns,
            "route",
            "add",
            "default",
            "via",
            &format!("10.11.{i}.1"),
        ]);
        run(&[
            "ip",
            "-n",
            &ns,
            "-6",
            "route",
            "add",
            "default",
            "via",
            &format!("fd11:{i}::1"),
        ]);
        let out = lab.exec_ok(
            b,
            &[
                speaker.to_str().unwrap(),
                "prepare-backend",
                "--vip",
                VIP4,
                "--vip",
                VIP6,
                "--from",
                "10.11.0.0/16",
                "--from",
                "fd11::/16",
            ],
        );
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(said.contains("to-lb (mtu 1500)"), "{said}");
        assert!(
            said.contains(&format!("{VIP4}: local on lo")) && said.contains("MSS at most 1440"),
            "{said}"
        );
        assert!(said.contains("MSS at most 1400"), "{said}");
        // A VIP is a local route, not an address: binding an IPv6 socket to
        // it needs non-local binds (IPv4 accepts a local route), as
        // docs/configuration.md tells operators of UDP services.
        run(&[
            "ip",
            "netns",
            "exec",
            &ns,
            "sysctl",
            "-qw",
            "net.ipv6.ip_nonlocal_bind=1",
        ]);
        let log = std::env::temp_dir().join(format!("{}-{b}-dsr.log", lab.name("x")));
        let echo = binary("ferrolb-echo");
        lab.spawn(
            b,
            &[
                echo.to_str().unwrap(),
                "--http",
                &format!("{b}@[::]:80"),
                "--udp",
                &format!("{b}@{VIP4}:53"),
                "--udp",
                &format!("{b}@[{VIP6}]:53"),
            ],
            &log,
        );
    }
    for b in ["b1", "b2"] {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !lab.listens(b, 80) {
            assert!(
                std::time::Instant::now() < deadline,
                "{b} never listened on 80"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

#[test]
fn direct_server_return_keeps_the_client_address_and_the_backend_answers_it_directly() {
    let test = "direct_server_return_keeps_the_client_address_and_the_backend_answers_it_directly";
    if !needs(test) {
        return;
    }
    let mut lab = lab("dpr");
    prepare_dsr_backends(&mut lab);
    // The world's NICs send no segment larger than the MTU; veth would pass
    // the client's TSO super-packets whole, hiding a segment too large for
    // the tunnel. One segment per packet, as on the wire.
    let client = lab.name("client");
    run(&[
        "ip",
        "-n",
        &client,
        "link",
        "set",
        "dev",
        "to-lb",
        "gso_max_segs",
        "1",
    ]);
    let mut h = Harness::start(
        &lab,
        &[
            &format!("tcp:{VIP4}:80=10.11.1.2:80,10.11.2.2:80;dsr"),
            &format!("tcp:[{VIP6}]:80=[fd11:1::2]:80,[fd11:2::2]:80;dsr"),
            &format!("udp:{VIP4}:53=10.11.1.2:53,10.11.2.2:53;dsr"),
            &format!("udp:[{VIP6}]:53=[fd11:1::2]:53,[fd11:2::2]:53;dsr"),
        ]
        .map(String::from),
    );
    for (vip, v6, backends) in [
        (
            VIP4,
            false,
            [("10.11.1.2:80", "b1"), ("10.11.2.2:80", "b2")],
        ),
        (
            VIP6,
            true,
            [("[fd11:1::2]:80", "b1"), ("[fd11:2::2]:80", "b2")],
        ),
    ] {
        let srcs = sources(v6);
        let got = kernel_lab::gets_path(&lab, vip, 80, "/peer", &srcs, 3.0);
        assert_eq!(got.len(), srcs.len());
        let mut seen = BTreeSet::new();
        for (src, body) in &got {
            let body = body
                .as_deref()
                .unwrap_or_else(|| panic!("{src} -> {vip}:80 not served: {got:?}"));
            // The backend Maglev picks, and it saw the client itself (NAT
            // would show the load balancer's address).
            assert_eq!(
                body,
                format!("{} {src}", maglev_choice(&backends, src)),
                "{src} -> {vip}"
            );
            seen.insert(body.split(' ').next().unwrap().to_string());
        }
        assert_eq!(seen.len(), 2, "{vip}: both backends used: {got:?}");
        // A large upload: full-size client segments fit the tunnel because
        // the backend's SYN-ACK advertised a smaller MSS (without the clamp
        // every 1,500-byte packet grows past the MTU and is lost).
        let out = lab.exec(
            "client",
            &[
                "python3",
                "-c",
                kernel_lab::UPLOAD,
                &srcs[0],
                vip,
                "80",
                "300000",
            ],
        );
        let out = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let (mss, answer) = out.split_once(' ').unwrap_or(("-", "-"));
        let want_mss = if v6 { 1400 } else { 1440 };
        assert!(
            mss.parse::<u32>().is_ok_and(|m| m <= want_mss),
            "{vip}: client MSS {mss:?}, want at most {want_mss} ({out})"
        );
        assert_eq!(
            answer,
            format!("{} 300000", maglev_choice(&backends, &srcs[0])),
            "{vip}: 300 kB upload through the tunnel"
        );
    }
    // UDP over both families, answered from the VIP by the backend itself.
    for (vip, v6, backends) in [
        (
            VIP4,
            false,
            [("10.11.1.2:53", "b1"), ("10.11.2.2:53", "b2")],
        ),
        (
            VIP6,
            true,
            [("[fd11:1::2]:53", "b1"), ("[fd11:2::2]:53", "b2")],
        ),
    ] {
        let srcs = sources(v6);
        let out = kernel_lab::udp(&lab, vip, 53, &srcs);
        assert_eq!(out.len(), srcs.len());
        for (src, reply) in &out {
            assert_eq!(
                reply.as_deref(),
                Some(format!("{}:ping", maglev_choice(&backends, src)).as_str()),
                "UDP {src} -> {vip} (all: {out:?})"
            );
        }
    }
    let stats = h.stats();
    let svc = &stats[&format!("service {VIP4}:80")];
    assert!(svc[2] as usize >= CLIENTS as usize, "{stats:?}");
    assert_eq!(svc[3], 0, "nothing dropped: {stats:?}");
    // The backends never answer ARP for the VIP: only the load balancer
    // may own it on the wire. The load balancer's kernel asks b1's link
    // directly (datagrams to the VIP routed out of that link): the
    // neighbour entry stays unresolved.
    let lbns = lab.name("lb");
    run(&[
        "ip",
        "-n",
        &lbns,
        "route",
        "add",
        &format!("{VIP4}/32"),
        "dev",
        "to-b1",
    ]);
    let probe = "import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(4):
    s.sendto(b'x', (sys.argv[1], 9)); time.sleep(0.4)";
    lab.exec_ok("lb", &["python3", "-c", probe, VIP4]);
    let neigh = lab.exec_ok("lb", &["ip", "neigh", "show", VIP4, "dev", "to-b1"]);
    let neigh = String::from_utf8_lossy(&neigh.stdout);
    assert!(
        (neigh.contains("INCOMPLETE") || neigh.contains("FAILED")) && !neigh.contains("lladdr"),
        "the load balancer asked b1's link for the VIP and nobody answered: {neigh:?}"
    );
    run(&[
        "ip",
        "-n",
        &lbns,
        "route",
        "del",
        &format!("{VIP4}/32"),
        "dev",
        "to-b1",
    ]);
    // --undo takes it all back: no program, no local route.
    let speaker = binary("ferrolb-speaker");
    let out = lab.exec_ok(
        "b1",
        &[speaker.to_str().unwrap(), "prepare-backend", "--undo"],
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("from 1 interface(s): to-lb") && said.contains("removed 2 local route(s)"),
        "{said}"
    );
    let tc = lab.exec("b1", &["tc", "filter", "show", "dev", "to-lb", "ingress"]);
    assert!(
        !String::from_utf8_lossy(&tc.stdout).contains("ferrolb"),
        "{tc:?}"
    );
    let routes = lab.exec(
        "b1",
        &["ip", "route", "show", "table", "local", "proto", "249"],
    );
    assert!(
        String::from_utf8_lossy(&routes.stdout).trim().is_empty(),
        "{routes:?}"
    );
}
