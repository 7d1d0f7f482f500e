//! MetalLB's legacy ConfigMap (0.12 and before: `address-pools`, `peers`,
//! `bgp-communities`, `bfd-profiles` in its `config` key) turned into the
//! custom resources it corresponds to, each field noted in the legacy terms.

use crate::convert::Objects;
use crate::fields::{field, Fate};
use crate::report::{Outcome, Report};
use serde_json::{json, Map, Value};
use std::collections::BTreeSet;

const KIND: &str = "legacy ConfigMap";

/// Legacy keys and the custom resource fields they become, per section.
const BFD_KEYS: [(&str, &str); 7] = [
    ("receive-interval", "receiveInterval"),
    ("transmit-interval", "transmitInterval"),
    ("detect-multiplier", "detectMultiplier"),
    ("echo-interval", "echoInterval"),
    ("echo-mode", "echoMode"),
    ("passive-mode", "passiveMode"),
    ("minimum-ttl", "minimumTtl"),
];
const PEER_KEYS: [(&str, &str); 13] = [
    ("peer-address", "peerAddress"),
    ("peer-asn", "peerASN"),
    ("my-asn", "myASN"),
    ("peer-port", "peerPort"),
    ("hold-time", "holdTime"),
    ("keepalive-time", "keepaliveTime"),
    ("router-id", "routerID"),
    ("source-address", "sourceAddress"),
    ("password", "password"),
    ("bfd-profile", "bfdProfile"),
    ("ebgp-multihop", "ebgpMultiHop"),
    ("node-selectors", "nodeSelectors"),
    // Not a legacy key: legacy MetalLB had no graceful restart (off).
    ("(graceful restart)", "enableGracefulRestart"),
];
const POOL_KEYS: [(&str, &str); 3] = [
    ("addresses", "addresses"),
    ("auto-assign", "autoAssign"),
    ("avoid-buggy-ips", "avoidBuggyIPs"),
];
const AD_KEYS: [(&str, &str); 4] = [
    ("aggregation-length", "aggregationLength"),
    ("aggregation-length-v6", "aggregationLengthV6"),
    ("localpref", "localPref"),
    ("communities", "communities"),
];

/// A custom resource field path (`spec.nodeSelectors`) of an object made
/// from the legacy ConfigMap, in the legacy terms (`peers[].node-selectors`),
/// judged by the object's label (`...: peers[0] (10.0.0.1)`).
pub fn legacy_path(label: &str, path: &str) -> Option<String> {
    let (prefix, keys): (&str, &[(&str, &str)]) = if label.contains(".bgp-advertisements[") {
        ("address-pools[].bgp-advertisements[]", &AD_KEYS)
    } else if label.contains(": address-pools[") {
        ("address-pools[]", &POOL_KEYS)
    } else if label.contains(": peers[") {
        ("peers[]", &PEER_KEYS)
    } else if label.contains(": bfd-profiles[") {
        ("bfd-profiles[]", &BFD_KEYS)
    } else {
        return None;
    };
    if path == "metadata.name" {
        return Some(format!("{prefix}.name"));
    }
    if path == "spec" {
        return Some(prefix.to_string());
    }
    let field = path.strip_prefix("spec.")?;
    let legacy = keys
        .iter()
        .find(|(_, crd)| *crd == field)
        .map(|(l, _)| *l)?;
    Some(format!("{prefix}.{legacy}"))
}

/// Notes `path` (legacy terms) with its fate; unknown keys as unknown. A
/// field the table converts is left to the conversion, which tells how (in
/// these terms, through [`legacy_path`]).
fn note(report: &mut Report, obj: &str, path: &str) {
    let outcome = match field(KIND, path).map(|f| f.fate) {
        Some(Fate::Maps(to)) => Outcome::Mapped(to.into()),
        Some(Fate::Converts(..)) => return,
        Some(Fate::Drops(why)) => Outcome::Dropped(why.into()),
        None => Outcome::Unknown,
    };
    report.note(obj, path, outcome);
}

/// Notes every key of `m` under `prefix` (`address-pools[]`), except `skip`.
fn note_keys(report: &mut Report, obj: &str, m: &Map<String, Value>, prefix: &str, skip: &[&str]) {
    for k in m.keys().filter(|k| !skip.contains(&k.as_str())) {
        note(report, obj, &format!("{prefix}.{k}"));
    }
}

fn selectors(list: &Value) -> Value {
    Value::Array(
        list.as_array()
            .into_iter()
            .flatten()
            .map(|s| {
                let mut out = Map::new();
                if let Some(l) = s.get("match-labels") {
                    out.insert("matchLabels".into(), l.clone());
                }
                if let Some(e) = s.get("match-expressions") {
                    out.insert("matchExpressions".into(), e.clone());
                }
                Value::Object(out)
            })
            .collect(),
    )
}

