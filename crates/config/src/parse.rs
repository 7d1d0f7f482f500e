//! Turns the YAML tree into typed structs, checking each field on its own.
//! Checks that relate several fields or sections live in `crossref`.

use crate::decode::{Ctx, Field, Obj, Path};
use crate::model::*;
use crate::selector::{
    check_label_key, check_label_value, is_dns_label, LabelSelector, Requirement, SelectorOp,
};
use crate::value::Value;
use ferrolb_ipset::{AddrSpec, Cidr, Family, IpSet};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

/// The longest TCP-MD5 key Linux accepts (TCP_MD5SIG_MAXKEYLEN).
const MAX_MD5_KEY: usize = 80;

/// The typed sections, each item with its index in the file so that
/// cross-reference errors name the right path even when an earlier item was
/// rejected.
#[derive(Default)]
pub(crate) struct Draft {
    pub pools: Vec<(usize, Pool)>,
    pub l2: Vec<(usize, L2Advertisement)>,
    pub bgp: Option<BgpDraft>,
    pub members: Vec<(usize, Member)>,
    pub services: Vec<(usize, Service)>,
    pub forwarder: ForwarderSettings,
    pub failover: FailoverSettings,
}

impl Draft {
    pub fn into_config(self) -> Config {
        fn strip<T>(v: Vec<(usize, T)>) -> Vec<T> {
            v.into_iter().map(|(_, t)| t).collect()
        }
        Config {
            pools: strip(self.pools),
            l2: strip(self.l2),
            bgp: self.bgp.map(|(router_id, peers, ads)| Bgp {
                router_id,
                peers: strip(peers),
                advertisements: strip(ads),
            }),
            members: strip(self.members),
            services: strip(self.services),
            forwarder: self.forwarder,
            failover: self.failover,
        }
    }
}

