//! Hand-written routers on loopback. A misbehaving BGP peer sends a bad
//! OPEN, a bad header, then a malformed UPDATE after the session is up. The
//! speaker answers each with the RFC 4271 NOTIFICATION, never panics, and
//! reconnects with backoff that resets once a session was established. Needs
//! no root (the speaker connects out to 127.0.0.1). The VIP is in 127.0.0.0/8,
//! already local on every host, so the local route a speaker running as root
//! adds changes nothing; the test removes it at the end. Also: a passive peer
//! whose router reconnects, and connection collisions (both sides connect).

use ferrolb_tests::speaker::Speaker;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;

const KEEPALIVE: u8 = 4;
const NOTIFICATION: u8 = 3;
const UPDATE: u8 = 2;
const OPEN: u8 = 1;

fn message(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![0xff; 16];
    m.extend_from_slice(&((19 + body.len()) as u16).to_be_bytes());
    m.push(kind);
    m.extend_from_slice(body);
    m
}

/// An OPEN from AS 65000, hold 9 s, ID 192.0.2.1, with the 4-octet AS capability.
fn open(version: u8) -> Vec<u8> {
    open_from(version, [192, 0, 2, 1])
}

/// The same OPEN with BGP identifier `id`.
fn open_from(version: u8, id: [u8; 4]) -> Vec<u8> {
    let mut b = vec![version];
    b.extend_from_slice(&65000u16.to_be_bytes());
    b.extend_from_slice(&9u16.to_be_bytes());
    b.extend_from_slice(&id);
    // Optional parameters: one capability parameter holding 4-octet AS 65000.
    b.extend_from_slice(&[8, 2, 6, 65, 4]);
    b.extend_from_slice(&65000u32.to_be_bytes());
    message(OPEN, &b)
}

/// Reads one message: (type, body).
async fn read(c: &mut TcpStream) -> (u8, Vec<u8>) {
    let mut h = [0u8; 19];
    timeout(Duration::from_secs(15), c.read_exact(&mut h))
        .await
        .expect("a message within 15 s")
        .expect("connection open");
    let len = u16::from_be_bytes([h[16], h[17]]) as usize;
    let mut body = vec![0u8; len - 19];
    c.read_exact(&mut body).await.expect("message body");
    (h[18], body)
}

/// Reads until a NOTIFICATION arrives: (code, subcode); then the speaker must close.
async fn notification(c: &mut TcpStream) -> (u8, u8) {
    loop {
        let (kind, body) = read(c).await;
        if kind == NOTIFICATION {
            let mut rest = [0u8; 1];
            let closed = timeout(Duration::from_secs(5), c.read(&mut rest)).await;
            assert!(
                matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
                "connection closed after the NOTIFICATION"
            );
            return (body[0], body[1]);
        }
    }
}

async fn accept(l: &TcpListener, s: &Speaker) -> (TcpStream, Instant) {
    let (mut c, _) = match timeout(Duration::from_secs(40), l.accept()).await {
        Ok(r) => r.expect("accept"),
        Err(_) => panic!("speaker did not reconnect within 40 s:\n{}", s.log()),
    };
    let at = Instant::now();
    let (kind, _) = read(&mut c).await;
    assert_eq!(kind, OPEN, "the speaker opens with OPEN");
    (c, at)
}

