//! The lab of the kernel data path suites (`tests/datapath.rs`, the
//! program driven by its harness; `tests/kernel_forwarder.rs`, the speaker
//! in kernel mode): a client namespace with many source addresses, a
//! load-balancer namespace `lb`, and two backends, and the clients that
//! talk to it (the kernel's own TCP and UDP stacks, from Python).

use crate::binary;
use crate::netns::{run, Lab};
use ferrolb_balance::hash::client_hash;
use ferrolb_balance::maglev::{Table, DEFAULT_TABLE_SIZE};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// One GET of a path per source address in one Python process: "SRC BODY"
/// lines ("SRC -" when the connection failed).
pub const GETS: &str = r#"
import socket, sys
vip, port, timeout, path = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
fam = socket.AF_INET6 if ":" in vip else socket.AF_INET
for src in sys.argv[5:]:
    s = socket.socket(fam, socket.SOCK_STREAM); s.settimeout(timeout)
    try:
        s.bind((src, 0)); s.connect((vip, port))
        s.sendall(b"GET " + path.encode() + b" HTTP/1.1\r\nHost: vip\r\nConnection: close\r\n\r\n"); data = b""
        while True:
            c = s.recv(4096)
            if not c: break
            data += c
        print(src, data.split(b"\r\n\r\n", 1)[-1].decode().strip() or "-")
    except OSError:
        print(src, "-")
    finally:
        s.close()
"#;

/// One UDP datagram per source, from a connected socket (so only an answer
/// from the VIP itself is received): "SRC REPLY" lines.
pub const UDP: &str = r#"
import socket, sys
vip, port = sys.argv[1], int(sys.argv[2])
fam = socket.AF_INET6 if ":" in vip else socket.AF_INET
for src in sys.argv[3:]:
    s = socket.socket(fam, socket.SOCK_DGRAM); s.settimeout(1.0)
    try:
        s.bind((src, 0)); s.connect((vip, port)); s.send(b"ping")
        print(src, s.recv(2048).decode().strip() or "-")
    except OSError:
        print(src, "-")
    finally:
        s.close()
"#;

