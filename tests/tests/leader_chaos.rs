//! Leader election under the classic ways to get two writers: wall clocks
//! that disagree or jump, a leader paused past its lease, a leader cut off
//! from the API server, and the API server itself pausing. Two or three
//! real `ferrolb-controller` replicas (lease 2 s) against the fake API
//! server while 1,000 Services are created (and every fourth deleted).
//!
//! Every run is judged from what the server committed, never from the
//! replicas' word: the store's full change history and its request log.
//! - **One writer**: every successful Service status write was made by the
//!   replica holding the Lease at that point of the history.
//! - **No address on two Services** at any point of the history.
//! - **No address moved**: a Service keeps the address it was first given.
//! - **Recovery**: the Services waiting when the disruption ends have
//!   addresses within 2x the lease duration.

use ferrolb_kubefake::store::ChangeKind;
use ferrolb_kubefake::Options;
use ferrolb_tests::cluster::{Cluster, Controller, SYSTEM_NS};
use ferrolb_tests::{require, Need};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

const LEASE: Duration = Duration::from_secs(2);
const SERVICES: usize = 1_000;
const CONFIG: &str = "pools: [{name: chaos, addresses: [10.77.0.0/20]}]\n";

/// The replica named in a request's User-Agent: `ferrolb-controller/V (ID)`.
fn identity(user_agent: &str) -> Option<&str> {
    let rest = user_agent.strip_prefix("ferrolb-controller/")?;
    let start = rest.find('(')?;
    rest[start + 1..].strip_suffix(')')
}

