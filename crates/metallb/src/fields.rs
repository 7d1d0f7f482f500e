//! Every MetalLB field the converter knows, and what becomes of it. The
//! converter records each field it meets against this table (a field not in
//! it is reported as unknown), and docs/migrate-from-metallb.md's table is
//! generated from it (`ferrolb-controller import-metallb --fields`), so the
//! two cannot drift.

/// What becomes of a MetalLB field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// Carried over as it is, to this ferrolb field.
    Maps(&'static str),
    /// Carried over to this ferrolb field, changed as described.
    Converts(&'static str, &'static str),
    /// Not carried over: why, and what to do instead.
    Drops(&'static str),
}

/// One MetalLB field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    /// The object kind (`IPAddressPool`, ..., `legacy ConfigMap`).
    pub kind: &'static str,
    /// The field's path in the object (`spec.addresses`).
    pub path: &'static str,
    /// What becomes of it.
    pub fate: Fate,
}

const fn maps(kind: &'static str, path: &'static str, to: &'static str) -> Field {
    Field {
        kind,
        path,
        fate: Fate::Maps(to),
    }
}

const fn converts(
    kind: &'static str,
    path: &'static str,
    to: &'static str,
    how: &'static str,
) -> Field {
    Field {
        kind,
        path,
        fate: Fate::Converts(to, how),
    }
}

const fn drops(kind: &'static str, path: &'static str, why: &'static str) -> Field {
    Field {
        kind,
        path,
        fate: Fate::Drops(why),
    }
}

const POOL: &str = "IPAddressPool";
const L2: &str = "L2Advertisement";
const BGPAD: &str = "BGPAdvertisement";
const PEER: &str = "BGPPeer";
const COMM: &str = "Community";
const BFD: &str = "BFDProfile";
const LEGACY: &str = "legacy ConfigMap";

/// Why a selector list may not carry over.
const SELECTORS_OR: &str = "MetalLB ORs a list of selectors, a ferrolb selector is one: one selector carries over as it is, and selectors that each match one value of the same label key merge into one `In` expression; any other list cannot be expressed and is reported, with what is done instead (never a wider choice where it matters: a pool gets autoAssign false, a peer is left out)";

/// How an advertisement's selector list carries over (exactly, always).
const SERVICE_SELECTORS_OR: &str = "MetalLB ORs the list: one selector carries over as it is, selectors on one label merge into one `In` expression, and any other list becomes one entry per selector, the same otherwise, which together select the same Services (ferrolb's entries add up)";

