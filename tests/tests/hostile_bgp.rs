//! A hostile BGP peer (part of the rogue-host suite, on loopback so it needs
//! no root): a router that completes a session and then sends malformed
//! OPENs and UPDATEs — bad lengths up to the largest the header can claim,
//! unknown message types, unknown well-known attributes, wrong attribute
//! flags, AS_PATH segments that overrun, a second OPEN. Each gets the answer
//! RFC 4271/6608 gives (a NOTIFICATION with the right code and subcode) or
//! RFC 7606's treat-as-withdraw (session kept); the speaker never panics,
//! and a well-behaved peer on the same speaker stays Established throughout.

use ferrolb_tests::speaker::{free_port, metric_sum, Speaker};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::timeout;

const OPEN: u8 = 1;
const UPDATE: u8 = 2;
const NOTIFICATION: u8 = 3;
const KEEPALIVE: u8 = 4;

fn message(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![0xff; 16];
    m.extend_from_slice(&((19 + body.len()) as u16).to_be_bytes());
    m.push(kind);
    m.extend_from_slice(body);
    m
}

/// An OPEN from AS `asn`, hold `hold` s, identifier `id`, 4-octet AS capability.
fn open(version: u8, asn: u32, hold: u16, id: [u8; 4]) -> Vec<u8> {
    let mut b = vec![version];
    b.extend_from_slice(&(asn as u16).to_be_bytes());
    b.extend_from_slice(&hold.to_be_bytes());
    b.extend_from_slice(&id);
    b.extend_from_slice(&[8, 2, 6, 65, 4]);
    b.extend_from_slice(&asn.to_be_bytes());
    message(OPEN, &b)
}

fn good_open(id: [u8; 4]) -> Vec<u8> {
    open(4, 65000, 9, id)
}

/// An UPDATE with `attrs` (raw attribute bytes) announcing 198.51.100.0/24.
fn update(attrs: &[u8]) -> Vec<u8> {
    let mut b = vec![0, 0];
    b.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
    b.extend_from_slice(attrs);
    b.extend_from_slice(&[24, 198, 51, 100]);
    message(UPDATE, &b)
}

/// ORIGIN IGP, AS_PATH [65000] (4-octet), NEXT_HOP 127.0.0.1.
fn good_attrs() -> Vec<u8> {
    let mut a = vec![0x40, 1, 1, 0];
    a.extend_from_slice(&[0x40, 2, 6, 2, 1]);
    a.extend_from_slice(&65000u32.to_be_bytes());
    a.extend_from_slice(&[0x40, 3, 4, 127, 0, 0, 1]);
    a
}

/// Reads one message: (type, body); `None` if the connection closed.
async fn read(c: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
    let mut h = [0u8; 19];
    timeout(Duration::from_secs(60), c.read_exact(&mut h))
        .await
        .expect("a message within 60 s")
        .ok()?;
    let len = u16::from_be_bytes([h[16], h[17]]) as usize;
    let mut body = vec![0u8; len - 19];
    c.read_exact(&mut body).await.ok()?;
    Some((h[18], body))
}

/// Connects from `from` to the speaker's passive peer port.
async fn connect(from: &str, port: u16, s: &Speaker) -> TcpStream {
    let t = Instant::now();
    loop {
        let sock = TcpSocket::new_v4().unwrap();
        sock.bind(format!("{from}:0").parse().unwrap()).unwrap();
        match sock
            .connect(format!("127.0.0.1:{port}").parse().unwrap())
            .await
        {
            Ok(c) => return c,
            Err(e) => {
                assert!(
                    t.elapsed() < Duration::from_secs(10),
                    "speaker not listening: {e}\n{}",
                    s.log()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// OPEN, KEEPALIVE, and reads until the speaker's VIP UPDATE arrived.
async fn establish(c: &mut TcpStream, id: [u8; 4]) {
    c.write_all(&good_open(id)).await.unwrap();
    c.write_all(&message(KEEPALIVE, &[])).await.unwrap();
    loop {
        let (kind, body) = read(c).await.expect("session refused (closed)");
        assert_ne!(kind, NOTIFICATION, "session refused: {body:?}");
        if kind == UPDATE && body.ends_with(&[32, 127, 0, 48, 10]) {
            return;
        }
    }
}

/// Reads until a NOTIFICATION: (code, subcode); then the connection must close.
async fn notification(c: &mut TcpStream) -> (u8, u8) {
    loop {
        let (kind, body) = read(c).await.expect("closed without a NOTIFICATION");
        if kind == NOTIFICATION {
            let mut rest = [0u8; 1];
            let closed = timeout(Duration::from_secs(5), c.read(&mut rest)).await;
            assert!(
                matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
                "still open after the NOTIFICATION"
            );
            return (body[0], body[1]);
        }
    }
}

/// A well-behaved peer: keeps its session alive in the background and
/// reports whatever ended it.
fn good_peer(mut c: TcpStream) -> tokio::task::JoinHandle<String> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(2));
        let mut h = [0u8; 4096];
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    if c.write_all(&message(KEEPALIVE, &[])).await.is_err() {
                        return "write failed".to_string();
                    }
                }
                r = c.read(&mut h) => match r {
                    Ok(0) | Err(_) => return "closed".to_string(),
                    // A NOTIFICATION from the speaker (type byte after the marker and length).
                    Ok(n) if n >= 19 && h[18] == NOTIFICATION => return format!("NOTIFICATION {:?}", &h[19..21]),
                    Ok(_) => {}
                }
            }
        }
    })
}