/// Decodes a list keeping each item's index.
fn indexed<T>(
    ctx: &mut Ctx,
    f: Option<Field<'_>>,
    each: fn(&mut Ctx, Field<'_>) -> Option<T>,
) -> Vec<(usize, T)> {
    let Some(f) = f else { return Vec::new() };
    let mut i = 0;
    ctx.list(f, |ctx, f| {
        let item = each(ctx, f).map(|t| (i, t));
        i += 1;
        item
    })
}

pub(crate) fn config(ctx: &mut Ctx, root: &Value) -> Draft {
    if *root == Value::Null {
        return Draft::default();
    }
    let path = Path::root();
    let Some(top) = ctx.object(
        Field {
            value: root,
            path: &path,
        },
        &[
            "pools",
            "l2",
            "bgp",
            "members",
            "services",
            "forwarder",
            "failover",
        ],
    ) else {
        return Draft::default();
    };
    Draft {
        pools: indexed(ctx, top.get("pools"), pool),
        l2: indexed(ctx, top.get("l2"), l2),
        bgp: top.get("bgp").and_then(|f| bgp(ctx, f)),
        members: indexed(ctx, top.get("members"), member),
        services: indexed(ctx, top.get("services"), service),
        forwarder: top
            .get("forwarder")
            .and_then(|f| forwarder(ctx, f))
            .unwrap_or_default(),
        failover: top
            .get("failover")
            .and_then(|f| failover(ctx, f))
            .unwrap_or_default(),
    }
}

fn failover(ctx: &mut Ctx, f: Field<'_>) -> Option<FailoverSettings> {
    let obj = ctx.object(
        f,
        &[
            "heartbeatInterval",
            "deadAfter",
            "refreshInterval",
            "announceRepeats",
            "keyFile",
        ],
    )?;
    let mut s = FailoverSettings::default();
    if let Some(f) = obj.get("keyFile") {
        s.key_file = ctx.string(f).map(PathBuf::from);
    }
    if let Some(d) = obj.get("heartbeatInterval").and_then(|f| ctx.duration(f)) {
        s.heartbeat_interval = d;
    }
    if let Some(d) = obj.get("deadAfter").and_then(|f| ctx.duration(f)) {
        s.dead_after = d;
    }
    if let Some(d) = obj.get("refreshInterval").and_then(|f| ctx.duration(f)) {
        s.refresh_interval = d;
    }
    if let Some(f) = obj.get("announceRepeats") {
        let repeats: Vec<Duration> = ctx.list(f, |ctx, f| ctx.duration(f));
        // Offsets from the takeover: they must grow, and stay within a minute.
        if repeats.windows(2).any(|w| w[1] <= w[0])
            || repeats.iter().any(|d| *d > Duration::from_secs(60))
        {
            ctx.error(f.path, "must be increasing offsets from the takeover, each at most 1m, e.g. [100ms, 300ms, 1s, 2s]");
        } else {
            s.announce_repeats = repeats;
        }
    }
    if s.heartbeat_interval < Duration::from_millis(10)
        || s.heartbeat_interval > Duration::from_secs(10)
    {
        ctx.error(
            &obj.path().key("heartbeatInterval"),
            "must be between 10ms and 10s",
        );
    }
    // Fewer than two missed heartbeats would declare members dead on a single lost packet.
    if s.dead_after < s.heartbeat_interval * 2 {
        ctx.error(
            &obj.path().key("deadAfter"),
            format!(
                "must be at least twice heartbeatInterval ({}); four times is usual",
                crate::duration::format_duration(s.heartbeat_interval)
            ),
        );
    }
    if !s.refresh_interval.is_zero() && s.refresh_interval < Duration::from_secs(1) {
        ctx.error(
            &obj.path().key("refreshInterval"),
            "must be 0s (off) or at least 1s",
        );
    }
    Some(s)
}

/// `passwordSecret: {name: NAME, key: password}`, as MetalLB users write it;
/// the Secret is in the speaker's namespace.
fn password_secret(ctx: &mut Ctx, f: Field<'_>) -> Option<PeerPassword> {
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

fn forwarder(ctx: &mut Ctx, f: Field<'_>) -> Option<ForwarderSettings> {
    let obj = ctx.object(
        f,
        &[
            "connectTimeout",
            "idleTimeout",
            "drainTimeout",
            "maxConnections",
            "maxConnectionsPerSource",
            "udpIdleTimeout",
            "udpMaxFlows",
            "splice",
        ],
    )?;
    let mut s = ForwarderSettings::default();
    let bounded = |ctx: &mut Ctx, key: &str, min: Duration, max: Duration| -> Option<Duration> {
        let f = obj.get(key)?;
        let d = ctx.duration(f)?;
        if d < min || d > max {
            ctx.error(
                f.path,
                format!(
                    "must be between {} and {}",
                    crate::duration::format_duration(min),
                    crate::duration::format_duration(max)
                ),
            );
            return None;
        }
        Some(d)
    };
    let ms = Duration::from_millis;
    let secs = Duration::from_secs;
    if let Some(d) = bounded(ctx, "connectTimeout", ms(1), secs(60)) {
        s.connect_timeout = d;
    }
    if let Some(d) = bounded(ctx, "idleTimeout", secs(1), secs(7 * 24 * 3600)) {
        s.idle_timeout = d;
    }
    if let Some(d) = bounded(ctx, "drainTimeout", ms(0), secs(3600)) {
        s.drain_timeout = d;
    }
    if let Some(d) = bounded(ctx, "udpIdleTimeout", ms(100), secs(3600)) {
        s.udp_idle_timeout = d;
    }
    if let Some(n) = obj
        .get("maxConnections")
        .and_then(|f| ctx.uint(f, 1, 10_000_000))
    {
        s.max_connections = n;
    }
    if let Some(n) = obj
        .get("maxConnectionsPerSource")
        .and_then(|f| ctx.uint(f, 0, 10_000_000))
    {
        s.max_connections_per_source = n;
    }
    if let Some(n) = obj
        .get("udpMaxFlows")
        .and_then(|f| ctx.uint(f, 1, 10_000_000))
    {
        s.udp_max_flows = n;
    }
    if let Some(b) = obj.get("splice").and_then(|f| ctx.boolean(f)) {
        s.splice = b;
    }
    Some(s)
}

/// A name that other sections refer to: a lower-case DNS label.
fn name(ctx: &mut Ctx, obj: &Obj<'_>, what: &str) -> Option<String> {
    let f = obj.require(ctx, "name", &format!("give the {what} a name"))?;
    let name = ctx.string(f)?;
    if !is_dns_label(&name) {
        ctx.error(
            f.path,
            format!("{name:?} is not a valid name: use 1-63 lower-case letters, digits and '-'"),
        );
        return None;
    }
    Some(name)
}

fn pool(ctx: &mut Ctx, f: Field<'_>) -> Option<Pool> {
    let obj = ctx.object(
        f,
        &[
            "name",
            "addresses",
            "autoAssign",
            "avoidBuggyIPs",
            "priority",
            "namespaces",
            "serviceSelector",
        ],
    )?;
    let name = name(ctx, &obj, "pool");
    let entries: Vec<(Path, AddrSpec)> =
        match obj.require(ctx, "addresses", "list CIDRs or a-b ranges") {
            Some(f) => {
                if matches!(f.value, Value::Seq(v) if v.is_empty()) {
                    ctx.error(f.path, "is empty; list at least one CIDR or a-b range");
                }
                ctx.list(f, |ctx, f| {
                    ctx.parse::<AddrSpec>(f).map(|s| (f.path.clone(), s))
                })
            }
            None => Vec::new(),
        };
    // Overlap inside one pool is almost always a typo (a wrong prefix length), so it is refused.
    let mut by_start: Vec<&(Path, AddrSpec)> = entries.iter().collect();
    by_start.sort_by_key(|(_, s)| s.interval());
    for w in by_start.windows(2) {
        let (a, b) = (w[0].1.interval(), w[1].1.interval());
        if a.family() == b.family() && b.start() <= a.end() {
            ctx.error(
                &w[1].0,
                format!(
                    "{} overlaps {} ({}) in the same pool; remove one",
                    w[1].1,
                    w[0].1,
                    w[0].0.as_str()
                ),
            );
        }
    }
    let specs: Vec<AddrSpec> = entries.into_iter().map(|(_, s)| s).collect();
    let addresses = IpSet::from_intervals(specs.iter().map(|s| s.interval()));
    if addresses.count(Family::V6) == u128::MAX {
        ctx.error(
            &obj.path().key("addresses"),
            "covers the entire IPv6 address space; use a real prefix such as 2001:db8::/64",
        );
    }
    let auto_assign = obj
        .get("autoAssign")
        .and_then(|f| ctx.boolean(f))
        .unwrap_or(true);
    let avoid_buggy_ips = obj
        .get("avoidBuggyIPs")
        .and_then(|f| ctx.boolean(f))
        .unwrap_or(false);
    let priority = obj
        .get("priority")
        .and_then(|f| ctx.uint(f, 0, u32::MAX as u64));
    let namespaces = obj
        .get("namespaces")
        .map(|f| ctx.list(f, namespace))
        .unwrap_or_default();
    let service_selector = obj.get("serviceSelector").and_then(|f| selector(ctx, f));
    Some(Pool {
        name: name?,
        specs,
        addresses,
        auto_assign,
        avoid_buggy_ips,
        priority,
        namespaces,
        service_selector,
    })
}

fn namespace(ctx: &mut Ctx, f: Field<'_>) -> Option<String> {
    let ns = ctx.string(f)?;
    if !is_dns_label(&ns) {
        ctx.error(f.path, format!("{ns:?} is not a valid namespace name"));
        return None;
    }
    Some(ns)
}

fn selector(ctx: &mut Ctx, f: Field<'_>) -> Option<LabelSelector> {
    let obj = ctx.object(f, &["matchLabels", "matchExpressions"])?;
    let mut sel = LabelSelector::default();
    if let Some(f) = obj.get("matchLabels") {
        if let Some(labels) = labels(ctx, f) {
            sel.match_labels = labels;
        }
    }
    if let Some(f) = obj.get("matchExpressions") {
        sel.match_expressions = ctx.list(f, requirement);
    }
    Some(sel)
}

fn labels(ctx: &mut Ctx, f: Field<'_>) -> Option<BTreeMap<String, String>> {
    let Value::Map(entries) = f.value else {
        ctx.error(
            f.path,
            format!("expected a mapping of labels, found {}", f.value.kind()),
        );
        return None;
    };
    let mut out = BTreeMap::new();
    for (k, v) in entries {
        let path = f.path.key(k);
        if let Err(e) = check_label_key(k) {
            ctx.error(&path, e);
            continue;
        }
        let value = match v {
            Value::Str(s) => s.clone(),
            Value::Int(i) => i.to_string(),
            Value::Bool(b) => b.to_string(),
            other => {
                ctx.error(
                    &path,
                    format!("expected a label value, found {}", other.kind()),
                );
                continue;
            }
        };
        if let Err(e) = check_label_value(&value) {
            ctx.error(&path, e);
            continue;
        }
        out.insert(k.clone(), value);
    }
    Some(out)
}

fn requirement(ctx: &mut Ctx, f: Field<'_>) -> Option<Requirement> {
    let obj = ctx.object(f, &["key", "operator", "values"])?;
    let key = obj.require(ctx, "key", "name the label").and_then(|f| {
        let k = ctx.string(f)?;
        check_label_key(&k).map_err(|e| ctx.error(f.path, e)).ok()?;
        Some(k)
    });
    let op = obj
        .require(ctx, "operator", "use In, NotIn, Exists or DoesNotExist")
        .and_then(|f| match ctx.string(f)?.as_str() {
            "In" => Some(SelectorOp::In),
            "NotIn" => Some(SelectorOp::NotIn),
            "Exists" => Some(SelectorOp::Exists),
            "DoesNotExist" => Some(SelectorOp::DoesNotExist),
            other => {
                ctx.error(
                    f.path,
                    format!("{other:?} is not an operator; use In, NotIn, Exists or DoesNotExist"),
                );
                None
            }
        });
    let values = obj
        .get("values")
        .map(|f| ctx.strings(f))
        .unwrap_or_default();
    let op = op?;
    let needs_values = matches!(op, SelectorOp::In | SelectorOp::NotIn);
    if needs_values && values.is_empty() {
        ctx.error(
            &obj.path().key("values"),
            "In and NotIn need at least one value",
        );
        return None;
    }
    if !needs_values && !values.is_empty() {
        ctx.error(
            &obj.path().key("values"),
            "Exists and DoesNotExist take no values; remove them",
        );
        return None;
    }
    Some(Requirement {
        key: key?,
        op,
        values,
    })
}

fn l2(ctx: &mut Ctx, f: Field<'_>) -> Option<L2Advertisement> {
    let obj = ctx.object(f, &["pools", "interfaces", "nodeSelector"])?;
    let pools = obj.get("pools").map(|f| ctx.strings(f)).unwrap_or_default();
    let interfaces = obj
        .get("interfaces")
        .map(|f| {
            ctx.list(f, |ctx, f| {
                let name = ctx.string(f)?;
                // Linux limits names to IFNAMSIZ-1 and forbids '/' and whitespace.
                let valid = !name.is_empty()
                    && name.len() <= 15
                    && !name.contains(['/', ':'])
                    && !name.chars().any(char::is_whitespace);
                if !valid {
                    ctx.error(f.path, format!("{name:?} is not a valid interface name (1-15 characters, no '/', ':' or spaces)"));
                    return None;
                }
                Some(name)
            })
        })
        .unwrap_or_default();
    let node_selector = obj.get("nodeSelector").and_then(|f| selector(ctx, f));
    Some(L2Advertisement {
        pools,
        interfaces,
        node_selector,
    })
}

type BgpDraft = (
    Option<Ipv4Addr>,
    Vec<(usize, Peer)>,
    Vec<(usize, BgpAdvertisement)>,
);

fn bgp(ctx: &mut Ctx, f: Field<'_>) -> Option<BgpDraft> {
    let obj = ctx.object(f, &["routerId", "peers", "advertisements"])?;
    let router_id = obj.get("routerId").and_then(|f| ctx.parse::<Ipv4Addr>(f));
    let peers = indexed(ctx, obj.get("peers"), peer);
    let advertisements = indexed(ctx, obj.get("advertisements"), advertisement);
    Some((router_id, peers, advertisements))
}

fn asn(ctx: &mut Ctx, f: Field<'_>) -> Option<u32> {
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
fn seconds(ctx: &mut Ctx, f: Field<'_>) -> Option<Duration> {
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

fn peer(ctx: &mut Ctx, f: Field<'_>) -> Option<Peer> {
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
    })
}

fn graceful_restart(ctx: &mut Ctx, f: Field<'_>) -> Option<GracefulRestart> {
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
fn bfd(ctx: &mut Ctx, f: Field<'_>) -> Option<Option<Bfd>> {
    let obj = ctx.object(
        f,
        &[
            "enabled",
            "receiveInterval",
            "transmitInterval",
            "detectMultiplier",
        ],
    )?;
    let mut bfd = Bfd::default();
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

fn community(ctx: &mut Ctx, f: Field<'_>) -> Option<Community> {
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

fn large_community(ctx: &mut Ctx, f: Field<'_>) -> Option<LargeCommunity> {
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

fn advertisement(ctx: &mut Ctx, f: Field<'_>) -> Option<BgpAdvertisement> {
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
    })
}

fn member(ctx: &mut Ctx, f: Field<'_>) -> Option<Member> {
    let obj = ctx.object(f, &["name", "address", "labels"])?;
    let name = obj
        .require(ctx, "name", "give the node name the host runs with")
        .and_then(|f| {
            let n = ctx.string(f)?;
            if n.is_empty() || n.len() > 253 {
                ctx.error(f.path, "must be 1-253 characters");
                return None;
            }
            Some(n)
        });
    let address = obj
        .require(
            ctx,
            "address",
            "give the host's IP (port 7946 by default) or IP:port",
        )
        .and_then(|f| {
            let text = ctx.string(f)?;
            let parsed = text.parse::<SocketAddr>().ok().or_else(|| {
                text.parse::<IpAddr>()
                    .ok()
                    .map(|ip| SocketAddr::new(ip, DEFAULT_MEMBER_PORT))
            });
            if parsed.is_none() {
                ctx.error(
                    f.path,
                    format!("{text:?} is not an IP address or IP:port ([v6]:port for IPv6)"),
                );
            }
            parsed
        });
    let labels = obj
        .get("labels")
        .and_then(|f| labels(ctx, f))
        .unwrap_or_default();
    Some(Member {
        name: name?,
        address: address?,
        labels,
    })
}

fn service(ctx: &mut Ctx, f: Field<'_>) -> Option<Service> {
    let obj = ctx.object(
        f,
        &[
            "name",
            "ip",
            "pool",
            "sourceRanges",
            "ports",
            "maxConnections",
        ],
    )?;
    let max_connections = obj
        .get("maxConnections")
        .and_then(|f| ctx.uint(f, 1, 10_000_000));
    let name = name(ctx, &obj, "service");
    let ip = obj.get("ip").and_then(|f| ctx.parse::<IpAddr>(f));
    let pool = obj.get("pool").and_then(|f| ctx.string(f));
    let source_ranges = obj
        .get("sourceRanges")
        .map(|f| ctx.list(f, |ctx, f| ctx.parse::<Cidr>(f)))
        .unwrap_or_default();
    let ports: Vec<(Path, ServicePort)> = obj
        .get("ports")
        .map(|f| ctx.list(f, |ctx, f| port(ctx, f).map(|p| (f.path.clone(), p))))
        .unwrap_or_default();
    for (i, (path, p)) in ports.iter().enumerate() {
        if ports[..i]
            .iter()
            .any(|(_, q)| (q.port, q.protocol) == (p.port, p.protocol))
        {
            ctx.error(
                path,
                format!(
                    "{} {} is listed twice in this service; merge the backends into one entry",
                    p.protocol, p.port
                ),
            );
        }
    }
    let ports = ports.into_iter().map(|(_, p)| p).collect();
    Some(Service {
        name: name?,
        ip,
        pool,
        source_ranges,
        ports,
        max_connections,
    })
}

fn port(ctx: &mut Ctx, f: Field<'_>) -> Option<ServicePort> {
    let obj = ctx.object(
        f,
        &[
            "port",
            "protocol",
            "backends",
            "algorithm",
            "proxyProtocol",
            "healthCheck",
        ],
    )?;
    let port = obj
        .require(ctx, "port", "give the port number on the VIP")
        .and_then(|f| ctx.uint(f, 1, 65535));
    let protocol = match obj.get("protocol") {
        None => Some(Protocol::Tcp),
        Some(f) => ctx
            .string(f)
            .and_then(|p| match p.to_ascii_uppercase().as_str() {
                "TCP" => Some(Protocol::Tcp),
                "UDP" => Some(Protocol::Udp),
                _ => {
                    ctx.error(f.path, format!("{p:?} is not forwarded; use TCP or UDP"));
                    None
                }
            }),
    };
    let backends = match obj.require(ctx, "backends", "list host:port backends") {
        Some(f) => {
            let list = ctx.list(f, backend);
            if matches!(f.value, Value::Seq(v) if v.is_empty()) {
                ctx.error(f.path, "is empty; list at least one backend, or drop the port to only announce the VIP");
            }
            list
        }
        None => Vec::new(),
    };
    let algorithm = obj
        .get("algorithm")
        .and_then(|f| match ctx.string(f)?.as_str() {
            "roundRobin" => Some(Algorithm::RoundRobin),
            "leastConnections" => Some(Algorithm::LeastConnections),
            "maglev" => Some(Algorithm::Maglev),
            other => {
                ctx.error(
                    f.path,
                    format!(
                        "{other:?} is not an algorithm; use roundRobin, leastConnections or maglev"
                    ),
                );
                None
            }
        });
    let proxy_protocol = obj
        .get("proxyProtocol")
        .and_then(|f| match ctx.string(f)?.as_str() {
            "v1" => Some(ProxyProtocol::V1),
            "v2" => Some(ProxyProtocol::V2),
            other => {
                ctx.error(
                    f.path,
                    format!("{other:?} is not a PROXY protocol version; use v1 or v2"),
                );
                None
            }
        });
    let health_check = match obj.get("healthCheck") {
        Some(f) => health_check(ctx, f).flatten(),
        // A TCP connect tells nothing about a UDP service, so UDP ports are unchecked unless asked.
        None if protocol == Some(Protocol::Udp) => None,
        None => Some(HealthCheck::default()),
    };
    if let (Some(Protocol::Udp), Some(f)) = (protocol, obj.get("proxyProtocol")) {
        ctx.error(f.path, "PROXY protocol is only sent on TCP ports");
    }
    Some(ServicePort {
        port: port?,
        protocol: protocol?,
        backends,
        algorithm: algorithm.unwrap_or_default(),
        proxy_protocol,
        health_check,
    })
}

fn backend(ctx: &mut Ctx, f: Field<'_>) -> Option<Backend> {
    let parse_addr = |ctx: &mut Ctx, f: Field<'_>| -> Option<SocketAddr> {
        let text = ctx.string(f)?;
        text.trim()
            .parse::<SocketAddr>()
            .map_err(|_| {
                ctx.error(
                    f.path,
                    format!(
                        "{text:?} is not IP:port ([v6]:port for IPv6); host names are not resolved"
                    ),
                )
            })
            .ok()
    };
    match f.value {
        Value::Str(_) => Some(Backend {
            address: parse_addr(ctx, f)?,
            weight: 1,
        }),
        _ => {
            let obj = ctx.object(f, &["address", "weight"])?;
            let address = obj
                .require(ctx, "address", "give the backend as IP:port")
                .and_then(|f| parse_addr(ctx, f));
            let weight = obj
                .get("weight")
                .and_then(|f| ctx.uint(f, 0, 1000))
                .unwrap_or(1);
            Some(Backend {
                address: address?,
                weight,
            })
        }
    }
}

/// `Some(None)` is `type: none`, an explicitly disabled check.
fn health_check(ctx: &mut Ctx, f: Field<'_>) -> Option<Option<HealthCheck>> {
    let obj = ctx.object(
        f,
        &[
            "type",
            "path",
            "expectStatus",
            "interval",
            "timeout",
            "rise",
            "fall",
        ],
    )?;
    let mut hc = HealthCheck::default();
    let kind = obj
        .get("type")
        .and_then(|f| ctx.string(f))
        .unwrap_or_else(|| "tcp".into());
    let path = obj.get("path").and_then(|f| ctx.string(f));
    let status = obj.get("expectStatus").and_then(|f| {
        let text = match f.value {
            Value::Int(i) => i.to_string(),
            _ => ctx.string(f)?,
        };
        let (lo, hi) = text.split_once('-').unwrap_or((&text, &text));
        match (lo.trim().parse::<u16>(), hi.trim().parse::<u16>()) {
            (Ok(lo), Ok(hi)) if (100..=599).contains(&lo) && (lo..=599).contains(&hi) => {
                Some((lo, hi))
            }
            _ => {
                ctx.error(
                    f.path,
                    format!("{text:?} is not a status or range like 200 or 200-399"),
                );
                None
            }
        }
    });
    match kind.as_str() {
        "none" => return Some(None),
        "tcp" => {
            for key in ["path", "expectStatus"] {
                if let Some(f) = obj.get(key) {
                    ctx.error(f.path, "only applies to type: http");
                }
            }
        }
        "http" => {
            let path = path.unwrap_or_else(|| "/".into());
            if !path.starts_with('/') || path.chars().any(|c| c.is_whitespace() || c.is_control()) {
                ctx.error(
                    &obj.path().key("path"),
                    format!("{path:?} must start with '/' and contain no spaces"),
                );
            }
            let (min_status, max_status) = status.unwrap_or((200, 399));
            hc.kind = CheckKind::Http {
                path,
                min_status,
                max_status,
            };
        }
        other => {
            ctx.error(
                &obj.path().key("type"),
                format!("{other:?} is not a check type; use tcp, http or none"),
            );
        }
    }
    if let Some(d) = obj.get("interval").and_then(|f| ctx.duration(f)) {
        hc.interval = d;
    }
    if let Some(d) = obj.get("timeout").and_then(|f| ctx.duration(f)) {
        hc.timeout = d;
    }
    if let Some(n) = obj.get("rise").and_then(|f| ctx.uint(f, 1, 100)) {
        hc.rise = n;
    }
    if let Some(n) = obj.get("fall").and_then(|f| ctx.uint(f, 1, 100)) {
        hc.fall = n;
    }
    if hc.interval < Duration::from_millis(10) {
        ctx.error(&obj.path().key("interval"), "must be at least 10ms");
    }
    if hc.timeout.is_zero() || hc.timeout > hc.interval {
        ctx.error(
            &obj.path().key("timeout"),
            format!(
                "must be more than 0 and at most the interval ({}); a probe cannot outlive the next one",
                crate::duration::format_duration(hc.interval)
            ),
        );
    }
    Some(Some(hc))
}