/// The objects of legacy configuration `config` (the `config` key's YAML,
/// parsed) from `origin` (`ConfigMap metallb-system/config`); their labels
/// go into `quiet` (their plain mappings are noted here, in legacy terms).
pub fn objects(
    config: &Value,
    origin: &str,
    out: &mut Objects,
    quiet: &mut BTreeSet<String>,
    report: &mut Report,
) {
    let made = |kind: &str, name: &str, what: String, spec: Value| json!({"kind": kind, "metadata": {"name": name}, "spec": spec, "x-ferrolb-origin": format!("{origin}: {what}")});
    let push = |list: &mut Vec<Value>, o: Value, quiet: &mut BTreeSet<String>| {
        quiet.insert(crate::convert::label(&o));
        list.push(o);
    };
    for k in config.as_object().into_iter().flatten().map(|(k, _)| k) {
        if !["address-pools", "peers", "bgp-communities", "bfd-profiles"].contains(&k.as_str()) {
            report.note(origin, k, Outcome::Unknown);
        }
    }
    if let Some(c) = config["bgp-communities"].as_object() {
        note(report, origin, "bgp-communities");
        let list: Vec<Value> = c
            .iter()
            .map(|(n, v)| json!({"name": n, "value": v}))
            .collect();
        let o = made(
            "Community",
            "bgp-communities",
            "bgp-communities".into(),
            json!({"communities": list}),
        );
        push(&mut out.communities, o, quiet);
    }
    for (i, b) in config["bfd-profiles"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let name = b["name"].as_str().unwrap_or_default();
        let what = format!("bfd-profiles[{i}] ({name})");
        let obj = format!("{origin}: {what}");
        if let Some(m) = b.as_object() {
            note_keys(report, &obj, m, "bfd-profiles[]", &["name"]);
        }
        let mut spec = Map::new();
        for (from, to) in BFD_KEYS {
            if let Some(v) = b.get(from) {
                spec.insert(to.into(), v.clone());
            }
        }
        let o = made("BFDProfile", name, what, Value::Object(spec));
        push(&mut out.bfd, o, quiet);
    }
    for (i, p) in config["peers"].as_array().into_iter().flatten().enumerate() {
        let address = p["peer-address"].as_str().unwrap_or_default();
        let what = format!("peers[{i}] ({address})");
        let obj = format!("{origin}: {what}");
        let name = match p["name"].as_str() {
            Some(n) => n.to_string(),
            None => {
                let n = format!("peer-{}", address.replace(['.', ':'], "-"));
                report.note(
                    &obj,
                    "peers[].name",
                    Outcome::Converted("bgp.peers[].name".into(), format!("none given: named {n}")),
                );
                n
            }
        };
        if let Some(m) = p.as_object() {
            note_keys(report, &obj, m, "peers[]", &["name"]);
        }
        let mut spec = Map::new();
        for (from, to) in PEER_KEYS {
            if let Some(v) = p.get(from) {
                spec.insert(to.into(), v.clone());
            }
        }
        if let Some(s) = p.get("node-selectors") {
            spec.insert("nodeSelectors".into(), selectors(s));
        }
        let o = made("BGPPeer", &name, what, Value::Object(spec));
        push(&mut out.peers, o, quiet);
    }
    for (i, p) in config["address-pools"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let name = p["name"].as_str().unwrap_or_default();
        let what = format!("address-pools[{i}] ({name})");
        let obj = format!("{origin}: {what}");
        if let Some(m) = p.as_object() {
            note_keys(
                report,
                &obj,
                m,
                "address-pools[]",
                &["bgp-advertisements", "name", "protocol"],
            );
        }
        let mut spec = Map::new();
        for (from, to) in POOL_KEYS {
            if let Some(v) = p.get(from) {
                spec.insert(to.into(), v.clone());
            }
        }
        let o = made("IPAddressPool", name, what.clone(), Value::Object(spec));
        push(&mut out.pools, o, quiet);
        match p["protocol"].as_str() {
            Some("layer2") => {
                report.note(
                    &obj,
                    "address-pools[].protocol",
                    Outcome::Converted("l2[]".into(), "layer2: an l2 entry for the pool".into()),
                );
                let o = made(
                    "L2Advertisement",
                    name,
                    format!("{what}, protocol layer2"),
                    json!({"ipAddressPools": [name]}),
                );
                push(&mut out.l2, o, quiet);
            }
            Some("bgp") => {
                let ads = p["bgp-advertisements"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                let how = if ads.is_empty() {
                    "bgp, no bgp-advertisements: one advertisement of the pool to every peer, as MetalLB's default".to_string()
                } else {
                    format!("bgp: {} advertisement(s) of the pool", ads.len())
                };
                report.note(
                    &obj,
                    "address-pools[].protocol",
                    Outcome::Converted("bgp.advertisements[]".into(), how),
                );
                let ads = if ads.is_empty() { vec![json!({})] } else { ads };
                for (j, a) in ads.iter().enumerate() {
                    if let Some(m) = a.as_object() {
                        note_keys(report, &obj, m, "address-pools[].bgp-advertisements[]", &[]);
                    }
                    let mut spec = Map::new();
                    spec.insert("ipAddressPools".into(), json!([name]));
                    for (from, to) in AD_KEYS {
                        if let Some(v) = a.get(from) {
                            spec.insert(to.into(), v.clone());
                        }
                    }
                    let o = made(
                        "BGPAdvertisement",
                        &format!("{name}-{j}"),
                        format!("{what}.bgp-advertisements[{j}]"),
                        Value::Object(spec),
                    );
                    push(&mut out.bgp_ads, o, quiet);
                }
            }
            other => report.note(
                &obj,
                "address-pools[].protocol",
                Outcome::Dropped(format!(
                    "{other:?} is neither layer2 nor bgp: the pool is not announced"
                )),
            ),
        }
    }
}