#[tokio::test]
async fn bad_messages_get_the_right_notification_and_reconnects_back_off() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let speaker = Speaker::start(&format!(
        "pools: [{{name: vips, addresses: [127.0.30.0/28]}}]
services: [{{name: web, ip: 127.0.30.10}}]
bgp:
  routerId: 192.0.2.11
  peers: [{{name: fake, address: 127.0.0.1, port: {port}, asn: 65000, myAsn: 65001, holdTime: 9s}}]
"
    ))
    .await;

    // 1. BGP version 3: OPEN Message Error / Unsupported Version Number.
    let (mut c, t1) = accept(&listener, &speaker).await;
    c.write_all(&open(3)).await.unwrap();
    assert_eq!(notification(&mut c).await, (2, 1), "{}", speaker.log());
    drop(c);

    // 2. A header whose marker is not all ones: Message Header Error /
    //    Connection Not Synchronized.
    let (mut c, t2) = accept(&listener, &speaker).await;
    let mut bad = message(KEEPALIVE, &[]);
    bad[3] = 0;
    c.write_all(&bad).await.unwrap();
    assert_eq!(notification(&mut c).await, (1, 1), "{}", speaker.log());
    drop(c);

    // 3. A good session, then an UPDATE whose attribute length runs past the
    //    message: UPDATE Message Error / Malformed Attribute List.
    let (mut c, t3) = accept(&listener, &speaker).await;
    c.write_all(&open(4)).await.unwrap();
    c.write_all(&message(KEEPALIVE, &[])).await.unwrap();
    loop {
        let (kind, body) = read(&mut c).await;
        assert_ne!(kind, NOTIFICATION, "session refused: {body:?}");
        // The VIP's /32 is the last 5 bytes of the first UPDATE (length 32, 127.0.30.10).
        if kind == UPDATE && body.ends_with(&[32, 127, 0, 30, 10]) {
            break;
        }
    }
    c.write_all(&message(UPDATE, &[0, 0, 0, 16, 0x40, 1, 1, 0]))
        .await
        .unwrap();
    assert_eq!(notification(&mut c).await, (3, 1), "{}", speaker.log());
    drop(c);

    // 4. After an established session the wait is the base interval again.
    let (c, t4) = accept(&listener, &speaker).await;
    drop(c);

    let (g1, g2, g3) = (t2 - t1, t3 - t2, t4 - t3);
    eprintln!("reconnect gaps: {g1:?}, {g2:?} (backed off), {g3:?} (after an established session)");
    assert!(g1 >= Duration::from_millis(1900), "base retry 2 s: {g1:?}");
    assert!(g2 >= Duration::from_millis(3900), "doubled: {g2:?}");
    assert!(
        g3 < g2,
        "reset after the session was established: {g3:?} vs {g2:?}"
    );

    // It never panicked and still serves metrics, which count what it sent.
    let (code, metrics) = speaker.http("/metrics").await.expect("metrics");
    assert_eq!(code, 200);
    assert!(
        metrics.contains("ferrolb_bgp_notifications_total{peer=\"fake\",direction=\"sent\"} 3"),
        "{metrics}"
    );
    assert!(!speaker.log().contains("panicked"), "{}", speaker.log());
    drop(speaker);
    // Leave the host as it was (a no-op route inside 127/8, present only when root).
    let _ = std::process::Command::new("ip")
        .args([
            "route",
            "del",
            "local",
            "127.0.30.10/32",
            "dev",
            "lo",
            "table",
            "local",
        ])
        .output();
}

/// Runs OPEN and KEEPALIVE as the router on `c` until the VIP's UPDATE arrives.
async fn establish(c: &mut TcpStream) {
    c.write_all(&open(4)).await.unwrap();
    finish(c, [127, 0, 31, 10], false).await;
}

/// Sends KEEPALIVE (the router's OPEN is already sent) and reads until the
/// UPDATE announcing `vip`/32 arrives; `opened`: the speaker's OPEN was read already.
async fn finish(c: &mut TcpStream, vip: [u8; 4], mut opened: bool) {
    c.write_all(&message(KEEPALIVE, &[])).await.unwrap();
    loop {
        let (kind, body) = read(c).await;
        assert_ne!(kind, NOTIFICATION, "session refused: {body:?}");
        opened |= kind == OPEN;
        if kind == UPDATE && body.ends_with(&[32, vip[0], vip[1], vip[2], vip[3]]) {
            assert!(opened, "OPEN before UPDATE");
            return;
        }
    }
}

