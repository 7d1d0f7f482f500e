//! The `bgp` section: peers (passwords, timers, BFD, graceful restart) and advertisements (communities).

use super::*;

/// The `bgp` section as parsed: router ID, peers and advertisements, each with its index.
pub(super) type BgpDraft = (
    Option<Ipv4Addr>,
    Vec<(usize, Peer)>,
    Vec<(usize, BgpAdvertisement)>,
);

/// `passwordSecret: {name: NAME, key: password}`, as MetalLB users write it;
/// the Secret is in the speaker's namespace.
pub(super) fn password_secret(ctx: &mut Ctx, f: Field<'_>) -> Option<PeerPassword> {
    let obj = ctx.object(f, &["name", "key", "namespace"])?;
    let name = match obj.get("name") {
        Some(n) => ctx.string(n)?,
        None => {
            ctx.error(f.path, "needs `name`: the Secret holding the password");
            return None;
        }
    };
    if name.is_empty() || name.len() > 253 {
        ctx.error(f.path, "`name` must be a Secret name (1-253 characters)");
        return None;
    }
    // MetalLB's spelling; the speaker reads Secrets only in its own namespace.
    let namespace = match obj.get("namespace") {
        Some(ns) => Some(ctx.string(ns)?),
        None => None,
    };
    let key = match obj.get("key") {
        Some(k) => ctx.string(k)?,
        None => "password".to_string(),
    };
    Some(PeerPassword::Secret {
        name,
        key,
        namespace,
    })
}

pub(super) fn bgp(ctx: &mut Ctx, f: Field<'_>) -> Option<BgpDraft> {
    let obj = ctx.object(f, &["routerId", "peers", "advertisements"])?;
    let router_id = obj.get("routerId").and_then(|f| ctx.parse::<Ipv4Addr>(f));
    let peers = indexed(ctx, obj.get("peers"), peer);
    let advertisements = indexed(ctx, obj.get("advertisements"), advertisement);
    Some((router_id, peers, advertisements))
}

pub(super) fn asn(ctx: &mut Ctx, f: Field<'_>) -> Option<u32> {
    let asn: u32 = ctx.uint(f, 1, u32::MAX as u64)?;
    if asn == 23456 {
        // AS_TRANS (RFC 6793) stands in for 4-byte ASNs on old sessions; it is never a real AS.
        ctx.error(
            f.path,
            "23456 is AS_TRANS, reserved by RFC 6793; use your real AS number",
        );
        return None;
    }
    Some(asn)
}

/// A BGP timer: whole seconds, since the protocol carries seconds.
pub(super) fn seconds(ctx: &mut Ctx, f: Field<'_>) -> Option<Duration> {
    let d = ctx.duration(f)?;
    if d.subsec_nanos() != 0 {
        ctx.error(f.path, "BGP timers are whole seconds; write e.g. 3s");
        return None;
    }
    if d.as_secs() > 65535 {
        ctx.error(f.path, "is longer than BGP allows (65535s)");
        return None;
    }
    Some(d)
}

