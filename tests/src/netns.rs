//! Network namespaces for tests: a "switch" namespace holding a Linux
//! bridge, and hosts attached to it by veth pairs. Everything is created by
//! the test and removed when the [`Lab`] is dropped. Needs root.

use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// A set of namespaces owned by one test.
pub struct Lab {
    prefix: String,
    namespaces: Vec<String>,
    children: Vec<Child>,
    /// Host name -> its bridge port in the switch namespace.
    ports: Vec<(String, String)>,
}

/// Runs a command, panicking with its output if it fails.
pub fn run(cmd: &[&str]) -> Output {
    let out = Command::new(cmd[0])
        .args(&cmd[1..])
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

impl Lab {
    /// A new lab; namespace names start with a prefix unique to this process and lab.
    pub fn new(tag: &str) -> Lab {
        static N: AtomicU32 = AtomicU32::new(0);
        let prefix = format!(
            "flb{}{}{}",
            tag,
            std::process::id() % 100_000,
            N.fetch_add(1, Ordering::Relaxed)
        );
        Lab {
            prefix,
            namespaces: Vec::new(),
            children: Vec::new(),
            ports: Vec::new(),
        }
    }

    /// The full name of namespace `short`.
    pub fn name(&self, short: &str) -> String {
        format!("{}-{short}", self.prefix)
    }

    /// Creates namespace `short` with loopback up.
    pub fn add(&mut self, short: &str) -> String {
        let ns = self.name(short);
        run(&["ip", "netns", "add", &ns]);
        self.namespaces.push(ns.clone());
        run(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
        ns
    }

    /// Runs `cmd` inside namespace `short`.
    pub fn exec(&self, short: &str, cmd: &[&str]) -> Output {
        let ns = self.name(short);
        let mut full = vec!["ip", "netns", "exec", &ns];
        full.extend_from_slice(cmd);
        Command::new(full[0])
            .args(&full[1..])
            .output()
            .expect("ip netns exec")
    }

    /// The speaker's `/metrics` on its default address inside namespace `short`,
    /// fetched with bash's `/dev/tcp` so no HTTP client need be installed.
    pub fn speaker_metrics(&self, short: &str) -> String {
        self.metrics_on(short, 9470)
    }

    /// One HTTP GET of `url` from namespace `short` (Python's urllib, so no
    /// HTTP client need be installed); the body, trimmed, if it answered 200.
    pub fn http_get(&self, short: &str, url: &str, timeout: f64) -> Option<String> {
        let code = "import sys,urllib.request\ntry:\n print(urllib.request.urlopen(sys.argv[1], timeout=float(sys.argv[2])).read().decode().strip())\nexcept Exception as e:\n sys.exit(1)";
        let out = self.exec(short, &["python3", "-c", code, url, &timeout.to_string()]);
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// The HTTP status line of GET `path` on 127.0.0.1:`port` inside namespace
    /// `short` (empty if nothing answers).
    pub fn http_status(&self, short: &str, port: u16, path: &str) -> String {
        let script = format!("exec 3<>/dev/tcp/127.0.0.1/{port} && printf 'GET {path} HTTP/1.0\\r\\n\\r\\n' >&3 && head -1 <&3");
        let out = self.exec(short, &["bash", "-c", &script]);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// `/metrics` from 127.0.0.1:`port` inside namespace `short` (the
    /// Kubernetes-mode speaker serves on 7474).
    pub fn metrics_on(&self, short: &str, port: u16) -> String {
        let script = format!("exec 3<>/dev/tcp/127.0.0.1/{port} && printf 'GET /metrics HTTP/1.0\\r\\n\\r\\n' >&3 && cat <&3");
        let out = self.exec(short, &["bash", "-c", &script]);
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    /// A `TcpExt` counter of namespace `short`'s kernel (`/proc/net/netstat`
    /// is per network namespace), e.g. `TCPMD5Failure`; 0 if absent.
    pub fn tcp_ext(&self, short: &str, counter: &str) -> u64 {
        let out = self.exec_ok(short, &["cat", "/proc/net/netstat"]);
        let text = String::from_utf8_lossy(&out.stdout);
        let lines: Vec<&str> = text.lines().filter(|l| l.starts_with("TcpExt:")).collect();
        let (Some(names), Some(values)) = (lines.first(), lines.get(1)) else {
            return 0;
        };
        names
            .split_whitespace()
            .zip(values.split_whitespace())
            .find(|(n, _)| *n == counter)
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0)
    }

    /// Whether something in namespace `short` listens on TCP `port`.
    pub fn listens(&self, short: &str, port: u16) -> bool {
        let out = self.exec(short, &["ss", "-Hltn", &format!("sport = :{port}")]);
        out.status.success() && !String::from_utf8_lossy(&out.stdout).trim().is_empty()
    }

    /// Waits until segments with a TCP-MD5 signature that does not verify
    /// (or none where one is required) have been dropped in `short`: the
    /// positive sign that a wrong password was tried and refused by the
    /// kernel, not that nothing was tried. Returns the count; panics after `timeout`.
    pub fn wait_md5_refused(&self, short: &str, timeout: std::time::Duration) -> u64 {
        let t = std::time::Instant::now();
        loop {
            let n = self.tcp_ext(short, "TCPMD5Failure")
                + self.tcp_ext(short, "TCPMD5Unexpected")
                + self.tcp_ext(short, "TCPMD5NotFound");
            if n > 0 {
                return n;
            }
            assert!(
                t.elapsed() < timeout,
                "no segment was refused for its TCP-MD5 signature in {short} within {timeout:?}: nothing tried to connect"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// Like [`Lab::exec`], panicking on failure.
    pub fn exec_ok(&self, short: &str, cmd: &[&str]) -> Output {
        let out = self.exec(short, cmd);
        assert!(
            out.status.success(),
            "{cmd:?} in {short}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// Starts a long-running process in namespace `short`; its stderr goes to `log`.
    pub fn spawn(&mut self, short: &str, cmd: &[&str], log: &std::path::Path) -> u32 {
        let ns = self.name(short);
        let file = std::fs::File::create(log).expect("log file");
        let child = Command::new("ip")
            .args(["netns", "exec", &ns])
            .args(cmd)
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("spawn in namespace");
        let pid = child.id();
        self.children.push(child);
        pid
    }

    /// Takes a process started elsewhere into the lab's care (killed and
    /// reaped with the lab, or by [`Lab::kill`]).
    pub fn adopt(&mut self, child: Child) {
        self.children.push(child);
    }

    /// Kills a process started with [`Lab::spawn`] with `signal` and reaps it.
    pub fn kill(&mut self, pid: u32, signal: &str) {
        let _ = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status();
        if let Some(i) = self.children.iter().position(|c| c.id() == pid) {
            let mut c = self.children.remove(i);
            let _ = c.wait();
        }
    }

    /// A bridge in namespace `switch` (created if needed) and host `short`
    /// attached to it as `eth0` with the given addresses (CIDR notation).
    pub fn attach(&mut self, short: &str, addrs: &[&str]) {
        let sw = self.name("switch");
        if !self.namespaces.contains(&sw) {
            self.add("switch");
            run(&[
                "ip",
                "-n",
                &sw,
                "link",
                "add",
                "br0",
                "type",
                "bridge",
                "stp_state",
                "0",
                "forward_delay",
                "0",
            ]);
            run(&["ip", "-n", &sw, "link", "set", "br0", "up"]);
        }
        let host = self.name(short);
        let port = format!("p{}", self.namespaces.len());
        run(&[
            "ip", "-n", &sw, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns",
            &host,
        ]);
        run(&["ip", "-n", &sw, "link", "set", &port, "master", "br0", "up"]);
        self.ports.push((short.to_string(), port.clone()));
        for a in addrs {
            if a.contains(':') {
                run(&[
                    "ip", "-n", &host, "-6", "addr", "add", a, "dev", "eth0", "nodad",
                ]);
            } else {
                run(&["ip", "-n", &host, "addr", "add", a, "dev", "eth0"]);
            }
        }
        run(&["ip", "-n", &host, "link", "set", "eth0", "up"]);
    }

    /// The interface index of `dev` inside namespace `short`.
    pub fn ifindex(&self, short: &str, dev: &str) -> u32 {
        let out = self.exec_ok(short, &["cat", &format!("/sys/class/net/{dev}/ifindex")]);
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("ifindex")
    }

    /// A point-to-point veth between namespaces `a` and `b`, named `to-B` in `a`
    /// and `to-A` in `b`, with the given addresses (CIDR notation).
    pub fn link(&mut self, a: &str, a_addrs: &[&str], b: &str, b_addrs: &[&str]) {
        let (na, nb) = (self.name(a), self.name(b));
        let (ia, ib) = (format!("to-{b}"), format!("to-{a}"));
        run(&[
            "ip", "-n", &na, "link", "add", &ia, "type", "veth", "peer", "name", &ib, "netns", &nb,
        ]);
        for (ns, dev, addrs) in [(&na, &ia, a_addrs), (&nb, &ib, b_addrs)] {
            for addr in addrs {
                let mut cmd = vec![
                    "ip",
                    "-n",
                    ns.as_str(),
                    "addr",
                    "add",
                    addr,
                    "dev",
                    dev.as_str(),
                ];
                if addr.contains(':') {
                    cmd.push("nodad");
                }
                run(&cmd);
            }
            run(&["ip", "-n", ns, "link", "set", dev, "up"]);
        }
    }

    /// A number in 1..=254 that differs between labs running at once (from
    /// the process id and the lab counter), for addresses the host side of
    /// a lab uses: two labs joined to the test host must not share a subnet.
    pub fn unique_octet(&self) -> u8 {
        let h = self
            .prefix
            .bytes()
            .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(b as u32));
        (h % 254) as u8 + 1
    }

    /// Joins the test process's own network namespace to the bridge (which
    /// `attach` must have created) with `addrs`, so that processes in the
    /// lab reach servers the test runs itself (the fake API server). The
    /// link goes away with the switch namespace.
    pub fn attach_test_host(&mut self, addrs: &[&str]) {
        let sw = self.name("switch");
        assert!(
            self.namespaces.contains(&sw),
            "attach a host first: the bridge is made then"
        );
        // Interface names have at most 15 bytes.
        let ifname: String = format!("{}h", self.prefix)
            .chars()
            .rev()
            .take(15)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        run(&[
            "ip", "link", "add", &ifname, "type", "veth", "peer", "name", "testhost", "netns", &sw,
        ]);
        run(&[
            "ip", "-n", &sw, "link", "set", "testhost", "master", "br0", "up",
        ]);
        for a in addrs {
            run(&["ip", "addr", "add", a, "dev", &ifname]);
        }
        run(&["ip", "link", "set", &ifname, "up"]);
    }

    /// Cuts host `short`'s link (its end of the veth goes down).
    pub fn cut(&self, short: &str) {
        run(&["ip", "-n", &self.name(short), "link", "set", "eth0", "down"]);
    }

    /// Isolates (or releases) host `short`'s bridge port: isolated ports
    /// cannot reach each other, only non-isolated ones (a partition between
    /// nodes that all still reach the client).
    pub fn isolate(&self, short: &str, on: bool) {
        let port = &self
            .ports
            .iter()
            .find(|(h, _)| h == short)
            .expect("attached host")
            .1;
        run(&[
            "ip",
            "netns",
            "exec",
            &self.name("switch"),
            "bridge",
            "link",
            "set",
            "dev",
            port,
            "isolated",
            if on { "on" } else { "off" },
        ]);
    }

    /// Restores host `short`'s link.
    pub fn uncut(&self, short: &str) {
        run(&["ip", "-n", &self.name(short), "link", "set", "eth0", "up"]);
    }

    /// The host whose bridge port the switch's forwarding database sends
    /// `mac` to now (`bridge fdb show`), if it has learned it.
    pub fn fdb_host(&self, mac: &str) -> Option<String> {
        let out = self.exec_ok("switch", &["bridge", "fdb", "show", "br", "br0"]);
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let port = text.lines().find_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            (w.first() == Some(&mac) && !l.contains("permanent"))
                .then(|| {
                    w.iter()
                        .skip_while(|x| **x != "dev")
                        .nth(1)
                        .map(|p| p.to_string())
                })
                .flatten()
        })?;
        self.ports
            .iter()
            .find(|(_, p)| *p == port)
            .map(|(h, _)| h.clone())
    }

    /// The hosts among `hosts` with a link whose address is `mac` (a
    /// virtual MAC's macvlan), in the order given.
    pub fn holders(&self, hosts: &[&str], mac: &str) -> Vec<String> {
        let want = format!("link/ether {mac} ");
        hosts
            .iter()
            .filter(|h| {
                let out = self.exec_ok(h, &["ip", "-o", "link", "show"]);
                String::from_utf8_lossy(&out.stdout).contains(&want)
            })
            .map(|h| h.to_string())
            .collect()
    }

    /// The MAC address of `eth0` in host `short`.
    pub fn mac(&self, short: &str) -> String {
        let out = self.exec_ok(short, &["cat", "/sys/class/net/eth0/address"]);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in self.namespaces.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}
