//! False failovers under CPU starvation (prints counts; asserts nothing).
//!
//!   cargo bench -p ferrolb-tests --bench l2_false_failovers -- --seconds 600
//!
//! Needs root and stress-ng (`tests/bench/l2_false_failovers.sh` installs
//! it). Three nodes and a client on one bridge (`ferrolb_tests::l2lab`),
//! for each failover profile in turn: with every core saturated by
//! stress-ng (one CPU worker per core, plus one), nobody dies for the whole
//! run, so every ownership change counted by the speakers is a false
//! failover. The client keeps requesting through the VIP meanwhile and the
//! failed requests are counted too.

use ferrolb_tests::l2lab::{config, Cluster, NODES};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let seconds: u64 = ferrolb_tests::bench_arg(&args, "--seconds", 600);
    if !ferrolb_tests::require(
        "l2_false_failovers benchmark",
        &[
            ferrolb_tests::Need::Root,
            ferrolb_tests::Need::Program("python3"),
            ferrolb_tests::Need::Program("stress-ng"),
        ],
    ) {
        return;
    }
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    println!("false failovers: {seconds} s per profile, {} stress-ng CPU workers on {cores} cores, 3 nodes, nobody dies", cores + 1);
    for (profile, extra) in [
        ("default", String::new()),
        ("fast", "failover: {profile: fast}\n".to_string()),
    ] {
        let c = Cluster::start_with_config(
            &format!("ff{}", profile.len()),
            None,
            &format!("{}{extra}", config()),
        );
        let url = "http://192.0.2.100:8080/";
        let owner = c.wait_served(url, Duration::from_secs(10));
        std::thread::sleep(Duration::from_secs(1));
        let before = c.ownership_changes();
        let fast_before: u64 = NODES
            .iter()
            .map(|(n, _, _)| c.counter(n, "ferrolb_l2_fast_detections_total"))
            .sum();
        let mut stress = Command::new("stress-ng")
            .args([
                "--cpu",
                &(cores + 1).to_string(),
                "--timeout",
                &format!("{seconds}s"),
                "--quiet",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("stress-ng starts");
        let end = Instant::now() + Duration::from_secs(seconds);
        let (mut ok, mut failed) = (0u64, 0u64);
        // One request a second (bounded: `seconds` of them), a figure of what clients saw.
        while Instant::now() < end {
            match c.get(url, 1.0) {
                Some(_) => ok += 1,
                None => failed += 1,
            }
            std::thread::sleep(Duration::from_millis(1000));
        }
        let _ = stress.kill();
        let _ = stress.wait();
        let changes = c.ownership_changes() - before;
        let fast: u64 = NODES
            .iter()
            .map(|(n, _, _)| c.counter(n, "ferrolb_l2_fast_detections_total"))
            .sum::<u64>()
            - fast_before;
        println!(
            "{profile} profile: {changes} ownership changes, {fast} members declared down on verdicts, with no node dying; client requests {ok} ok, {failed} failed; owner at start {owner}"
        );
    }
}
