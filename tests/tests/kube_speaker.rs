//! `ferrolb-speaker kubernetes` with the controller against the fake API
//! server, on loopback (no root): a Service annotated `ferrolb.io/forward`
//! gets an address from the controller, and the speaker forwards it to the
//! ready endpoints of its EndpointSlice; endpoints that stop being ready
//! stop getting traffic; a deleted Service stops being served. The VIPs are
//! in 127.0.0.0/8, local on every host.

use ferrolb_tests::backend;
use ferrolb_tests::client;
use ferrolb_tests::cluster::{Cluster, Controller, KubeSpeaker};
use serde_json::json;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(10);

/// Names of the backends that answered `n` GETs to `vip`.
async fn answered(vip: SocketAddr, n: usize) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for _ in 0..n {
        if let Ok(body) = client::get(vip, "/", None).await {
            names.insert(body.trim().to_string());
        }
    }
    names
}

async fn until(what: &str, timeout: Duration, mut f: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_service_reaches_ready_endpoints_through_the_vip() {
    let port = ferrolb_tests::speaker::free_port();
    let b1 = backend::http(
        "pod-1",
        format!("127.0.41.1:{port}").parse().unwrap(),
        backend::Proxy::None,
    )
    .await
    .unwrap();
    let b2 = backend::http(
        "pod-2",
        format!("127.0.41.2:{port}").parse().unwrap(),
        backend::Proxy::None,
    )
    .await
    .unwrap();
    let c = Cluster::start().await;
    c.set_config("pools: [{name: loopback, addresses: [127.0.40.0/28]}]")
        .await;
    c.create_node("node1", "127.0.0.1", json!({}));
    c.create_speaker_pod("node1", "127.0.0.1");
    let _ctl = Controller::start(&c, "ctl", &[]).await;
    let speaker = KubeSpeaker::start(&c, "node1", &[]).await;

    let vport = ferrolb_tests::speaker::free_port();
    c.create_service("shop", "web", Cluster::forwarded(vport, port))
        .await;
    c.set_endpoints(
        "shop",
        "web",
        port,
        &[("127.0.41.1", "node1", true), ("127.0.41.2", "node1", true)],
    );
    let ip = c.wait_ingress("shop", "web", 1, T).await;
    assert_eq!(
        c.service("shop", "web")["status"]["loadBalancer"]["ingress"][0]["ipMode"],
        "Proxy"
    );
    let vip: SocketAddr = format!("{}:{vport}", ip[0]).parse().unwrap();
    until("both pods answering through the VIP", T, async || {
        answered(vip, 10).await.len() == 2
    })
    .await;

    // The status view shows both pods up.
    let out = std::process::Command::new(ferrolb_tests::binary("ferrolb-speaker"))
        .args(["status", "--address", &speaker.metrics.to_string()])
        .output()
        .unwrap();
    let status = String::from_utf8_lossy(&out.stdout);
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("shop/web") && l.contains("2/2 up")),
        "{status}"
    );

    // pod-2 stops being ready: after the health of the plan settles, only pod-1 answers.
    c.set_endpoints(
        "shop",
        "web",
        port,
        &[
            ("127.0.41.1", "node1", true),
            ("127.0.41.2", "node1", false),
        ],
    );
    until("only pod-1 answering", T, async || {
        answered(vip, 10).await == BTreeSet::from(["pod-1".to_string()])
    })
    .await;
    assert!(b1.requests() > 0 && b2.requests() > 0);

    // The API server goes away: what works keeps working.
    c.server.stop();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        answered(vip, 10).await,
        BTreeSet::from(["pod-1".to_string()]),
        "{}",
        speaker.log()
    );
    // It comes back (same objects, same port): the speaker's watches resume and
    // the next change applies.
    let server = c.server.restart().await.unwrap();
    {
        let slices =
            ferrolb_kubefake::resource::by_name("endpointslices", "discovery.k8s.io").unwrap();
        let eps = json!({"endpoints": [
            {"addresses": ["127.0.41.1"], "nodeName": "node1", "conditions": {"ready": true}},
            {"addresses": ["127.0.41.2"], "nodeName": "node1", "conditions": {"ready": true}}]});
        server
            .store()
            .patch(
                slices,
                Some("shop"),
                "web-1",
                false,
                ferrolb_kubefake::PatchKind::Merge,
                eps,
                "test",
            )
            .unwrap();
    }
    until(
        "both pods again after the API server returned",
        Duration::from_secs(30),
        async || answered(vip, 10).await.len() == 2,
    )
    .await;

    // The Service goes away: the speaker stops serving its address.
    c.delete_service("shop", "web").await;
    until("the listener closed", T, async || {
        client::get(vip, "/", None).await.is_err()
    })
    .await;
    assert!(!speaker.log().contains("panicked"), "{}", speaker.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_may_not_announce_does_not_forward() {
    let port = ferrolb_tests::speaker::free_port();
    let _b = backend::http(
        "pod-1",
        format!("127.0.42.1:{port}").parse().unwrap(),
        backend::Proxy::None,
    )
    .await
    .unwrap();
    let c = Cluster::start().await;
    c.set_config("pools: [{name: loopback, addresses: [127.0.43.0/28]}]")
        .await;
    // node1 is excluded by label; the endpoint is on node1 with policy Local elsewhere.
    c.create_node(
        "node1",
        "127.0.0.1",
        json!({"node.kubernetes.io/exclude-from-external-load-balancers": ""}),
    );
    c.create_speaker_pod("node1", "127.0.0.1");
    let _ctl = Controller::start(&c, "ctl", &[]).await;
    let speaker = KubeSpeaker::start(&c, "node1", &[]).await;
    let vport = ferrolb_tests::speaker::free_port();
    c.create_service("shop", "web", Cluster::forwarded(vport, port))
        .await;
    c.set_endpoints("shop", "web", port, &[("127.0.42.1", "node1", true)]);
    let ip = c.wait_ingress("shop", "web", 1, T).await;
    let vip: SocketAddr = format!("{}:{vport}", ip[0]).parse().unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        client::get(vip, "/", None).await.is_err(),
        "an excluded node served the VIP"
    );
    let log = speaker.log();
    assert!(
        log.contains("node excluded from announcing")
            && log.contains("exclude-from-external-load-balancers"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_speaker_does_not_repeat_its_bgp_events() {
    let c = Cluster::start().await;
    // A BGP peer nobody answers for: the speaker advertises (to nobody) and reports it.
    let closed = ferrolb_tests::speaker::free_port();
    c.set_config(&format!(
        "pools: [{{name: loopback, addresses: [127.0.46.0/28]}}]\nbgp:\n  routerId: 192.0.2.11\n  peers: [{{name: tor, address: 127.0.0.1, port: {closed}, asn: 65000, myAsn: 65001}}]\n"
    ))
    .await;
    c.create_node("node1", "127.0.0.1", json!({}));
    c.create_speaker_pod("node1", "127.0.0.1");
    let _ctl = Controller::start(&c, "ctl", &[]).await;
    c.create_service("shop", "before", json!({})).await;
    c.set_endpoints("shop", "before", 9, &[("127.0.46.200", "node1", true)]);
    let before = c.wait_ingress("shop", "before", 1, T).await;
    let announced = |name: &str| {
        c.events_for("shop", name)
            .into_iter()
            .filter(|(_, r, _)| r == "IPAnnounced")
            .count()
    };
    let speaker = KubeSpeaker::start(&c, "node1", &[]).await;
    // A Service that appears while the speaker runs is news.
    c.create_service("shop", "after", json!({})).await;
    c.set_endpoints("shop", "after", 9, &[("127.0.46.201", "node1", true)]);
    let after = c.wait_ingress("shop", "after", 1, T).await;
    let note = c.wait_event("shop", "after", "IPAnnounced", T).await;
    assert!(note.contains("over BGP to tor"), "{note}");
    // What it found advertised at start is not, and a restart repeats nothing.
    assert_eq!(announced("before"), 0, "{}", speaker.log());
    drop(speaker);
    let _again = KubeSpeaker::start(&c, "node1", &[]).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!((announced("before"), announced("after")), (0, 1));
    for vip in before.iter().chain(after.iter()) {
        let _ = std::process::Command::new("ip")
            .args([
                "route",
                "del",
                "local",
                &format!("{vip}/32"),
                "dev",
                "lo",
                "table",
                "local",
            ])
            .output();
    }
}

/// A BGP password from a Secret (`passwordSecret`, as MetalLB users write
/// it): the speaker reads it through the API with the RBAC deploy/ grants,
/// sets it as the TCP-MD5 key (a router listening with that key accepts the
/// session; the kernel would drop the SYN of any other), and the value shows
/// in no log (at debug level), Event, metric, status or `validate` output. A
/// peer whose Secret is missing gets no session and an error naming the Secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bgp_password_from_a_secret_keys_the_session_and_is_never_shown() {
    const SECRET: &str = "md5-from-a-secret-never-shown-77";
    let c = Cluster::start().await;
    c.create_secret("ferrolb-system", "bgp-tor", &[("password", SECRET)]);
    // The router: a listener keyed for the speaker's address.
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_reuse_address(true).unwrap();
    ferrolb_sys::set_tcp_md5(&sock, "127.0.0.1".parse().unwrap(), SECRET.as_bytes()).unwrap();
    sock.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    sock.listen(8).unwrap();
    sock.set_nonblocking(true).unwrap();
    let port = sock.local_addr().unwrap().as_socket().unwrap().port();
    let router = tokio::net::TcpListener::from_std(sock.into()).unwrap();
    let missing_port = ferrolb_tests::speaker::free_port();
    let config = format!(
        "pools: [{{name: loopback, addresses: [127.0.49.0/28]}}]
bgp:
  routerId: 192.0.2.11
  peers:
    - {{name: tor, address: 127.0.0.1, port: {port}, asn: 65000, myAsn: 65001, passwordSecret: {{name: bgp-tor}}}}
    - {{name: lost, address: 127.0.0.1, port: {missing_port}, asn: 65000, myAsn: 65001, passwordSecret: {{name: no-such-secret, key: password}}}}
"
    );
    c.set_config(&config).await;
    c.create_node("node1", "127.0.0.1", json!({}));
    c.create_speaker_pod("node1", "127.0.0.1");
    let speaker = KubeSpeaker::start(&c, "node1", &[]).await;
    // The keyed connection arrives and carries the speaker's OPEN.
    let (mut conn, _) = tokio::time::timeout(Duration::from_secs(15), router.accept())
        .await
        .unwrap_or_else(|_| panic!("no keyed connection from the speaker\n{}", speaker.log()))
        .unwrap();
    let mut head = [0u8; 19];
    tokio::io::AsyncReadExt::read_exact(&mut conn, &mut head)
        .await
        .unwrap();
    assert_eq!(head[18], 1, "an OPEN");
    // The missing Secret is named, and that peer gets nowhere.
    let t = Instant::now();
    while !speaker
        .log()
        .contains("cannot read the BGP password Secret")
    {
        assert!(t.elapsed() < Duration::from_secs(10), "{}", speaker.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = speaker.log();
    assert!(log.contains("ferrolb-system/no-such-secret"), "{log}");
    // The value is nowhere.
    let metrics = speaker.metrics_text().await;
    assert!(metrics.contains("peer=\"tor\""), "{metrics}");
    let events: Vec<String> = c.events().into_iter().map(|e| format!("{e:?}")).collect();
    let dir = ferrolb_tests::speaker::unique_dir();
    let file = dir.join("config.yaml");
    std::fs::write(&file, &config).unwrap();
    let validate = std::process::Command::new(ferrolb_tests::binary("ferrolb-speaker"))
        .args(["validate", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    let validate = format!(
        "{}{}",
        String::from_utf8_lossy(&validate.stdout),
        String::from_utf8_lossy(&validate.stderr)
    );
    assert!(validate.contains("md5"), "{validate}");
    let status = std::process::Command::new(ferrolb_tests::binary("ferrolb-speaker"))
        .args(["status", "--address"])
        .arg(speaker.metrics_address().to_string())
        .output()
        .unwrap();
    let status = String::from_utf8_lossy(&status.stdout).to_string();
    for (what, text) in [
        ("log", &log),
        ("metrics", &metrics),
        ("Events", &events.join("\n")),
        ("validate", &validate),
        ("status", &status),
    ] {
        assert!(
            !text.contains(SECRET),
            "the password shows in the {what}:\n{text}"
        );
    }
}

/// Source ranges as kube-proxy reads them: the field, or when it is empty
/// the `service.beta.kubernetes.io/load-balancer-source-ranges` annotation,
/// accepted as the API server accepts them (host bits, spaces). A client
/// outside the annotation's ranges is refused; one inside a sloppy range is
/// served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_ranges_from_the_annotation_refuse_clients_outside_them() {
    let port = ferrolb_tests::speaker::free_port();
    let _b = backend::http(
        "pod-1",
        format!("127.0.51.1:{port}").parse().unwrap(),
        backend::Proxy::None,
    )
    .await
    .unwrap();
    let c = Cluster::start().await;
    c.set_config("pools: [{name: loopback, addresses: [127.0.52.0/28]}]")
        .await;
    c.create_node("node1", "127.0.0.1", json!({}));
    c.create_speaker_pod("node1", "127.0.0.1");
    let _ctl = Controller::start(&c, "ctl", &[]).await;
    let speaker = KubeSpeaker::start(&c, "node1", &[]).await;
    let vport = ferrolb_tests::speaker::free_port();
    let service = |extra: serde_json::Value| {
        ferrolb_tests::cluster::merged(Cluster::forwarded(vport, port), &extra)
    };
    // Only 192.0.2.0/24 (by the annotation); the test's client is 127.0.0.1.
    c.create_service(
        "shop",
        "closed",
        service(
            json!({"metadata": {"annotations": {"service.beta.kubernetes.io/load-balancer-source-ranges": " 192.0.2.0/24, 198.51.100.7/32"}}}),
        ),
    )
    .await;
    // 127.0.0.1/8 has host bits set: the API server takes it, so must we.
    c.create_service(
        "shop",
        "open",
        service(json!({"spec": {"loadBalancerSourceRanges": [" 127.0.0.1/8 "]}})),
    )
    .await;
    for name in ["closed", "open"] {
        c.set_endpoints("shop", name, port, &[("127.0.51.1", "node1", true)]);
    }
    let closed: SocketAddr = format!(
        "{}:{vport}",
        c.wait_ingress("shop", "closed", 1, T).await[0]
    )
    .parse()
    .unwrap();
    let open: SocketAddr = format!("{}:{vport}", c.wait_ingress("shop", "open", 1, T).await[0])
        .parse()
        .unwrap();
    until("the sloppy range serving its client", T, async || {
        answered(open, 1).await.len() == 1
    })
    .await;
    assert!(
        answered(closed, 5).await.is_empty(),
        "a client outside the annotation's ranges was served\n{}",
        speaker.log()
    );
    let m = speaker.metrics_text().await;
    assert!(
        m.lines().any(|l| l.starts_with("ferrolb_rejected_total")
            && l.contains("service=\"shop/closed\"")
            && l.contains("reason=\"source_range\"")
            && !l.ends_with(" 0")),
        "{m}"
    );
}

/// `ferrolb-speaker status --api` with the controller's Events gone, as
/// they are an hour after the fact on a real cluster (here a 1 s TTL): what
/// each node announces is kept in its NodeAnnouncement (deploy/crds.yaml),
/// written once per change of the node's set, coalesced to at most one a
/// second, never while nothing changes, and cleared when the speaker stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_from_the_api_outlives_the_events_and_costs_one_write_per_change() {
    let c = Cluster::start_with(ferrolb_kubefake::Options {
        event_ttl: Duration::from_secs(1),
        ..Default::default()
    })
    .await;
    let closed = ferrolb_tests::speaker::free_port();
    c.set_config(&format!(
        "pools: [{{name: loopback, addresses: [127.0.47.0/27]}}]\nbgp:\n  routerId: 192.0.2.11\n  peers: [{{name: tor, address: 127.0.0.1, port: {closed}, asn: 65000, myAsn: 65001}}]\n"
    ))
    .await;
    c.create_node("node1", "127.0.0.1", json!({}));
    c.create_speaker_pod("node1", "127.0.0.1");
    let _ctl = Controller::start(&c, "ctl", &[]).await;
    let speaker = KubeSpeaker::start(&c, "node1", &[]).await;
    let writes = || {
        c.server
            .requests()
            .iter()
            .filter(|r| r.resource == "nodeannouncements.ferrolb.io" && r.verb == "patch")
            .count()
    };
    let status = || {
        let out = std::process::Command::new(ferrolb_tests::binary("ferrolb-speaker"))
            .args(["status", "--api", "--kubeconfig"])
            .arg(&c.kubeconfig)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let before = writes();
    let started = Instant::now();
    const N: usize = 20;
    for i in 0..N {
        let name = format!("s{i}");
        c.create_service("shop", &name, json!({})).await;
        c.set_endpoints(
            "shop",
            &name,
            9,
            &[(&format!("127.0.48.{i}"), "node1", true)],
        );
    }
    until("every Service in node1's NodeAnnouncement", T, async || {
        status()
            .lines()
            .filter(|l| l.starts_with("shop/s") && l.ends_with("node1 (BGP)"))
            .count()
            == N
    })
    .await;
    let spent = started.elapsed();
    let made = writes() - before;
    eprintln!("{N} Services announced in {spent:?} with {made} NodeAnnouncement writes");
    assert!(
        made < N && made as u64 <= spent.as_secs() + 2,
        "{made} writes for {N} Services in {spent:?}: one per change of the set, at most one a second"
    );
    // Quiet: no writes. The Events expire; the view stays.
    let quiet = writes();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(writes(), quiet, "nothing changed, nothing written");
    let _ = c.server.list("events", ""); // a request: the server expires Events on each
    assert!(
        c.events().iter().all(|(who, ..)| !who.starts_with("shop/")),
        "the Events about the Services expired: {:?}",
        c.events()
    );
    let view = status();
    assert_eq!(
        view.lines()
            .filter(|l| l.starts_with("shop/s") && l.ends_with("node1 (BGP)"))
            .count(),
        N,
        "{view}"
    );
    // The same view as the kubectl plugin, in JSON: through kubectl itself
    // (it finds `kubectl-ferrolb` on the PATH) when there is one.
    let plugin_dir = ferrolb_tests::binary("kubectl-ferrolb")
        .parent()
        .unwrap()
        .to_path_buf();
    let path = format!(
        "{}:{}",
        plugin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let via_kubectl = std::process::Command::new("kubectl")
        .env("PATH", &path)
        .env("KUBECONFIG", &c.kubeconfig)
        .args(["ferrolb", "status", "-o", "json"])
        .output();
    let out = match via_kubectl {
        Ok(o) => o,
        Err(_) => {
            eprintln!("no kubectl here: running kubectl-ferrolb directly");
            std::process::Command::new(ferrolb_tests::binary("kubectl-ferrolb"))
                .env("KUBECONFIG", &c.kubeconfig)
                .args(["status", "-o", "json"])
                .output()
                .unwrap()
        }
    };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let rows: Vec<&serde_json::Value> = v["services"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| {
            r["service"]
                .as_str()
                .is_some_and(|s| s.starts_with("shop/s"))
        })
        .collect();
    assert_eq!(rows.len(), N, "{v}");
    for r in rows {
        assert_eq!(
            r["announced_by"],
            json!([{"node": "node1", "mode": "bgp"}]),
            "{r}"
        );
        assert!(
            r["addresses"][0]
                .as_str()
                .is_some_and(|a| a.starts_with("127.0.47.")),
            "{r}"
        );
    }
    // Stopped: the speaker clears its set, and the view says nobody.
    speaker.terminate();
    let view = status();
    assert!(
        view.lines()
            .filter(|l| l.starts_with("shop/s"))
            .all(|l| l.contains("nobody")),
        "{view}"
    );
    for i in 0..N {
        let _ = std::process::Command::new("ip")
            .args([
                "route",
                "del",
                "local",
                &format!("127.0.47.{i}/32"),
                "dev",
                "lo",
                "table",
                "local",
            ])
            .output();
    }
}

/// A router that only listens: each connection the speaker makes, with the
/// OPEN it sent first.
struct Router {
    listener: tokio::net::TcpListener,
}

impl Router {
    async fn start() -> (Router, u16) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        (Router { listener }, port)
    }

    /// The next connection and the hold time of its OPEN.
    async fn session(&self, speaker: &KubeSpeaker) -> (tokio::net::TcpStream, u16) {
        let (mut conn, _) = tokio::time::timeout(Duration::from_secs(15), self.listener.accept())
            .await
            .unwrap_or_else(|_| panic!("no connection from the speaker\n{}", speaker.log()))
            .unwrap();
        // Marker (16), length (2), type (1), version (1), AS (2), hold time (2).
        let mut head = [0u8; 24];
        tokio::io::AsyncReadExt::read_exact(&mut conn, &mut head)
            .await
            .unwrap();
        assert_eq!(head[18], 1, "an OPEN");
        let len = u16::from_be_bytes([head[16], head[17]]) as usize;
        let mut rest = vec![0u8; len - head.len()];
        tokio::io::AsyncReadExt::read_exact(&mut conn, &mut rest)
            .await
            .unwrap();
        (conn, u16::from_be_bytes([head[22], head[23]]))
    }
}

/// Bytes the speaker sends on `conn` within `within`: a NOTIFICATION then
/// end of stream for a session it ended, nothing for one it left alone.
async fn sent_within(conn: &mut tokio::net::TcpStream, within: Duration) -> (Vec<u8>, bool) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, tokio::io::AsyncReadExt::read(conn, &mut buf)).await
        {
            Err(_) => return (got, false),
            Ok(Ok(0)) | Ok(Err(_)) => return (got, true),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// A changed ConfigMap `bgp` section applies without a restart in
/// Kubernetes mode: a new peer gets a session while the other's stays as it
/// is; a peer whose settings change is reset alone (Cease, then a new OPEN
/// with the new hold time); a removed peer gets a Cease; an invalid
/// ConfigMap touches nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bgp_peers_change_live_from_the_configmap() {
    let (r1, p1) = Router::start().await;
    let (r2, p2) = Router::start().await;
    let config = |peers: &str| {
        format!(
            "pools: [{{name: loopback, addresses: [127.0.52.0/28]}}]\nbgp:\n  routerId: 192.0.2.11\n  peers:\n{peers}"
        )
    };
    let one = format!("    - {{name: tor1, address: 127.0.0.1, port: {p1}, asn: 65000, myAsn: 65001, holdTime: 90s}}\n");
    let two = format!("    - {{name: tor2, address: 127.0.0.1, port: {p2}, asn: 65000, myAsn: 65001, holdTime: 90s}}\n");
    let c = Cluster::start().await;
    c.set_config(&config(&one)).await;
    c.create_node("node1", "127.0.0.1", json!({}));
    c.create_speaker_pod("node1", "127.0.0.1");
    let speaker = KubeSpeaker::start(&c, "node1", &[]).await;
    let (mut s1, hold) = r1.session(&speaker).await;
    assert_eq!(hold, 90);

    // Added: tor2 gets a session; tor1's connection sees nothing.
    c.set_config(&config(&format!("{one}{two}"))).await;
    let (mut s2, _) = r2.session(&speaker).await;
    let (bytes, closed) = sent_within(&mut s1, Duration::from_millis(500)).await;
    assert!(
        bytes.is_empty() && !closed,
        "tor1 untouched: {bytes:?} closed={closed}"
    );

    // Changed: tor1 is reset alone, and its new OPEN carries the new hold time.
    c.set_config(&config(&format!("{}{two}", one.replace("90s", "30s"))))
        .await;
    let (bytes, closed) = sent_within(&mut s1, Duration::from_secs(10)).await;
    assert!(closed, "tor1's old session ended\n{}", speaker.log());
    assert_eq!(bytes.get(18), Some(&3), "a NOTIFICATION first: {bytes:?}");
    assert_eq!(bytes.get(19), Some(&6), "a Cease: {bytes:?}");
    let (mut s1, hold) = r1.session(&speaker).await;
    assert_eq!(hold, 30);
    let (bytes, closed) = sent_within(&mut s2, Duration::from_millis(300)).await;
    assert!(bytes.is_empty() && !closed, "tor2 untouched");

    // Invalid (hold time 1 s): refused, nothing sent anywhere.
    c.set_config(&config(&format!("{}{two}", one.replace("90s", "1s"))))
        .await;
    let t = Instant::now();
    while !speaker.log().contains("the ConfigMap is invalid") {
        assert!(t.elapsed() < T, "{}", speaker.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for s in [&mut s1, &mut s2] {
        let (bytes, closed) = sent_within(s, Duration::from_millis(300)).await;
        assert!(
            bytes.is_empty() && !closed,
            "an invalid ConfigMap touched a session"
        );
    }

    // Removed: tor2 gets a Cease; tor1 stays.
    c.set_config(&config(&one.replace("90s", "30s"))).await;
    let (bytes, closed) = sent_within(&mut s2, Duration::from_secs(10)).await;
    assert!(
        closed && bytes.get(19) == Some(&6),
        "tor2 ended with a Cease: {bytes:?}"
    );
    let (bytes, closed) = sent_within(&mut s1, Duration::from_millis(300)).await;
    assert!(bytes.is_empty() && !closed, "tor1 untouched");
    let log = speaker.log();
    assert!(
        log.contains("BGP peers added: tor2")
            && log.contains("BGP peers reset: tor1")
            && log.contains("BGP peers removed: tor2"),
        "{log}"
    );
    let metrics = speaker.metrics_text().await;
    assert!(!metrics.contains("peer=\"tor2\""), "{metrics}");
}