/// The table.
pub const FIELDS: &[Field] = &[
    converts(POOL, "metadata.name", "pools[].name", "made a DNS label if it is not one (dots to dashes, at most 63 characters); a rename is reported"),
    maps(POOL, "metadata.labels", "(read by ipAddressPoolSelectors)"),
    maps(POOL, "spec.addresses", "pools[].addresses"),
    maps(POOL, "spec.autoAssign", "pools[].autoAssign"),
    maps(POOL, "spec.avoidBuggyIPs", "pools[].avoidBuggyIPs"),
    converts(POOL, "spec.serviceAllocation.priority", "pools[].priority", "0 (MetalLB's 'no priority') leaves it unset"),
    maps(POOL, "spec.serviceAllocation.namespaces", "pools[].namespaces"),
    converts(POOL, "spec.serviceAllocation.namespaceSelectors", "pools[].namespaceSelector", SELECTORS_OR),
    converts(POOL, "spec.serviceAllocation.serviceSelectors", "pools[].serviceSelector", SELECTORS_OR),
    converts(L2, "spec.ipAddressPools", "l2[].pools", "pool names as converted"),
    converts(L2, "spec.ipAddressPoolSelectors", "l2[].pools", "resolved against the IPAddressPools' labels in the input: the pools they select are listed by name"),
    converts(L2, "spec.nodeSelectors", "l2[].nodeSelector", SELECTORS_OR),
    maps(L2, "spec.interfaces", "l2[].interfaces"),
    converts(L2, "spec.serviceSelectors", "l2[].serviceSelector", SERVICE_SELECTORS_OR),
    maps(BGPAD, "spec.aggregationLength", "bgp.advertisements[].aggregationLength"),
    maps(BGPAD, "spec.aggregationLengthV6", "bgp.advertisements[].aggregationLengthV6"),
    maps(BGPAD, "spec.localPref", "bgp.advertisements[].localPref"),
    converts(BGPAD, "spec.communities", "bgp.advertisements[].communities, largeCommunities", "aliases resolved through the Community objects; `large:A:B:C` to largeCommunities"),
    converts(BGPAD, "spec.ipAddressPools", "bgp.advertisements[].pools", "pool names as converted"),
    converts(BGPAD, "spec.ipAddressPoolSelectors", "bgp.advertisements[].pools", "resolved against the IPAddressPools' labels in the input"),
    converts(BGPAD, "spec.nodeSelectors", "bgp.advertisements[].nodeSelector", SELECTORS_OR),
    converts(BGPAD, "spec.peers", "bgp.advertisements[].peers", "peer names as converted"),
    converts(BGPAD, "spec.serviceSelectors", "bgp.advertisements[].serviceSelector", SERVICE_SELECTORS_OR),
    converts(PEER, "metadata.name", "bgp.peers[].name", "made a DNS label if it is not one; a rename is reported"),
    maps(PEER, "spec.peerAddress", "bgp.peers[].address"),
    maps(PEER, "spec.peerASN", "bgp.peers[].asn"),
    maps(PEER, "spec.myASN", "bgp.peers[].myAsn"),
    maps(PEER, "spec.peerPort", "bgp.peers[].port"),
    converts(PEER, "spec.holdTime", "bgp.peers[].holdTime", "Go duration to whole seconds (`1m30s` to `90s`)"),
    converts(PEER, "spec.keepaliveTime", "bgp.peers[].keepaliveTime", "Go duration to whole seconds"),
    maps(PEER, "spec.sourceAddress", "bgp.peers[].sourceAddress"),
    maps(PEER, "spec.password", "bgp.peers[].password"),
    converts(PEER, "spec.passwordSecret", "bgp.peers[].passwordSecret", "`{name, key: password}` (MetalLB's basic-auth key); ferrolb reads Secrets in its own namespace, so the report gives the command that copies the Secret from MetalLB's"),
    converts(PEER, "spec.bfdProfile", "bgp.peers[].bfd", "the named BFDProfile's intervals and multiplier, as durations"),
    converts(PEER, "spec.ebgpMultiHop", "bgp.peers[].ebgpMultihop", "`true` becomes TTL 255 (FRR's `ebgp-multihop` without a count); refused for iBGP peers (reported)"),
    converts(PEER, "spec.enableGracefulRestart", "bgp.peers[].gracefulRestart.enabled", "absent means off in MetalLB, so a peer without it gets `gracefulRestart: {enabled: false}` (ferrolb's own default is on)"),
    maps(PEER, "spec.routerID", "bgp.peers[].routerId"),
    converts(PEER, "spec.nodeSelectors", "bgp.peers[].nodeSelector", SELECTORS_OR),
    drops(PEER, "spec.connectTime", "ferrolb retries a connection after 5 s, backing off to 30 s"),
    drops(PEER, "spec.disableMP", "ferrolb always carries both families on one session (MP-BGP); a router that refuses it needs a peer per family"),
    drops(PEER, "spec.vrf", "ferrolb peers in the node's default VRF: the peer is left out (reported)"),
    drops(PEER, "spec.dynamicASN", "ferrolb needs the peer's AS: the peer is left out unless peerASN is set (reported)"),
    drops(PEER, "spec.interface", "unnumbered BGP (peering over an interface's link-local address) is not supported: the peer is left out unless peerAddress is set"),
    drops(PEER, "spec.dualStackAddressFamily", "ferrolb's sessions always carry both families (MP-BGP)"),
    maps(COMM, "spec.communities", "(aliases resolved into the advertisements)"),
    maps(BFD, "metadata.name", "(referenced by bfdProfile)"),
    converts(BFD, "spec.receiveInterval", "bgp.peers[].bfd.receiveInterval", "milliseconds to a duration (`300` to `300ms`)"),
    converts(BFD, "spec.transmitInterval", "bgp.peers[].bfd.transmitInterval", "milliseconds to a duration"),
    maps(BFD, "spec.detectMultiplier", "bgp.peers[].bfd.detectMultiplier"),
    drops(BFD, "spec.echoInterval", "ferrolb's BFD sends no echo packets"),
    drops(BFD, "spec.echoMode", "ferrolb's BFD has no echo function (its configuration refuses echoMode: true): the session runs in asynchronous mode, without echo"),
    maps(BFD, "spec.passiveMode", "bgp.peers[].bfd.passiveMode"),
    drops(BFD, "spec.minimumTtl", "ferrolb's BFD is single-hop (RFC 5881: TTL 255 required)"),
    converts(LEGACY, "address-pools[].name", "pools[].name", "made a DNS label if it is not one"),
    converts(LEGACY, "address-pools[].protocol", "l2[] or bgp.advertisements[]", "`layer2`: an l2 entry for the pool; `bgp`: its bgp-advertisements (one default advertisement if it has none)"),
    maps(LEGACY, "address-pools[].addresses", "pools[].addresses"),
    maps(LEGACY, "address-pools[].auto-assign", "pools[].autoAssign"),
    maps(LEGACY, "address-pools[].avoid-buggy-ips", "pools[].avoidBuggyIPs"),
    maps(LEGACY, "address-pools[].bgp-advertisements[].aggregation-length", "bgp.advertisements[].aggregationLength"),
    maps(LEGACY, "address-pools[].bgp-advertisements[].aggregation-length-v6", "bgp.advertisements[].aggregationLengthV6"),
    maps(LEGACY, "address-pools[].bgp-advertisements[].localpref", "bgp.advertisements[].localPref"),
    converts(LEGACY, "address-pools[].bgp-advertisements[].communities", "bgp.advertisements[].communities", "aliases resolved through bgp-communities"),
    maps(LEGACY, "bgp-communities", "(aliases resolved into the advertisements)"),
    maps(LEGACY, "peers[].peer-address", "bgp.peers[].address"),
    maps(LEGACY, "peers[].peer-asn", "bgp.peers[].asn"),
    maps(LEGACY, "peers[].my-asn", "bgp.peers[].myAsn"),
    maps(LEGACY, "peers[].peer-port", "bgp.peers[].port"),
    converts(LEGACY, "peers[].hold-time", "bgp.peers[].holdTime", "Go duration to whole seconds"),
    converts(LEGACY, "peers[].keepalive-time", "bgp.peers[].keepaliveTime", "Go duration to whole seconds"),
    maps(LEGACY, "peers[].router-id", "bgp.peers[].routerId"),
    maps(LEGACY, "peers[].source-address", "bgp.peers[].sourceAddress"),
    maps(LEGACY, "peers[].password", "bgp.peers[].password"),
    converts(LEGACY, "peers[].node-selectors", "bgp.peers[].nodeSelector", SELECTORS_OR),
    converts(LEGACY, "peers[].bfd-profile", "bgp.peers[].bfd", "the named bfd-profiles entry"),
    converts(LEGACY, "peers[].ebgp-multihop", "bgp.peers[].ebgpMultihop", "`true` becomes TTL 255"),
    converts(LEGACY, "peers[].name", "bgp.peers[].name", "made a DNS label; peers without a name are named after their address"),
    maps(LEGACY, "bfd-profiles[].name", "(referenced by bfd-profile)"),
    converts(LEGACY, "bfd-profiles[].receive-interval", "bgp.peers[].bfd.receiveInterval", "milliseconds to a duration"),
    converts(LEGACY, "bfd-profiles[].transmit-interval", "bgp.peers[].bfd.transmitInterval", "milliseconds to a duration"),
    maps(LEGACY, "bfd-profiles[].detect-multiplier", "bgp.peers[].bfd.detectMultiplier"),
    drops(LEGACY, "bfd-profiles[].echo-interval", "ferrolb's BFD sends no echo packets"),
    drops(LEGACY, "bfd-profiles[].echo-mode", "ferrolb's BFD sends no echo packets"),
    maps(LEGACY, "bfd-profiles[].passive-mode", "bgp.peers[].bfd.passiveMode"),
    drops(LEGACY, "bfd-profiles[].minimum-ttl", "ferrolb's BFD is single-hop"),
];

/// The table entry of `kind`'s field `path`, if the converter knows it.
pub fn field(kind: &str, path: &str) -> Option<&'static Field> {
    FIELDS.iter().find(|f| f.kind == kind && f.path == path)
}

/// The table as Markdown, for docs/migrate-from-metallb.md.
pub fn markdown() -> String {
    let mut out = String::from("| MetalLB object | field | ferrolb | how |\n|---|---|---|---|\n");
    for f in FIELDS {
        let (to, how) = match f.fate {
            Fate::Maps(to) if to.starts_with('(') => (
                to.to_string(),
                "read by the converter, nothing written for it".to_string(),
            ),
            Fate::Maps(to) => (format!("`{to}`"), "as it is".to_string()),
            Fate::Converts(to, how) => (format!("`{to}`"), how.to_string()),
            Fate::Drops(why) => ("dropped".to_string(), why.to_string()),
        };
        out.push_str(&format!(
            "| {} | `{}` | {} | {} |\n",
            f.kind,
            f.path,
            to,
            how.replace('|', "\\|")
        ));
    }
    out
}
