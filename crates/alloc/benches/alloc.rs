//! Allocator benchmark: ferrolb's interval allocator against a naive
//! first-fit scan (what MetalLB does: walk the pool's addresses in order and
//! take the first one not in the allocated map), in the same process.
//!
//! Run: `cargo bench -p ferrolb-alloc --bench alloc` (100,000 services per
//! scenario; the first-fit reference is quadratic and may take minutes), or
//! `cargo bench -p ferrolb-alloc --bench alloc -- --quick` (10,000).
//! `--n N` sets the count; `--naive-budget SECS` caps the reference's time
//! (default 600), after which it reports how far it got.

use ferrolb_alloc::{Allocator, Request, ServiceKey};
use ferrolb_config::{Config, Pool};
use ferrolb_ipset::Family;
use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::hint::black_box;
use std::process::Command;
use std::time::{Duration, Instant};

/// Resets the kernel's peak-RSS mark for this process (Linux
/// `clear_refs` value 5) and returns the current RSS in bytes.
fn mem_start() -> usize {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    status_kib("VmRSS:") * 1024
}

/// Peak RSS above `base` since `mem_start`.
fn mem_peak(base: usize) -> usize {
    (status_kib("VmHWM:") * 1024).saturating_sub(base)
}

fn status_kib(field: &str) -> usize {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

struct Run {
    done: usize,
    total: Duration,
    p50: Duration,
    p99: Duration,
    max: Duration,
    peak: usize,
}

fn summarise(mut lat: Vec<Duration>, total: Duration, peak: usize) -> Run {
    lat.sort_unstable();
    let at = |q: f64| {
        lat.get(((lat.len() as f64 * q) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    Run {
        done: lat.len(),
        total,
        p50: at(0.50),
        p99: at(0.99),
        max: lat.last().copied().unwrap_or_default(),
        peak,
    }
}

fn run_ferrolb(pools: &[Pool], family: Family, n: usize) -> Run {
    let mut lat = vec![Duration::ZERO; n];
    let base = mem_start();
    let mut a = Allocator::new(pools);
    let start = Instant::now();
    for (i, slot) in lat.iter_mut().enumerate() {
        let mut r = Request::new(ServiceKey::new("bench", format!("svc-{i}")));
        r.families = vec![family];
        let t = Instant::now();
        black_box(a.allocate(&r).expect("pool is large enough"));
        *slot = t.elapsed();
    }
    let total = start.elapsed();
    let peak = mem_peak(base);
    let s = a.stats();
    let used = if family == Family::V4 {
        s[0].v4.used
    } else {
        s[0].v6.used
    };
    assert_eq!(used, n as u128);
    summarise(lat, total, peak)
}

/// The reference: MetalLB-style first fit. For every allocation, walk the
/// pool from its first address and take the first one not in the map.
fn run_first_fit(pools: &[Pool], family: Family, n: usize, budget: Duration) -> Run {
    let ranges: Vec<(u128, u128)> = pools[0]
        .addresses
        .intervals(family)
        .iter()
        .map(|iv| (iv.start(), iv.end()))
        .collect();
    let mut lat = Vec::with_capacity(n);
    lat.resize(n, Duration::ZERO);
    lat.clear();
    let base = mem_start();
    let mut used: HashMap<u128, usize> = HashMap::new();
    let start = Instant::now();
    'svc: for svc in 0..n {
        let t = Instant::now();
        for &(s, e) in &ranges {
            let mut ip = s;
            loop {
                if let Entry::Vacant(slot) = used.entry(ip) {
                    slot.insert(svc);
                    lat.push(t.elapsed());
                    if start.elapsed() > budget {
                        break 'svc;
                    }
                    continue 'svc;
                }
                if ip == e {
                    break;
                }
                ip += 1;
            }
        }
        panic!("pool exhausted");
    }
    let total = start.elapsed();
    let peak = mem_peak(base);
    black_box(&used);
    summarise(lat, total, peak)
}

fn fmt_d(d: Duration) -> String {
    let ns = d.as_nanos();
    if ns < 10_000 {
        format!("{ns} ns")
    } else if ns < 10_000_000 {
        format!("{:.1} us", ns as f64 / 1e3)
    } else if ns < 10_000_000_000 {
        format!("{:.1} ms", ns as f64 / 1e6)
    } else {
        format!("{:.1} s", ns as f64 / 1e9)
    }
}

fn fmt_b(b: usize) -> String {
    format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0))
}

const SCENARIOS: [(&str, &str, Family); 2] = [
    (
        "IPv4 /15",
        "pools: [{name: p, addresses: [10.0.0.0/15]}]",
        Family::V4,
    ),
    (
        "IPv6 /64",
        "pools: [{name: p, addresses: ['2001:db8::/64']}]",
        Family::V6,
    ),
];

/// Measures one (scenario, implementation) in this process and prints one
/// line of numbers; each measurement runs in a fresh process so that peak
/// RSS is its own.
fn child(scenario: usize, which: &str, n: usize, budget: Duration) {
    let (_, yaml, family) = SCENARIOS[scenario];
    let pools = Config::from_yaml(yaml)
        .expect("bench config is valid")
        .pools;
    let r = match which {
        "ferrolb" => run_ferrolb(&pools, family, n),
        _ => run_first_fit(&pools, family, n, budget),
    };
    println!(
        "{} {} {} {} {} {}",
        r.done,
        r.total.as_nanos(),
        r.p50.as_nanos(),
        r.p99.as_nanos(),
        r.max.as_nanos(),
        r.peak
    );
}

fn measure(scenario: usize, which: &str, n: usize, budget: Duration) -> Run {
    let out = Command::new(std::env::current_exe().expect("own path"))
        .args([
            "--child",
            &scenario.to_string(),
            which,
            &n.to_string(),
            &budget.as_secs().to_string(),
        ])
        .output()
        .expect("bench child runs");
    assert!(
        out.status.success(),
        "child failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let v: Vec<u128> = text
        .split_whitespace()
        .map(|x| x.parse().expect("numbers"))
        .collect();
    let d = |x: u128| Duration::from_nanos(x as u64);
    Run {
        done: v[0] as usize,
        total: d(v[1]),
        p50: d(v[2]),
        p99: d(v[3]),
        max: d(v[4]),
        peak: v[5] as usize,
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse::<u64>().ok())
    };
    let quick = args.iter().any(|a| a == "--quick");
    let n = value("--n")
        .map(|v| v as usize)
        .unwrap_or(if quick { 10_000 } else { 100_000 });
    let budget = Duration::from_secs(value("--naive-budget").unwrap_or(600));
    if let Some(i) = args.iter().position(|a| a == "--child") {
        let num = |k: usize| args[i + k].parse::<u64>().expect("child args");
        child(
            num(1) as usize,
            &args[i + 2],
            num(3) as usize,
            Duration::from_secs(num(4)),
        );
        return;
    }

    println!(
        "ferrolb allocator benchmark: {n} services per scenario (reference budget {}s)",
        budget.as_secs()
    );
    println!(
        "{:<14} {:<10} {:>8} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>8}",
        "scenario", "impl", "done", "total", "mean/op", "p50", "p99", "max", "peak RSS", "B/svc"
    );
    for (idx, (name, _, _)) in SCENARIOS.iter().enumerate() {
        let ours = measure(idx, "ferrolb", n, budget);
        let naive = measure(idx, "first-fit", n, budget);
        for (label, r) in [("ferrolb", &ours), ("first-fit", &naive)] {
            println!(
                "{:<14} {:<10} {:>8} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>8}",
                name,
                label,
                r.done,
                fmt_d(r.total),
                fmt_d(r.total / r.done.max(1) as u32),
                fmt_d(r.p50),
                fmt_d(r.p99),
                fmt_d(r.max),
                fmt_b(r.peak),
                r.peak / r.done.max(1)
            );
        }
        if naive.done < n {
            println!(
                "{name}: first-fit stopped at its budget after {} of {n} allocations; the ratio below compares mean time per operation over unequal counts and understates the gap",
                naive.done
            );
        }
        let mean = |r: &Run| r.total.as_secs_f64() / r.done.max(1) as f64;
        println!(
            "{name}: first-fit / ferrolb = {:.1}x time per allocation, {:.2}x peak memory",
            mean(&naive) / mean(&ours),
            naive.peak as f64 / ours.peak.max(1) as f64
        );
    }
}
