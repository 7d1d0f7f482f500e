//! `ferrolb-datapath-harness`: loads the kernel data path in the current
//! network namespace, attaches it, plans the services given on the command
//! line and carries out commands read from standard input, so the tests
//! can drive the real program against the real kernel (the planner, the
//! loader and the BPF program, without the speaker around them).
//!
//!   ferrolb-datapath-harness --attach IFACE... --service SPEC...
//!   SPEC: tcp|udp:VIP:PORT=BACKEND[,BACKEND...][;ranges=CIDR[,CIDR...]][;dsr]
//!         (`;dsr`: direct server return instead of NAT)
//!         (IPv6 VIPs in brackets: tcp:[fd99::10]:80=[fd11:1::2]:8080)
//!   stdin: `down ADDR:PORT`, `up ADDR:PORT`, `add SPEC`, `stats`, `quit`;
//!          each answered with one line (`ok`, `error ...`, or the stats
//!          as `service VIP:PORT packets bytes flows dropped` and
//!          `backend ADDR:PORT packets bytes flows`, then `end`).

use ferrolb_datapath::maps::{Proto, SvcKey};
use ferrolb_datapath::plan::{Backend, Planner, Service};
use ferrolb_sys::bpf::Datapath;
use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::time::Duration;

/// The interface and source address toward `ip`, as `ip route get` says.
fn way_to(ip: std::net::IpAddr) -> Result<(std::net::IpAddr, u32), String> {
    let out = std::process::Command::new("ip")
        .args(["-j", "route", "get", &ip.to_string()])
        .output()
        .map_err(|e| format!("ip route get: {e}"))?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|_| format!("no route to {ip}: {}", String::from_utf8_lossy(&out.stderr)))?;
    let r = &v[0];
    let dev = r["dev"].as_str().ok_or(format!("no route to {ip}"))?;
    let src = r["prefsrc"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .ok_or(format!("no source address toward {ip}"))?;
    let ifindex = std::fs::read_to_string(format!("/sys/class/net/{dev}/ifindex"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or(format!("no ifindex for {dev}"))?;
    Ok((src, ifindex))
}

fn parse_service(spec: &str) -> Result<Service, String> {
    let (spec, dsr) = match spec.strip_suffix(";dsr") {
        Some(s) => (s, true),
        None => (spec, false),
    };
    let (main, ranges) = match spec.split_once(";ranges=") {
        Some((m, r)) => (m, Some(r)),
        None => (spec, None),
    };
    let (front, backends) = main
        .split_once('=')
        .ok_or_else(|| format!("{spec}: want PROTO:VIP:PORT=BACKENDS"))?;
    let (proto, vip) = front
        .split_once(':')
        .ok_or_else(|| format!("{spec}: want PROTO:VIP:PORT"))?;
    let proto = match proto {
        "tcp" => Proto::Tcp,
        "udp" => Proto::Udp,
        p => return Err(format!("{p}: tcp or udp")),
    };
    let vip: SocketAddr = vip.parse().map_err(|_| format!("{vip}: not VIP:PORT"))?;
    let backends = backends
        .split(',')
        .map(|b| {
            let addr = b
                .parse::<SocketAddr>()
                .map_err(|_| format!("{b}: not ADDR:PORT"))?;
            let (nat_src, ifindex) = way_to(addr.ip())?;
            Ok(Backend {
                addr,
                weight: 1,
                up: true,
                nat_src,
                ifindex,
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    let source_ranges = match ranges {
        None => Vec::new(),
        Some(r) => r
            .split(',')
            .map(|c| {
                let (a, p) = c.split_once('/').ok_or(format!("{c}: not a CIDR"))?;
                let a = a.parse().map_err(|_| format!("{c}: not a CIDR"))?;
                let p = p.parse().map_err(|_| format!("{c}: not a CIDR"))?;
                ferrolb_ipset::Cidr::containing(a, p).ok_or(format!("{c}: prefix too long"))
            })
            .collect::<Result<Vec<_>, _>>()?,
    };
    Ok(Service {
        key: SvcKey {
            vip: vip.ip(),
            port: vip.port(),
            proto,
        },
        backends,
        source_ranges,
        nat_ports: (61000, 65535),
        idle: Duration::from_secs(300),
        dsr,
    })
}

fn apply(dp: &mut Datapath, planner: &mut Planner, services: &[Service]) -> Result<(), String> {
    let w = planner.plan(services).map_err(|e| e.to_string())?;
    dp.write(&w).map_err(|e| e.to_string())
}

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut attach = Vec::new();
    let mut services = Vec::new();
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let Some(v) = it.next() else {
            eprintln!("{flag} needs a value");
            return std::process::ExitCode::from(2);
        };
        match flag.as_str() {
            "--attach" => attach.push(v.clone()),
            "--service" => match parse_service(v) {
                Ok(s) => services.push(s),
                Err(e) => {
                    eprintln!("{e}");
                    return std::process::ExitCode::from(2);
                }
            },
            f => {
                eprintln!("unknown flag {f}");
                return std::process::ExitCode::from(2);
            }
        }
    }
    let mut dp = match Datapath::load() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("{e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    for i in &attach {
        if let Err(e) = dp.attach(i) {
            eprintln!("{e}");
            return std::process::ExitCode::FAILURE;
        }
    }
    let mut planner = Planner::new();
    if let Err(e) = apply(&mut dp, &mut planner, &services) {
        eprintln!("{e}");
        return std::process::ExitCode::FAILURE;
    }
    let mut out = std::io::stdout();
    let _ = writeln!(out, "ready");
    let _ = out.flush();
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let (cmd, arg) = line.split_once(' ').unwrap_or((line.as_str(), ""));
        let reply = match cmd {
            "down" | "up" => match arg.parse::<SocketAddr>() {
                Ok(a) => {
                    for s in &mut services {
                        for b in &mut s.backends {
                            if b.addr == a {
                                b.up = cmd == "up";
                            }
                        }
                    }
                    apply(&mut dp, &mut planner, &services)
                        .map(|_| "ok".to_string())
                        .unwrap_or_else(|e| format!("error {e}"))
                }
                Err(_) => format!("error {arg}: not ADDR:PORT"),
            },
            "add" => match parse_service(arg) {
                Ok(s) => {
                    services.retain(|x| x.key != s.key);
                    services.push(s);
                    apply(&mut dp, &mut planner, &services)
                        .map(|_| "ok".to_string())
                        .unwrap_or_else(|e| format!("error {e}"))
                }
                Err(e) => format!("error {e}"),
            },
            "stats" => {
                let mut text = String::new();
                for s in &services {
                    let Some(id) = planner.service_id(&s.key) else {
                        continue;
                    };
                    let vip = SocketAddr::new(s.key.vip, s.key.port);
                    match dp.service_counters(id) {
                        Ok(c) => {
                            text += &format!(
                                "service {vip} {} {} {} {}\n",
                                c.packets, c.bytes, c.flows, c.dropped
                            )
                        }
                        Err(e) => text += &format!("error {e}\n"),
                    }
                    for (addr, bid) in planner.backend_ids(&s.key) {
                        if let Ok(c) = dp.backend_counters(bid) {
                            text +=
                                &format!("backend {addr} {} {} {}\n", c.packets, c.bytes, c.flows);
                        }
                    }
                }
                text + "end"
            }
            "quit" => break,
            c => format!("error unknown command {c}"),
        };
        let _ = writeln!(out, "{reply}");
        let _ = out.flush();
    }
    std::process::ExitCode::SUCCESS
}