/// Client namespace (`to-lb`: 10.10.0.1/24, fd10::1/64 on the other side)
/// with addresses .2 .. .2+`clients`, the load balancer `lb`,
/// and backends b1 and b2 (ferrolb-echo: HTTP on 8080 answering with the
/// name, UDP echo on 8053 (both families) answering NAME:DATA), up and listening; with the
/// backends' process ids.
pub fn lab(tag: &str, clients: u8) -> (Lab, BTreeMap<String, u32>) {
    let mut lab = Lab::new(tag);
    for n in ["client", "lb", "b1", "b2"] {
        lab.add(n);
    }
    lab.link(
        "client",
        &["10.10.0.2/24", "fd10::2/64"],
        "lb",
        &["10.10.0.1/24", "fd10::1/64"],
    );
    for i in 3..(2 + clients) {
        let ns = lab.name("client");
        run(&[
            "ip",
            "-n",
            &ns,
            "addr",
            "add",
            &format!("10.10.0.{i}/24"),
            "dev",
            "to-lb",
        ]);
        run(&[
            "ip",
            "-n",
            &ns,
            "-6",
            "addr",
            "add",
            &format!("fd10::{i:x}/64"),
            "dev",
            "to-lb",
            "nodad",
        ]);
    }
    let mut pids = BTreeMap::new();
    for (b, i) in [("b1", 1), ("b2", 2)] {
        lab.link(
            b,
            &[&format!("10.11.{i}.2/24"), &format!("fd11:{i}::2/64")],
            "lb",
            &[&format!("10.11.{i}.1/24"), &format!("fd11:{i}::1/64")],
        );
        let log = std::env::temp_dir().join(format!("{}-{b}.log", lab.name("x")));
        let echo = binary("ferrolb-echo");
        let pid = lab.spawn(
            b,
            &[
                echo.to_str().unwrap(),
                "--http",
                &format!("{b}@10.11.{i}.2:8080"),
                "--http",
                &format!("{b}@[fd11:{i}::2]:8080"),
                "--udp",
                &format!("{b}@10.11.{i}.2:8053"),
                "--udp",
                &format!("{b}@[fd11:{i}::2]:8053"),
            ],
            &log,
        );
        pids.insert(b.to_string(), pid);
    }
    // Settled like a host whose links have been up a while: no address
    // still in duplicate address detection. Until the link-local address
    // of lb's link to the client is usable the kernel sends no neighbour
    // solicitation for a reply the program redirects (it takes the
    // link-local one as source), so the first SYN-ACK to each new IPv6
    // client address would wait a second for a retransmit.
    for n in ["client", "lb", "b1", "b2"] {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let out = lab.exec(n, &["ip", "-6", "addr", "show", "tentative"]);
            if out.status.success() && out.stdout.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{n}: IPv6 addresses still tentative after 5 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    // The backends listen before the first request.
    for b in ["b1", "b2"] {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !lab.listens(b, 8080) {
            assert!(Instant::now() < deadline, "{b} never listened");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    (lab, pids)
}

/// The client addresses of a lab of `clients` (the first is the link's own).
pub fn sources(clients: u8, v6: bool) -> Vec<String> {
    (2..2 + clients)
        .map(|i| {
            if v6 {
                format!("fd10::{i:x}")
            } else {
                format!("10.10.0.{i}")
            }
        })
        .collect()
}

/// Runs [`GETS`] from the client to VIP:`port` from each of `srcs`, each
/// connection given `timeout` seconds: client address -> what answered.
pub fn gets(
    lab: &Lab,
    vip: &str,
    port: u16,
    srcs: &[String],
    timeout: f64,
) -> BTreeMap<String, Option<String>> {
    gets_path(lab, vip, port, "/", srcs, timeout)
}

/// [`gets`] of `path` (ferrolb-echo's `/peer` answers with the client
/// address the backend saw too).
pub fn gets_path(
    lab: &Lab,
    vip: &str,
    port: u16,
    path: &str,
    srcs: &[String],
    timeout: f64,
) -> BTreeMap<String, Option<String>> {
    let port = port.to_string();
    let timeout = timeout.to_string();
    let mut args = vec!["python3", "-c", GETS, vip, &port, &timeout, path];
    args.extend(srcs.iter().map(String::as_str));
    answers(&lab.exec("client", &args).stdout)
}

/// Runs [`UDP`] from the client: client address -> the reply.
pub fn udp(lab: &Lab, vip: &str, port: u16, srcs: &[String]) -> BTreeMap<String, Option<String>> {
    let port = port.to_string();
    let mut args = vec!["python3", "-c", UDP, vip, &port];
    args.extend(srcs.iter().map(String::as_str));
    answers(&lab.exec("client", &args).stdout)
}

/// "SRC ANSWER" lines ("SRC -": none) by source.
fn answers(out: &[u8]) -> BTreeMap<String, Option<String>> {
    String::from_utf8_lossy(out)
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(s, b)| (s.to_string(), (b != "-").then(|| b.to_string())))
        .collect()
}

/// Which of `backends` (address, name) user space's Maglev gives `client`,
/// weights equal: the kernel must agree.
pub fn maglev_choice(backends: &[(&str, &str)], client: &str) -> String {
    let names: Vec<(&str, u32)> = backends.iter().map(|(addr, _)| (*addr, 1)).collect();
    let t = Table::build(&names, DEFAULT_TABLE_SIZE).unwrap();
    let ip: IpAddr = client.parse().unwrap();
    backends[t.lookup(client_hash(ip))].1.to_string()
}

/// Uploads `size` bytes to ferrolb-echo's `/upload` through VIP:`port` from
/// `src`: prints the connection's MSS, then the answer ("NAME SIZE"), or
/// "- -" when it did not complete in 10 s (a segment too large for the
/// path after encapsulation is lost every time it is resent).
pub const UPLOAD: &str = r#"
import socket, sys
src, vip, port, size = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
fam = socket.AF_INET6 if ":" in vip else socket.AF_INET
s = socket.socket(fam, socket.SOCK_STREAM); s.settimeout(10.0)
try:
    s.bind((src, 0)); s.connect((vip, port))
    mss = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG)
    s.sendall(b"POST /upload HTTP/1.1\r\nHost: vip\r\nConnection: close\r\nContent-Length: %d\r\n\r\n" % size + b"x" * size)
    data = b""
    while True:
        c = s.recv(4096)
        if not c: break
        data += c
    print(mss, data.split(b"\r\n\r\n", 1)[-1].decode().strip() or "-")
except OSError:
    print("- -")
"#;

/// Holds N kept-alive connections to VIP:PORT from the given
/// source addresses (round robin). Prints `ready OPENED` once each has
/// answered one request; then, for every `check` line on stdin, sends one
/// more request on each and prints `checked ALIVE SAME` (answered at all,
/// answered by the backend that answered first), `quit` ends.
pub const HOLDER: &str = r#"
import socket, sys
vip, port, n, srcs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
def get(s):
    s.sendall(b"GET / HTTP/1.1\r\nHost: vip\r\n\r\n"); data = b""
    while b"\r\n\r\n" not in data:
        c = s.recv(4096)
        if not c: raise OSError("closed")
        data += c
    head, body = data.split(b"\r\n\r\n", 1)
    length = [int(l.split(b":")[1]) for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")][0]
    while len(body) < length:
        c = s.recv(4096)
        if not c: raise OSError("closed")
        body += c
    return body.decode().strip()
conns, first = [], []
for i in range(n):
    try:
        s = socket.create_connection((vip, port), timeout=3.0, source_address=(srcs[i % len(srcs)], 0))
        first.append(get(s)); conns.append(s)
    except OSError:
        pass
print("ready", len(conns), " ".join(sorted(set(first))), flush=True)
for line in sys.stdin:
    if line.strip() != "check":
        break
    alive = same = 0
    for i, s in enumerate(conns):
        if s is None:
            continue
        try:
            s.settimeout(2.0)
            b = get(s); alive += 1; same += (b == first[i])
        except OSError:
            s.close(); conns[i] = None
    print("checked", alive, same, flush=True)
"#;

/// The client process of [`HOLDER`], holding its connections.
pub struct Holder {
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    stdout: std::io::BufReader<std::process::ChildStdout>,
}

impl Holder {
    /// Opens `n` connections from namespace `ns` to VIP:`port` (sources
    /// `srcs` in turn): the holder and its `ready OPENED NAMES` line.
    pub fn start(
        lab: &Lab,
        ns: &str,
        vip: &str,
        port: u16,
        n: usize,
        srcs: &[String],
    ) -> (Holder, String) {
        use std::io::BufRead;
        use std::process::{Command, Stdio};
        let mut child = Command::new("ip")
            .args(["netns", "exec", &lab.name(ns), "python3", "-c", HOLDER, vip])
            .arg(port.to_string())
            .arg(n.to_string())
            .args(srcs)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the client");
        let stdin = child.stdin.take().unwrap();
        let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        (
            Holder {
                child,
                stdin,
                stdout,
            },
            line.trim().to_string(),
        )
    }

    /// One more request on every connection: (alive, same backend).
    pub fn check(&mut self) -> (usize, usize) {
        use std::io::{BufRead, Write};
        writeln!(self.stdin, "check").unwrap();
        self.stdin.flush().unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        let w: Vec<usize> = line
            .split_whitespace()
            .skip(1)
            .filter_map(|n| n.parse().ok())
            .collect();
        assert_eq!(w.len(), 2, "client said {line:?}");
        (w[0], w[1])
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        use std::io::Write;
        let _ = writeln!(self.stdin, "quit");
        let _ = self.child.wait();
    }
}