#[tokio::test]
async fn a_passive_peer_replaces_its_session_when_the_router_reconnects() {
    // A passive peer on a high port (no root needed): the "router" connects to it.
    let port = ferrolb_tests::speaker::free_port();
    let speaker = Speaker::start(&format!(
        "pools: [{{name: vips, addresses: [127.0.31.0/28]}}]
services: [{{name: web, ip: 127.0.31.10}}]
bgp:
  routerId: 192.0.2.11
  peers: [{{name: router, address: 127.0.0.1, port: {port}, asn: 65000, myAsn: 65001, holdTime: 90s, passive: true}}]
"
    ))
    .await;
    let connect = || async {
        let t = Instant::now();
        loop {
            if let Ok(c) = TcpStream::connect(("127.0.0.1", port)).await {
                return c;
            }
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "speaker not listening"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let mut old = connect().await;
    establish(&mut old).await;

    // The router restarts: a new connection while the old session looks alive
    // (hold time 90 s). The speaker takes the new one at once.
    let t = Instant::now();
    let mut new = connect().await;
    establish(&mut new).await;
    eprintln!("reconnect to routes on the new session: {:?}", t.elapsed());
    let mut rest = [0u8; 64];
    let closed = timeout(Duration::from_secs(5), async {
        loop {
            match old.read(&mut rest).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the old connection is closed");
    let (code, metrics) = speaker.http("/metrics").await.expect("metrics");
    assert_eq!(code, 200);
    assert!(
        metrics.contains("ferrolb_bgp_session_up{peer=\"router\"} 1"),
        "{metrics}"
    );
    drop(speaker);
    let _ = std::process::Command::new("ip")
        .args([
            "route",
            "del",
            "local",
            "127.0.31.10/32",
            "dev",
            "lo",
            "table",
            "local",
        ])
        .output();
}

/// Both sides connect at once (RFC 4271 6.8). The "router" is 127.0.0.2 and
/// listens there; the speaker connects from, and listens on, 127.0.0.3 (its
/// `sourceAddress`), on the same port. The speaker's identifier is 192.0.2.11.
/// Returns the connection the speaker opened (its OPEN read) and the one the
/// router opened (the router's OPEN with `router_id` sent).
async fn both_connect(
    port: u16,
    router: &TcpListener,
    speaker: &Speaker,
    router_id: [u8; 4],
) -> (TcpStream, TcpStream) {
    let (outgoing, _) = accept(router, speaker).await;
    let t = Instant::now();
    let mut incoming = loop {
        let s = tokio::net::TcpSocket::new_v4().unwrap();
        s.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        match s
            .connect(format!("127.0.0.3:{port}").parse().unwrap())
            .await
        {
            Ok(c) => break c,
            Err(e) => {
                assert!(
                    t.elapsed() < Duration::from_secs(10),
                    "speaker not listening on 127.0.0.3:{port}: {e}\n{}",
                    speaker.log()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    incoming.write_all(&open_from(4, router_id)).await.unwrap();
    (outgoing, incoming)
}

fn collision_speaker_config(port: u16, vip_octet: u8) -> String {
    format!(
        "pools: [{{name: vips, addresses: [127.0.32.0/28]}}]
services: [{{name: web, ip: 127.0.32.{vip_octet}}}]
bgp:
  routerId: 192.0.2.11
  peers: [{{name: router, address: 127.0.0.2, port: {port}, sourceAddress: 127.0.0.3, asn: 65000, myAsn: 65001, holdTime: 90s}}]
"
    )
}

fn remove_route(vip: &str) {
    let _ = std::process::Command::new("ip")
        .args(["route", "del", "local", vip, "dev", "lo", "table", "local"])
        .output();
}

#[tokio::test]
async fn collision_keeps_the_connection_of_the_higher_identifier() {
    // The router's identifier is lower (192.0.2.1 < 192.0.2.11): the speaker keeps
    // the connection it opened and closes the router's with Cease/7.
    let router = TcpListener::bind("127.0.0.2:0").await.unwrap();
    let port = router.local_addr().unwrap().port();
    let speaker = Speaker::start(&collision_speaker_config(port, 10)).await;
    let (mut outgoing, mut incoming) = both_connect(port, &router, &speaker, [192, 0, 2, 1]).await;
    assert_eq!(
        notification(&mut incoming).await,
        (6, 7),
        "{}",
        speaker.log()
    );
    outgoing.write_all(&open(4)).await.unwrap();
    finish(&mut outgoing, [127, 0, 32, 10], true).await;
    assert!(
        speaker.log().contains("keeping the current connection"),
        "{}",
        speaker.log()
    );
    drop(speaker);

    // The router's identifier is higher (192.0.2.200): the speaker gives up its
    // own connection with Cease/7 and completes the session on the router's.
    let router = TcpListener::bind("127.0.0.2:0").await.unwrap();
    let port = router.local_addr().unwrap().port();
    let speaker = Speaker::start(&collision_speaker_config(port, 11)).await;
    let (mut outgoing, mut incoming) =
        both_connect(port, &router, &speaker, [192, 0, 2, 200]).await;
    assert_eq!(
        notification(&mut outgoing).await,
        (6, 7),
        "{}",
        speaker.log()
    );
    finish(&mut incoming, [127, 0, 32, 11], false).await;
    assert!(
        speaker.log().contains("taking the router's connection"),
        "{}",
        speaker.log()
    );
    let (_, metrics) = speaker.http("/metrics").await.expect("metrics");
    assert!(
        metrics.contains("ferrolb_bgp_session_up{peer=\"router\"} 1"),
        "{metrics}"
    );
    drop(speaker);
    remove_route("127.0.32.10/32");
    remove_route("127.0.32.11/32");
}

#[tokio::test]
async fn an_established_session_is_kept_when_the_router_connects_again() {
    let router = TcpListener::bind("127.0.0.2:0").await.unwrap();
    let port = router.local_addr().unwrap().port();
    let speaker = Speaker::start(&collision_speaker_config(port, 12)).await;
    let (mut outgoing, _) = accept(&router, &speaker).await;
    outgoing.write_all(&open(4)).await.unwrap();
    finish(&mut outgoing, [127, 0, 32, 12], true).await;
    // A higher identifier does not matter once Established: the new connection is refused.
    let s = tokio::net::TcpSocket::new_v4().unwrap();
    s.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let mut late = s
        .connect(format!("127.0.0.3:{port}").parse().unwrap())
        .await
        .unwrap();
    late.write_all(&open_from(4, [192, 0, 2, 200]))
        .await
        .unwrap();
    assert_eq!(notification(&mut late).await, (6, 7), "{}", speaker.log());
    // The established session is untouched: a KEEPALIVE still gets no NOTIFICATION back.
    outgoing.write_all(&message(KEEPALIVE, &[])).await.unwrap();
    let mut buf = [0u8; 19];
    let r = timeout(Duration::from_millis(500), outgoing.read(&mut buf)).await;
    assert!(
        !matches!(r, Ok(Ok(0))),
        "the established session was closed"
    );
    if let Ok(Ok(n)) = r {
        assert!(
            n < 19 || buf[18] != NOTIFICATION,
            "NOTIFICATION on the established session"
        );
    }
    drop(speaker);
    remove_route("127.0.32.12/32");
}

/// A router that refuses every connection is visible at the default log
/// level, once a minute however often the speaker retries.
#[tokio::test]
async fn a_refusing_router_is_one_warning_not_one_per_retry() {
    // Bound but not listening: connections are refused, and the speaker
    // cannot listen on the same port for the peer either (it would connect
    // to itself).
    let refusing =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    refusing
        .bind(
            &"127.0.0.1:0"
                .parse::<std::net::SocketAddr>()
                .unwrap()
                .into(),
        )
        .unwrap();
    let closed = refusing.local_addr().unwrap().as_socket().unwrap().port();
    let s = Speaker::start(&format!(
        "pools: [{{name: p, addresses: [127.0.46.0/28]}}]\nbgp:\n  routerId: 192.0.2.11\n  peers: [{{name: refuses, address: 127.0.0.1, port: {closed}, asn: 65000, myAsn: 65001}}]\n"
    ))
    .await;
    let deadline = Instant::now() + Duration::from_secs(15);
    while s.log().matches("connect failed").count() < 3 {
        assert!(
            Instant::now() < deadline,
            "fewer than 3 connection attempts:\n{}",
            s.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = s.log();
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("cannot connect to the BGP peer"))
        .collect();
    assert_eq!(warnings.len(), 1, "{log}");
    assert!(warnings[0].contains("WARN"), "{}", warnings[0]);
    assert!(
        warnings[0].contains("the router refused"),
        "{}",
        warnings[0]
    );
}

/// The TCP-MD5 key of a peer is never shown: not in the debug log, not on
/// /metrics, while the speaker tries to reach the peer.
#[tokio::test]
async fn a_bgp_password_appears_in_no_log_and_no_metric() {
    const SECRET: &str = "md5-key-never-shown-42";
    let port = ferrolb_tests::speaker::free_port();
    let s = Speaker::start(&format!(
        "pools: [{{name: p, addresses: [127.0.47.0/28]}}]\nbgp:\n  routerId: 192.0.2.11\n  peers: [{{name: keyed, address: 127.0.0.2, port: {port}, asn: 65000, myAsn: 65001, password: {SECRET}}}]\n"
    ))
    .await;
    // First the positive sign that the key was in use: a connect attempt failed
    // (nothing listens there) and was logged, with the peer's name.
    let t = std::time::Instant::now();
    while !s.log().contains("cannot connect to the BGP peer") {
        assert!(t.elapsed() < Duration::from_secs(10), "{}", s.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = s.log();
    assert!(log.contains("keyed"), "{log}");
    assert!(!log.contains(SECRET), "{log}");
    let metrics = s.http("/metrics").await.unwrap().1;
    assert!(metrics.contains("keyed"), "{metrics}");
    assert!(!metrics.contains(SECRET), "{metrics}");
}