pub(super) fn peer(ctx: &mut Ctx, f: Field<'_>) -> Option<Peer> {
    let obj = ctx.object(
        f,
        &[
            "name",
            "address",
            "asn",
            "myAsn",
            "port",
            "holdTime",
            "keepaliveTime",
            "password",
            "passwordFile",
            "passwordSecret",
            "ebgpMultihop",
            "sourceAddress",
            "nextHopIPv4",
            "nextHopIPv6",
            "gracefulRestart",
            "bfd",
            "nodeSelector",
            "passive",
            "routerId",
        ],
    )?;
    let name = name(ctx, &obj, "peer");
    let address = obj
        .require(ctx, "address", "give the router's IP address")
        .and_then(|f| ctx.parse::<IpAddr>(f));
    let peer_asn = obj
        .require(ctx, "asn", "give the router's AS number")
        .and_then(|f| asn(ctx, f));
    let my_asn = obj
        .require(ctx, "myAsn", "give this cluster's AS number")
        .and_then(|f| asn(ctx, f));
    let port = obj
        .get("port")
        .and_then(|f| ctx.uint(f, 1, 65535))
        .unwrap_or(179);
    let hold_f = obj.get("holdTime");
    let hold_time = hold_f
        .and_then(|f| seconds(ctx, f))
        .unwrap_or(Duration::from_secs(90));
    if let Some(f) = hold_f {
        if !hold_time.is_zero() && hold_time < Duration::from_secs(3) {
            ctx.error(
                f.path,
                "must be 0s (no keepalives) or at least 3s (RFC 4271)",
            );
        }
    }
    let keepalive_f = obj.get("keepaliveTime");
    let keepalive_time = keepalive_f
        .and_then(|f| seconds(ctx, f))
        .unwrap_or(Duration::from_secs(hold_time.as_secs() / 3));
    if let Some(f) = keepalive_f {
        if hold_time.is_zero() && !keepalive_time.is_zero() {
            ctx.error(f.path, "must be 0s when holdTime is 0s");
        } else if !hold_time.is_zero() && (keepalive_time >= hold_time || keepalive_time.is_zero())
        {
            ctx.error(
                f.path,
                format!(
                    "must be shorter than holdTime ({}s) and not 0s; one third of it is usual",
                    hold_time.as_secs()
                ),
            );
        }
    }
    let sources: Vec<Field<'_>> = ["password", "passwordFile", "passwordSecret"]
        .iter()
        .filter_map(|k| obj.get(k))
        .collect();
    let password = match sources.as_slice() {
        [] => None,
        [_, second, ..] => {
            ctx.error(
                second.path,
                "set one of password, passwordFile and passwordSecret, not several",
            );
            None
        }
        [_] => {
            if let Some(f) = obj.get("password") {
                ctx.string(f).and_then(|p| {
                    if p.is_empty() || p.len() > MAX_MD5_KEY {
                        ctx.error(
                            f.path,
                            format!("must be 1-{MAX_MD5_KEY} bytes (the TCP-MD5 key limit)"),
                        );
                        None
                    } else {
                        Some(PeerPassword::Inline(p))
                    }
                })
            } else if let Some(f) = obj.get("passwordFile") {
                ctx.string(f).map(|p| PeerPassword::File(PathBuf::from(p)))
            } else {
                let f = obj.get("passwordSecret").expect("one source");
                password_secret(ctx, f)
            }
        }
    };
    let ebgp_multihop = obj.get("ebgpMultihop").and_then(|f| ctx.uint(f, 1, 255));
    let passive = obj
        .get("passive")
        .and_then(|f| ctx.boolean(f))
        .unwrap_or(false);
    let source_address = obj
        .get("sourceAddress")
        .and_then(|f| ctx.parse::<IpAddr>(f));
    if let (Some(a), Some(s), Some(f)) = (address, source_address, obj.get("sourceAddress")) {
        if Family::of(a) != Family::of(s) {
            ctx.error(
                f.path,
                format!("{s} is not of the same family as the peer address {a}"),
            );
        }
    }
    let next_hop_v4 = obj
        .get("nextHopIPv4")
        .and_then(|f| match ctx.parse::<IpAddr>(f)? {
            IpAddr::V4(a) => Some(a),
            IpAddr::V6(a) => {
                ctx.error(f.path, format!("{a} is not an IPv4 address"));
                None
            }
        });
    let next_hop_v6 = obj
        .get("nextHopIPv6")
        .and_then(|f| match ctx.parse::<IpAddr>(f)? {
            IpAddr::V6(a) => Some(a),
            IpAddr::V4(a) => {
                ctx.error(f.path, format!("{a} is not an IPv6 address"));
                None
            }
        });
    if let (Some(p), Some(m), Some(f)) = (peer_asn, my_asn, obj.get("ebgpMultihop")) {
        if p == m {
            ctx.error(
                f.path,
                "only applies to eBGP peers (asn differs from myAsn); remove it",
            );
        }
    }
    let graceful_restart = obj
        .get("gracefulRestart")
        .and_then(|f| graceful_restart(ctx, f))
        .unwrap_or_default();
    let bfd = obj.get("bfd").and_then(|f| bfd(ctx, f)).flatten();
    let node_selector = obj.get("nodeSelector").and_then(|f| selector(ctx, f));
    let router_id = obj.get("routerId").and_then(|f| ctx.parse::<Ipv4Addr>(f));
    Some(Peer {
        name: name?,
        address: address?,
        asn: peer_asn?,
        my_asn: my_asn?,
        port,
        hold_time,
        keepalive_time,
        password,
        ebgp_multihop,
        passive,
        source_address,
        next_hop_v4,
        next_hop_v6,
        graceful_restart,
        bfd,
        node_selector,
        router_id,
    })
}

pub(super) fn graceful_restart(ctx: &mut Ctx, f: Field<'_>) -> Option<GracefulRestart> {
    let obj = ctx.object(f, &["enabled", "restartTime"])?;
    let mut gr = GracefulRestart::default();
    if let Some(b) = obj.get("enabled").and_then(|f| ctx.boolean(f)) {
        gr.enabled = b;
    }
    if let Some(f) = obj.get("restartTime") {
        if let Some(d) = seconds(ctx, f) {
            // The capability carries the restart time in 12 bits.
            if d.as_secs() > 4095 {
                ctx.error(f.path, "must be at most 4095s (RFC 4724)");
            } else {
                gr.restart_time = d;
            }
        }
    }
    Some(gr)
}

