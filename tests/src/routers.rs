//! Starting router daemons and speakers inside a [`Lab`]'s namespaces, and
//! waiting on them: the pieces the BGP suites and benchmarks share.

use crate::netns::Lab;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Starts BIRD in namespace `ns` on `dir/bird.conf` (stderr to `dir/bird.stderr`);
/// returns its control socket for [`birdc`].
pub fn bird(lab: &mut Lab, ns: &str, dir: &Path) -> PathBuf {
    let (conf, sock, pid) = (
        dir.join("bird.conf"),
        dir.join("bird.ctl"),
        dir.join("bird.pid"),
    );
    lab.spawn(
        ns,
        &[
            "bird",
            "-f",
            "-c",
            conf.to_str().unwrap(),
            "-s",
            sock.to_str().unwrap(),
            "-P",
            pid.to_str().unwrap(),
        ],
        &dir.join("bird.stderr"),
    );
    sock
}

/// Runs a `birdc` command (words separated by spaces) against `sock`; its output.
pub fn birdc(lab: &Lab, ns: &str, sock: &Path, cmd: &str) -> String {
    let mut args = vec!["birdc", "-s", sock.to_str().unwrap()];
    args.extend(cmd.split_whitespace());
    checked(lab, ns, &args)
}

/// Whether BIRD on `sock` answers now (one try, no retry).
pub fn birdc_try(lab: &Lab, ns: &str, sock: &Path, cmd: &str) -> bool {
    let mut args = vec!["birdc", "-s", sock.to_str().unwrap()];
    args.extend(cmd.split_whitespace());
    String::from_utf8_lossy(&lab.exec(ns, &args).stdout).contains(" ready.")
}

/// Runs a router's CLI in `ns` and returns its output, retrying while the
/// daemon starts (its socket not there yet) for up to 5 s, then panicking
/// with the error: an empty answer from a CLI that failed must never pass
/// for "the router has no such route".
fn checked(lab: &Lab, ns: &str, args: &[&str]) -> String {
    let t = std::time::Instant::now();
    loop {
        let out = lab.exec(ns, args);
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        // birdc answered when the daemon greeted it ("BIRD 2.0.12 ready.");
        // its exit status is 1 for answers like "Network not found".
        let answered = if args[0] == "birdc" {
            stdout.contains(" ready.")
        } else {
            out.status.success()
        };
        if answered {
            return stdout;
        }
        assert!(
            t.elapsed() < std::time::Duration::from_secs(5),
            "{args:?} in {ns} failed ({}): {stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Starts `gobgpd` in namespace `ns` on `conf` (TOML) with its API on
/// 127.0.0.1:50051 of that namespace; output to `log`.
pub fn gobgpd(lab: &mut Lab, ns: &str, conf: &Path, log: &Path) -> u32 {
    lab.spawn(
        ns,
        &[
            "gobgpd",
            "-f",
            conf.to_str().unwrap(),
            "-t",
            "toml",
            "-p",
            "--api-hosts",
            "127.0.0.1:50051",
            "--pprof-disable",
        ],
        log,
    )
}

/// Runs a `gobgp` CLI command against the daemon of namespace `ns`; its output.
pub fn gobgp(lab: &Lab, ns: &str, args: &[&str]) -> String {
    let mut full = vec!["gobgp", "-u", "127.0.0.1", "-p", "50051"];
    full.extend_from_slice(args);
    checked(lab, ns, &full)
}

/// Starts `ferrolb-speaker standalone` in namespace `ns` as node `node` on
/// `cfg`, with `extra` arguments; stderr (its log) to `log`.
pub fn speaker(lab: &mut Lab, ns: &str, cfg: &Path, node: &str, extra: &[&str], log: &Path) -> u32 {
    let bin = crate::binary("ferrolb-speaker");
    let mut args = vec![
        bin.to_str().unwrap(),
        "standalone",
        "--config",
        cfg.to_str().unwrap(),
        "--node",
        node,
    ];
    args.extend_from_slice(extra);
    lab.spawn(ns, &args, log)
}

/// Polls `cond` every 20 ms until it holds; returns how long that took. Panics
/// after `within`, naming `what` and printing `logs()`.
pub fn wait_for(
    what: &str,
    within: Duration,
    cond: impl Fn() -> bool,
    logs: impl Fn() -> String,
) -> Duration {
    let t = Instant::now();
    while !cond() {
        assert!(
            t.elapsed() < within,
            "{what} not seen within {within:?}; logs:\n{}",
            logs()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    t.elapsed()
}

/// The named files of `dir`, each under a `--- name` heading (missing ones empty).
pub fn read_logs(dir: &Path, files: &[&str]) -> String {
    files
        .iter()
        .map(|f| {
            format!(
                "--- {f}\n{}\n",
                std::fs::read_to_string(dir.join(f)).unwrap_or_default()
            )
        })
        .collect()
}

/// A lab with namespaces `router` (192.0.2.1, 2001:db8::1) and `node`
/// (192.0.2.11, 2001:db8::11) on one bridge, and a fresh directory
/// `$TMP/ferrolb-{what}-<lab>` for configs and logs.
pub fn router_and_node(tag: &str, what: &str) -> (Lab, PathBuf) {
    let mut lab = Lab::new(tag);
    let dir = std::env::temp_dir().join(format!("ferrolb-{what}-{}", lab.name("x")));
    std::fs::create_dir_all(&dir).unwrap();
    lab.add("router");
    lab.attach("router", &["192.0.2.1/24", "2001:db8::1/64"]);
    lab.add("node");
    lab.attach("node", &["192.0.2.11/24", "2001:db8::11/64"]);
    (lab, dir)
}

/// A router on the lab's bridge (192.0.2.1/24) forwarding to a client behind
/// it on its own link (198.51.100.0/24), hashing multipath flows on ports too
/// so one client's connections spread over ECMP paths. Nodes on the bridge
/// need a route to 198.51.100.0/24 via 192.0.2.1.
pub fn router_with_client(lab: &mut Lab) {
    lab.add("router");
    lab.attach("router", &["192.0.2.1/24"]);
    lab.add("client");
    lab.link(
        "router",
        &["198.51.100.1/24"],
        "client",
        &["198.51.100.2/24"],
    );
    lab.exec_ok(
        "client",
        &["ip", "route", "add", "default", "via", "198.51.100.1"],
    );
    for s in [
        "net.ipv4.ip_forward=1",
        "net.ipv4.fib_multipath_hash_policy=1",
    ] {
        lab.exec_ok("router", &["sysctl", "-qw", s]);
    }
}

/// BIRD 2's configuration for the ECMP labs: router 192.0.2.1 (AS 65000),
/// one passive session per `(name, address)` node (AS 65001), every route
/// imported and the paths to one prefix merged into one multipath kernel
/// route.
pub fn bird_ecmp_conf(dir: &Path, nodes: &[(&str, &str)]) -> String {
    let mut c = format!(
        "router id 192.0.2.1;
log \"{}/bird.log\" all;
protocol device {{ }}
protocol kernel {{
  ipv4 {{ export all; }};
  merge paths yes;
}}
",
        dir.display()
    );
    for (n, ip) in nodes {
        c.push_str(&format!(
            "protocol bgp {n} {{
  local 192.0.2.1 as 65000;
  neighbor {ip} as 65001;
  hold time 9;
  passive on;
  ipv4 {{ import all; export none; }};
}}
"
        ));
    }
    c
}