/// A message that must reset the session: what it is, whether it is sent on
/// an established session, its bytes, and the NOTIFICATION (code, subcode).
type Reset = (&'static str, bool, Vec<u8>, (u8, u8));

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_opens_and_updates_get_the_rfc_answer_and_other_peers_stay_up() {
    let port = free_port();
    let s = Speaker::start(&format!(
        "pools: [{{name: vips, addresses: [127.0.48.0/28]}}]
services: [{{name: web, ip: 127.0.48.10}}]
bgp:
  routerId: 192.0.2.11
  peers:
    - {{name: rogue, address: 127.0.0.1, port: {port}, asn: 65000, myAsn: 65001, holdTime: 9s, passive: true}}
    - {{name: good, address: 127.0.0.2, port: {port}, asn: 65000, myAsn: 65001, holdTime: 9s, passive: true}}
"
    ))
    .await;
    let mut good = connect("127.0.0.2", port, &s).await;
    establish(&mut good, [192, 0, 2, 2]).await;
    let good = good_peer(good);

    // Messages that must reset the session, each on a fresh session (OPEN
    // errors right after connecting; the others once Established).
    let long_header = {
        let mut m = message(KEEPALIVE, &[]);
        m[16..18].copy_from_slice(&u16::MAX.to_be_bytes());
        m
    };
    let short_header = {
        let mut m = message(KEEPALIVE, &[]);
        m[16..18].copy_from_slice(&18u16.to_be_bytes());
        m
    };
    let mut bad_params = open(4, 65000, 9, [192, 0, 2, 1]);
    bad_params[28] = 200; // optional parameters length past the message
    let withdrawn_overrun = message(UPDATE, &[0x10, 0x00, 0, 0]);
    let attrs_overrun = message(UPDATE, &[0, 0, 0, 16, 0x40, 1, 1, 0]);
    let attr_value_overrun = update(&[0x40, 1, 200, 0]);
    let extended_overrun = update(&[0x50, 2, 0xff, 0xff, 2, 1, 0, 0]);
    let mp_reach_bad = update(&[0x80, 14, 3, 0, 2, 1]);
    let resets: Vec<Reset> = vec![
        (
            "BGP version 3",
            false,
            open(3, 65000, 9, [192, 0, 2, 1]),
            (2, 1),
        ),
        (
            "the wrong peer AS",
            false,
            open(4, 65099, 9, [192, 0, 2, 1]),
            (2, 2),
        ),
        (
            "BGP identifier 0.0.0.0",
            false,
            open(4, 65000, 9, [0, 0, 0, 0]),
            (2, 3),
        ),
        (
            "hold time 2 s",
            false,
            open(4, 65000, 2, [192, 0, 2, 1]),
            (2, 6),
        ),
        (
            "optional parameters overrunning the OPEN",
            false,
            bad_params,
            (2, 0),
        ),
        ("a header claiming 65,535 bytes", true, long_header, (1, 2)),
        ("a header claiming 18 bytes", true, short_header, (1, 2)),
        ("message type 9", true, message(9, &[0; 8]), (1, 3)),
        (
            "withdrawn routes overrunning the UPDATE",
            true,
            withdrawn_overrun,
            (3, 1),
        ),
        (
            "attributes overrunning the UPDATE",
            true,
            attrs_overrun,
            (3, 1),
        ),
        (
            "an attribute value overrunning the list",
            true,
            attr_value_overrun,
            (3, 1),
        ),
        (
            "an extended length of 65,535",
            true,
            extended_overrun,
            (3, 1),
        ),
        ("a truncated MP_REACH_NLRI", true, mp_reach_bad, (3, 9)),
        ("a second OPEN", true, good_open([192, 0, 2, 1]), (5, 3)),
    ];
    for (what, established, bytes, want) in &resets {
        let mut c = connect("127.0.0.1", port, &s).await;
        if *established {
            establish(&mut c, [192, 0, 2, 1]).await;
        }
        c.write_all(bytes).await.unwrap();
        let got = timeout(Duration::from_secs(15), notification(&mut c))
            .await
            .unwrap_or_else(|_| panic!("{what}: no NOTIFICATION within 15 s\n{}", s.log()));
        eprintln!("{what}: NOTIFICATION {}/{}", got.0, got.1);
        assert_eq!(got, *want, "{what}\n{}", s.log());
    }

    // Attribute errors RFC 7606 contains: the UPDATE's routes are withdrawn
    // and the session stays up.
    let mut unknown_well_known = good_attrs();
    unknown_well_known.extend_from_slice(&[0x40, 99, 1, 0]);
    let mut origin_optional = good_attrs();
    origin_optional[0] = 0xc0;
    let path_overrun = {
        // An AS_SEQUENCE of 10 ASNs holding one.
        let mut a = vec![0x40, 1, 1, 0, 0x40, 2, 6, 2, 10];
        a.extend_from_slice(&65000u32.to_be_bytes());
        a.extend_from_slice(&[0x40, 3, 4, 127, 0, 0, 1]);
        a
    };
    let bad_origin = {
        let mut a = good_attrs();
        a[3] = 7;
        a
    };
    let next_hop_length = {
        let mut a = vec![0x40, 1, 1, 0, 0x40, 2, 6, 2, 1];
        a.extend_from_slice(&65000u32.to_be_bytes());
        a.extend_from_slice(&[0x40, 3, 5, 127, 0, 0, 1, 0]);
        a
    };
    let missing_next_hop = good_attrs()[..13].to_vec();
    let withdraws: Vec<(&str, Vec<u8>)> = vec![
        (
            "an unknown well-known attribute",
            update(&unknown_well_known),
        ),
        ("ORIGIN flagged optional", update(&origin_optional)),
        (
            "an AS_PATH segment overrunning its attribute",
            update(&path_overrun),
        ),
        ("ORIGIN 7", update(&bad_origin)),
        ("a 5-byte NEXT_HOP", update(&next_hop_length)),
        ("no NEXT_HOP", update(&missing_next_hop)),
    ];
    let mut c = connect("127.0.0.1", port, &s).await;
    establish(&mut c, [192, 0, 2, 1]).await;
    for (_, bytes) in &withdraws {
        c.write_all(bytes).await.unwrap();
    }
    c.write_all(&message(KEEPALIVE, &[])).await.unwrap();
    // The session survives: the speaker's next KEEPALIVE (hold 9 s: every 3 s) comes, no NOTIFICATION.
    loop {
        let (kind, body) = read(&mut c).await.expect("the session was closed");
        assert_ne!(kind, NOTIFICATION, "session reset: {body:?}\n{}", s.log());
        if kind == KEEPALIVE {
            break;
        }
    }
    let m = s.http("/metrics").await.expect("metrics").1;
    let treated = metric_sum(
        &m,
        "ferrolb_bgp_updates_treated_as_withdraw_total",
        &["peer=\"rogue\""],
    );
    assert_eq!(treated, withdraws.len() as f64, "{m}");
    for (what, _) in &withdraws {
        eprintln!("{what}: treated as withdraw, session kept");
    }

    // The other peer never noticed, and nothing panicked.
    assert!(
        !good.is_finished(),
        "the good peer's session ended: {:?}",
        good.await
    );
    assert!(m.contains("ferrolb_bgp_session_up{peer=\"good\"} 1"), "{m}");
    assert_eq!(
        metric_sum(
            &m,
            "ferrolb_bgp_notifications_total",
            &["peer=\"good\"", "direction=\"sent\""]
        ),
        0.0,
        "{m}"
    );
    assert!(!s.log().contains("panicked"), "{}", s.log());
    good.abort();
    drop(s);
    let _ = std::process::Command::new("ip")
        .args([
            "route",
            "del",
            "local",
            "127.0.48.10/32",
            "dev",
            "lo",
            "table",
            "local",
        ])
        .output();
}