/// `Some(None)` is an explicitly disabled BFD block.
pub(super) fn bfd(ctx: &mut Ctx, f: Field<'_>) -> Option<Option<Bfd>> {
    let obj = ctx.object(
        f,
        &[
            "enabled",
            "receiveInterval",
            "transmitInterval",
            "detectMultiplier",
            "passiveMode",
            "echoMode",
        ],
    )?;
    let mut bfd = Bfd::default();
    if let Some(b) = obj.get("passiveMode").and_then(|f| ctx.boolean(f)) {
        bfd.passive = b;
    }
    if let Some(f) = obj.get("echoMode") {
        if ctx.boolean(f) == Some(true) {
            ctx.error(
                f.path,
                "ferrolb's BFD has no echo function (asynchronous mode only); remove echoMode or set it to false",
            );
        }
    }
    let interval = |ctx: &mut Ctx, key: &str| -> Option<Duration> {
        let f = obj.get(key)?;
        let d = ctx.duration(f)?;
        if d < Duration::from_millis(10) || d > Duration::from_secs(60) {
            ctx.error(f.path, "must be between 10ms and 60s");
            return None;
        }
        Some(d)
    };
    if let Some(d) = interval(ctx, "receiveInterval") {
        bfd.receive_interval = d;
    }
    if let Some(d) = interval(ctx, "transmitInterval") {
        bfd.transmit_interval = d;
    }
    if let Some(m) = obj
        .get("detectMultiplier")
        .and_then(|f| ctx.uint(f, 1, 255))
    {
        bfd.detect_multiplier = m;
    }
    let enabled = obj
        .get("enabled")
        .and_then(|f| ctx.boolean(f))
        .unwrap_or(true);
    Some(enabled.then_some(bfd))
}

pub(super) fn community(ctx: &mut Ctx, f: Field<'_>) -> Option<Community> {
    let text = ctx.string(f)?;
    let well_known = match text.to_ascii_lowercase().as_str() {
        "no-export" => Some(0xFFFF_FF01),
        "no-advertise" => Some(0xFFFF_FF02),
        "no-export-subconfed" | "local-as" => Some(0xFFFF_FF03),
        "no-peer" => Some(0xFFFF_FF04),
        "blackhole" => Some(0xFFFF_029A),
        "graceful-shutdown" => Some(0xFFFF_0000),
        _ => None,
    };
    if let Some(v) = well_known {
        return Some(Community(v));
    }
    let parsed = text
        .split_once(':')
        .and_then(|(a, b)| Some((a.trim().parse::<u16>().ok()?, b.trim().parse::<u16>().ok()?)));
    match parsed {
        Some((hi, lo)) => Some(Community(((hi as u32) << 16) | lo as u32)),
        None => {
            ctx.error(
                f.path,
                format!("{text:?} is not a community; write ASN:VALUE with each part 0-65535, or no-export, no-advertise, no-peer, blackhole"),
            );
            None
        }
    }
}

pub(super) fn large_community(ctx: &mut Ctx, f: Field<'_>) -> Option<LargeCommunity> {
    let text = ctx.string(f)?;
    let parts: Vec<Option<u32>> = text.split(':').map(|p| p.trim().parse().ok()).collect();
    match parts.as_slice() {
        [Some(a), Some(b), Some(c)] => Some(LargeCommunity(*a, *b, *c)),
        _ => {
            ctx.error(
                f.path,
                format!("{text:?} is not a large community; write GLOBAL:DATA1:DATA2 with each part 0-4294967295"),
            );
            None
        }
    }
}

pub(super) fn advertisement(ctx: &mut Ctx, f: Field<'_>) -> Option<BgpAdvertisement> {
    let obj = ctx.object(
        f,
        &[
            "pools",
            "aggregationLength",
            "aggregationLengthV6",
            "localPref",
            "communities",
            "largeCommunities",
            "peers",
            "nodeSelector",
            "serviceSelector",
        ],
    )?;
    Some(BgpAdvertisement {
        pools: obj.get("pools").map(|f| ctx.strings(f)).unwrap_or_default(),
        aggregation_length: obj
            .get("aggregationLength")
            .and_then(|f| ctx.uint(f, 0, 32))
            .unwrap_or(32),
        aggregation_length_v6: obj
            .get("aggregationLengthV6")
            .and_then(|f| ctx.uint(f, 0, 128))
            .unwrap_or(128),
        local_pref: obj
            .get("localPref")
            .and_then(|f| ctx.uint(f, 0, u32::MAX as u64)),
        communities: obj
            .get("communities")
            .map(|f| ctx.list(f, community))
            .unwrap_or_default(),
        large_communities: obj
            .get("largeCommunities")
            .map(|f| ctx.list(f, large_community))
            .unwrap_or_default(),
        peers: obj.get("peers").map(|f| ctx.strings(f)).unwrap_or_default(),
        node_selector: obj.get("nodeSelector").and_then(|f| selector(ctx, f)),
        service_selector: obj.get("serviceSelector").and_then(|f| selector(ctx, f)),
    })
}