fn ingress(svc: &Value) -> Vec<String> {
    svc.pointer("/status/loadBalancer/ingress")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|i| i["ip"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// What the history shows.
#[derive(Debug, Default)]
struct Verdict {
    /// Successful status writes by each replica.
    writes: BTreeMap<String, usize>,
    /// Holders of the Lease, in order, with the resource version they took it at.
    holders: Vec<(u64, Option<String>)>,
}

/// Checks the invariants over every change the store committed and every
/// request it answered; panics with the first violation.
fn judge(c: &Cluster) -> Verdict {
    let services = ferrolb_kubefake::resource::by_name("services", "").unwrap();
    let leases = ferrolb_kubefake::resource::by_name("leases", "coordination.k8s.io").unwrap();
    let (history, _) = c
        .server
        .store()
        .watch_from(1)
        .expect("the whole history is kept (Options::history)");
    let mut v = Verdict::default();
    // Lease holders over the history.
    for ch in history.iter().filter(|ch| ch.resource == leases) {
        if ch.object.pointer("/metadata/name").and_then(Value::as_str) != Some("ferrolb-controller")
        {
            continue;
        }
        let holder = ch
            .object
            .pointer("/spec/holderIdentity")
            .and_then(Value::as_str)
            .filter(|h| !h.is_empty())
            .map(str::to_string);
        if v.holders.last().map(|(_, h)| h) != Some(&holder) {
            v.holders.push((ch.rv, holder));
        }
    }
    // Addresses over the history: never on two Services, never moved.
    let mut current: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut first: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for ch in history.iter().filter(|ch| ch.resource == services) {
        let uid = ch.object["metadata"]["uid"]
            .as_str()
            .unwrap_or("")
            .to_string();
        let name = format!(
            "{}/{}",
            ch.namespace,
            ch.object["metadata"]["name"].as_str().unwrap_or("")
        );
        if ch.kind == ChangeKind::Deleted {
            current.remove(&uid);
            continue;
        }
        let ips = ingress(&ch.object);
        if !ips.is_empty() {
            match first.get(&uid) {
                Some(f) => assert_eq!(f, &ips, "{name} moved at rv {}", ch.rv),
                None => {
                    first.insert(uid.clone(), ips.clone());
                }
            }
        }
        current.insert(uid, ips);
        let mut seen = BTreeSet::new();
        for ip in current.values().flatten() {
            assert!(seen.insert(ip), "{ip} held by two Services at rv {}", ch.rv);
        }
    }
    // Every successful status write by the replica holding the Lease then.
    let holder_at = |rv: u64| {
        v.holders
            .iter()
            .rev()
            .find(|(at, _)| *at < rv)
            .and_then(|(_, h)| h.clone())
    };
    let mut writes: BTreeMap<String, usize> = BTreeMap::new();
    for r in c.server.requests().iter().filter(|r| {
        r.verb == "patch"
            && r.resource == "services"
            && r.subresource.as_deref() == Some("status")
            && r.code == 200
            // A write that changed nothing committed nothing.
            && r.resource_version > 0
    }) {
        let who = identity(&r.user_agent).unwrap_or("?").to_string();
        let holder = holder_at(r.resource_version);
        assert_eq!(
            holder.as_deref(),
            Some(who.as_str()),
            "{who} wrote {:?} at rv {} while the Lease was {holder:?}'s (holders: {:?})",
            r.name,
            r.resource_version,
            v.holders
        );
        *writes.entry(who).or_default() += 1;
    }
    v.writes = writes;
    v
}

/// The services that have no address yet.
fn waiting(c: &Cluster) -> BTreeSet<String> {
    c.server
        .list("services", "")
        .iter()
        .filter(|s| ingress(s).is_empty())
        .map(|s| s["metadata"]["name"].as_str().unwrap_or("").to_string())
        .collect()
}

/// A cluster with room for the whole history, the pool configured.
async fn cluster() -> Cluster {
    let c = Cluster::start_with(Options {
        history: 2_000_000,
        ..Options::default()
    })
    .await;
    c.set_config(CONFIG).await;
    c.server.create_namespace("chaos");
    c
}

/// Creates the Services (deleting every fourth one two steps later) until
/// done, a few hundred a second.
fn churn(c: &Cluster) -> tokio::task::JoinHandle<()> {
    let client = c.client.clone();
    tokio::spawn(async move {
        use k8s_openapi::api::core::v1::Service;
        use kube::api::{Api, DeleteParams, PostParams};
        let api: Api<Service> = Api::namespaced(client, "chaos");
        for i in 0..SERVICES {
            let svc: Service = serde_json::from_value(json!({
                "metadata": {"name": format!("s{i}")},
                "spec": {"type": "LoadBalancer", "ports": [{"port": 80, "protocol": "TCP"}]}
            }))
            .unwrap();
            // The API server may be down for a while: retry, bounded.
            for _ in 0..200 {
                if api.create(&PostParams::default(), &svc).await.is_ok() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            if i % 4 == 3 {
                let _ = api
                    .delete(&format!("s{}", i - 2), &DeleteParams::default())
                    .await;
            }
            tokio::time::sleep(Duration::from_millis(8)).await;
        }
    })
}

/// Waits until the Services waiting at `healed` have addresses; returns how long it took.
async fn recovery(c: &Cluster, healed: Instant, what: &str) -> Duration {
    let pending = waiting(c);
    loop {
        let still: Vec<String> = waiting(c).intersection(&pending).cloned().collect();
        if still.is_empty() {
            return healed.elapsed();
        }
        assert!(
            healed.elapsed() < 2 * LEASE,
            "{what}: {} Services still waiting {:?} after the disruption ended: {:?}",
            still.len(),
            healed.elapsed(),
            &still[..still.len().min(5)]
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits for the churn, then for every Service to have its address.
async fn settle(c: &Cluster, churning: tokio::task::JoinHandle<()>) {
    churning.await.unwrap();
    let t = Instant::now();
    while !waiting(c).is_empty() {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "{} Services never got an address",
            waiting(c).len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The first successful Lease write by someone else than `old` after `since`.
fn takeover(c: &Cluster, old: &str, since: Instant) -> Option<Duration> {
    c.server
        .requests()
        .iter()
        .filter(|r| {
            r.resource == "leases.coordination.k8s.io"
                && matches!(r.verb, "update" | "patch")
                && r.code == 200
                && r.at > since
                && identity(&r.user_agent).is_some_and(|i| i != old)
        })
        .map(|r| r.at.duration_since(since))
        .next()
}

async fn leader_of(c: &Cluster, ctls: &[&Controller]) -> String {
    let t = Instant::now();
    loop {
        if let Some(l) = c.leader() {
            if let Some(ctl) = ctls.iter().find(|x| x.identity == l) {
                ctl.wait_leading(Duration::from_secs(15)).await;
                return l;
            }
        }
        assert!(t.elapsed() < Duration::from_secs(15), "nobody leads");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn report(what: &str, v: &Verdict, extra: String) {
    let holders: Vec<String> = v
        .holders
        .iter()
        .map(|(_, h)| h.clone().unwrap_or_else(|| "(released)".into()))
        .collect();
    eprintln!(
        "{what}: status writes per replica {:?}; Lease holders in turn {holders:?}; {extra}",
        v.writes
    );
}

/// Clocks -60 s, 0 and +60 s off, then jumping by -30 s and +30 s mid-run:
/// expiry is timed on each replica's own monotonic clock, so nothing
/// changes hands at all. (With expiry judged from `renewTime` against the
/// local wall clock, the replica 60 s ahead takes a live leader's Lease.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skewed_and_jumping_clocks_never_make_two_writers() {
    if !require(
        "leader election under clock skew",
        &[Need::Program(ferrolb_tests::cluster::LIBFAKETIME)],
    ) {
        return;
    }
    let c = cluster().await;
    let clock = |name: &str, offset: &str| {
        let f = c.dir.join(format!("clock-{name}"));
        std::fs::write(&f, offset).unwrap();
        f
    };
    let files = [
        clock("behind", "-60s"),
        clock("exact", "+0s"),
        clock("ahead", "+60s"),
    ];
    let behind = Controller::spawn_skewed(&c, "behind", &files[0]);
    let leader = leader_of(&c, &[&behind]).await;
    assert_eq!(leader, "behind");
    let exact = Controller::spawn_skewed(&c, "exact", &files[1]);
    let ahead = Controller::spawn_skewed(&c, "ahead", &files[2]);
    let churning = churn(&c);
    tokio::time::sleep(3 * LEASE).await;
    // Jumps mid-run, as an NTP step makes them: the leader's clock back,
    // a standby's forward.
    std::fs::write(&files[0], "-90s").unwrap();
    std::fs::write(&files[1], "+30s").unwrap();
    tokio::time::sleep(3 * LEASE).await;
    settle(&c, churning).await;
    let v = judge(&c);
    report("clock skew", &v, String::new());
    assert_eq!(
        v.holders
            .iter()
            .filter_map(|(_, h)| h.clone())
            .collect::<Vec<_>>(),
        ["behind"],
        "the Lease changed hands although its holder renewed it all along"
    );
    for ctl in [&behind, &exact, &ahead] {
        assert!(!ctl.log().contains("panicked"), "{}", ctl.log());
    }
}

/// Two replicas ("alpha" leading, "beta" standing by) and the churn; after
/// 2 s `cut` disrupts the leader for twice the lease and `heal` ends it.
/// Judges the run, checks that beta took over and alpha stepped down.
async fn disrupt_the_leader(
    what: &str,
    cut: impl Fn(&Cluster, &Controller),
    heal: impl Fn(&Cluster, &Controller),
) {
    let c = cluster().await;
    let a = Controller::spawn(&c, "alpha", &[]);
    let leader = leader_of(&c, &[&a]).await;
    let b = Controller::spawn(&c, "beta", &[]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let churning = churn(&c);
    tokio::time::sleep(Duration::from_secs(2)).await;
    cut(&c, &a);
    let started = Instant::now();
    tokio::time::sleep(2 * LEASE).await;
    heal(&c, &a);
    let healed = Instant::now();
    let took = recovery(&c, healed, what).await;
    settle(&c, churning).await;
    let v = judge(&c);
    let over = takeover(&c, &leader, started);
    report(
        what,
        &v,
        format!(
            "takeover {over:?} after it began; waiting Services served {took:?} after it ended"
        ),
    );
    assert!(over.is_some(), "beta never took over:\n{}", b.log());
    assert!(
        a.log().contains("lost leadership"),
        "the disrupted leader did not step down:\n{}",
        a.log()
    );
}

/// The leader SIGSTOPped for twice the lease, then resumed: the standby
/// takes over meanwhile; the resumed replica stops writing before it does
/// anything (its renew deadline passed on its own monotonic clock).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_leader_resumes_without_writing() {
    disrupt_the_leader("pause", |_, a| a.pause(true), |_, a| a.pause(false)).await;
}

/// The leader cut off from the API server (its requests and watches
/// blackholed, nobody else's) for twice the lease, then healed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_leader_stops_writing_and_the_standby_takes_over() {
    disrupt_the_leader(
        "partition",
        |c, _| c.server.partition("(alpha)", true),
        |c, _| c.server.partition("(alpha)", false),
    )
    .await;
}

/// The API server itself gone for twice the lease, then back (same
/// objects): every replica's renewals fail, the leader is fenced, and one
/// replica leads again once it returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_server_pausing_leaves_one_writer() {
    let c = cluster().await;
    let a = Controller::spawn(&c, "alpha", &[]);
    let _ = leader_of(&c, &[&a]).await;
    let b = Controller::spawn(&c, "beta", &[]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let churning = churn(&c);
    tokio::time::sleep(Duration::from_secs(2)).await;
    c.server.stop();
    tokio::time::sleep(2 * LEASE).await;
    let back = c.server.restart().await.unwrap();
    let healed = Instant::now();
    let took = recovery(&c, healed, "API server pause").await;
    settle(&c, churning).await;
    let v = judge(&c);
    report(
        "API server pause",
        &v,
        format!("waiting Services served {took:?} after it returned"),
    );
    assert!(
        a.log().contains("lost leadership") || b.log().contains("lost leadership"),
        "the leader kept leading without the API server:\n{}",
        a.log()
    );
    let _ = SYSTEM_NS;
    drop(back);
}
