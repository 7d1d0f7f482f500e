//! MetalLB's custom resources (as `kubectl get -o yaml` prints them) to a
//! ferrolb configuration tree, noting every field's fate in the report.

use crate::fields::{field, Fate};
use crate::report::{Outcome, Report};
use crate::yaml::Yaml;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

/// The MetalLB objects of one input, by kind, in input order.
#[derive(Debug, Default, Clone)]
pub struct Objects {
    /// `IPAddressPool`s.
    pub pools: Vec<Value>,
    /// `L2Advertisement`s.
    pub l2: Vec<Value>,
    /// `BGPAdvertisement`s.
    pub bgp_ads: Vec<Value>,
    /// `BGPPeer`s.
    pub peers: Vec<Value>,
    /// `Community` objects.
    pub communities: Vec<Value>,
    /// `BFDProfile`s.
    pub bfd: Vec<Value>,
}

/// `Kind namespace/name` of an object, for the report.
pub fn label(o: &Value) -> String {
    // Objects made from the legacy ConfigMap say where in it they come from.
    if let Some(origin) = o["x-ferrolb-origin"].as_str() {
        return origin.to_string();
    }
    let kind = o["kind"].as_str().unwrap_or("?");
    let name = o["metadata"]["name"].as_str().unwrap_or("?");
    match o["metadata"]["namespace"].as_str() {
        Some(ns) => format!("{kind} {ns}/{name}"),
        None => format!("{kind} {name}"),
    }
}

/// A name made a lower-case DNS label (ferrolb's names), unique among `taken`.
fn dns_label(name: &str, taken: &mut BTreeSet<String>) -> String {
    let mut s: String = name
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    s.truncate(63);
    let s = s.trim_matches('-').to_string();
    let base = if s.is_empty() { "x".to_string() } else { s };
    let mut out = base.clone();
    let mut i = 2;
    while taken.contains(&out) {
        let suffix = format!("-{i}");
        let mut b = base.clone();
        b.truncate(63 - suffix.len());
        out = format!("{}{suffix}", b.trim_end_matches('-'));
        i += 1;
    }
    taken.insert(out.clone());
    out
}

/// A Go duration (`90s`, `1m30s`, `1.5s`, `300ms`) in milliseconds.
pub fn go_duration_ms(s: &str) -> Option<u64> {
    let mut total = 0f64;
    let mut rest = s.trim();
    if rest.is_empty() {
        return None;
    }
    if rest == "0" {
        return Some(0);
    }
    while !rest.is_empty() {
        let n = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let value: f64 = rest[..n].parse().ok()?;
        rest = &rest[n..];
        let (unit, len) = [
            ("ns", 1e-6),
            ("us", 1e-3),
            ("µs", 1e-3),
            ("ms", 1.0),
            ("s", 1e3),
            ("m", 60e3),
            ("h", 3600e3),
        ]
        .iter()
        .filter(|(u, _)| rest.starts_with(u))
        .max_by_key(|(u, _)| u.len())
        .map(|(u, f)| (*f, u.len()))?;
        total += value * unit;
        rest = &rest[len..];
    }
    Some(total.round() as u64)
}

/// The network of a CIDR written with host bits set (`198.51.100.10/24`
/// to `198.51.100.0/24`); anything else as it is.
fn network(cidr: &str) -> Option<String> {
    let (ip, len) = cidr.split_once('/')?;
    let len: u32 = len.parse().ok()?;
    match ip.parse::<std::net::IpAddr>().ok()? {
        std::net::IpAddr::V4(a) if len <= 32 => {
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
            let net = u32::from(a) & mask;
            (net != u32::from(a)).then(|| format!("{}/{len}", std::net::Ipv4Addr::from(net)))
        }
        std::net::IpAddr::V6(a) if len <= 128 => {
            let mask = if len == 0 {
                0
            } else {
                u128::MAX << (128 - len)
            };
            let net = u128::from(a) & mask;
            (net != u128::from(a)).then(|| format!("{}/{len}", std::net::Ipv6Addr::from(net)))
        }
        _ => None,
    }
}

/// Whether `labels` satisfy a Kubernetes label selector.
fn selects(selector: &Value, labels: &Value) -> bool {
    let get = |k: &str| labels.get(k).and_then(Value::as_str);
    let by_labels = selector["matchLabels"]
        .as_object()
        .into_iter()
        .flatten()
        .all(|(k, v)| get(k) == v.as_str());
    let by_expr = selector["matchExpressions"]
        .as_array()
        .into_iter()
        .flatten()
        .all(|e| {
            let key = e["key"].as_str().unwrap_or_default();
            let values: Vec<&str> = e["values"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            match e["operator"].as_str() {
                Some("In") => get(key).is_some_and(|v| values.contains(&v)),
                Some("NotIn") => !get(key).is_some_and(|v| values.contains(&v)),
                Some("Exists") => get(key).is_some(),
                Some("DoesNotExist") => get(key).is_none(),
                _ => false,
            }
        });
    by_labels && by_expr
}

/// A Kubernetes label selector as ferrolb writes it.
fn selector_yaml(s: &Value) -> Yaml {
    let mut out = Yaml::map();
    if let Some(m) = s["matchLabels"].as_object().filter(|m| !m.is_empty()) {
        let mut labels = Yaml::map();
        for (k, v) in m {
            labels.put(k, Yaml::Str(v.as_str().unwrap_or_default().to_string()));
        }
        out.put("matchLabels", labels);
    }
    if let Some(e) = s["matchExpressions"].as_array().filter(|e| !e.is_empty()) {
        let mut list = Vec::new();
        for x in e {
            let mut item = Yaml::map();
            item.put(
                "key",
                Yaml::Str(x["key"].as_str().unwrap_or_default().into()),
            );
            item.put(
                "operator",
                Yaml::Str(x["operator"].as_str().unwrap_or_default().into()),
            );
            if let Some(v) = x["values"].as_array().filter(|v| !v.is_empty()) {
                item.put("values", Yaml::strs(v.iter().filter_map(Value::as_str)));
            }
            list.push(item);
        }
        out.put("matchExpressions", Yaml::List(list));
    }
    out
}

/// How a list of `n` selectors became one (for the report).
fn merged_how(n: usize) -> String {
    if n > 1 {
        format!("{n} selectors on one label merged into one `In` expression")
    } else {
        "one selector, as it is".into()
    }
}

/// A list of selectors (ORed, as MetalLB reads them) as one ferrolb
/// selector: `Ok(None)` matches everything, `Err` cannot be expressed.
fn one_selector(list: &[Value]) -> Result<Option<Yaml>, String> {
    let empty = |s: &Value| {
        s["matchLabels"].as_object().is_none_or(|m| m.is_empty())
            && s["matchExpressions"]
                .as_array()
                .is_none_or(|e| e.is_empty())
    };
    if list.is_empty() || list.iter().any(empty) {
        return Ok(None);
    }
    if list.len() == 1 {
        return Ok(Some(selector_yaml(&list[0])));
    }
    // One label, one value each, the same key: `key In (values)`.
    let mut key = None;
    let mut values = Vec::new();
    for s in list {
        let m = s["matchLabels"].as_object();
        let single = m.filter(|m| {
            m.len() == 1
                && s["matchExpressions"]
                    .as_array()
                    .is_none_or(|e| e.is_empty())
        });
        let Some((k, v)) = single.and_then(|m| m.iter().next()) else {
            return Err(format!("{} selectors ORed", list.len()));
        };
        if key.is_some_and(|key: &String| key != k) {
            return Err(format!(
                "{} selectors ORed over different labels",
                list.len()
            ));
        }
        key = Some(k);
        values.push(v.as_str().unwrap_or_default().to_string());
    }
    let mut expr = Yaml::map();
    expr.put("key", Yaml::Str(key.unwrap().clone()));
    expr.put("operator", Yaml::Str("In".into()));
    expr.put("values", Yaml::strs(values));
    let mut out = Yaml::map();
    out.put("matchExpressions", Yaml::List(vec![expr]));
    Ok(Some(out))
}

fn array(v: &Value) -> Vec<Value> {
    v.as_array().cloned().unwrap_or_default()
}

/// The conversion in progress.
struct Ctx<'a> {
    objects: &'a Objects,
    report: Report,
    /// Objects whose field-level "mapped" notes are left out (the legacy
    /// ConfigMap's, reported in its own terms).
    quiet: BTreeSet<String>,
    pool_names: BTreeMap<String, String>,
    peer_names: BTreeMap<String, String>,
}

impl Ctx<'_> {
    /// Notes `path` of `obj` with its table fate (`detail` added to a conversion).
    fn seen(&mut self, obj: &str, kind: &str, path: &str, detail: Option<String>) {
        let outcome = match field(kind, path).map(|f| f.fate) {
            Some(Fate::Maps(to)) => Outcome::Mapped(to.to_string()),
            Some(Fate::Converts(to, how)) => {
                Outcome::Converted(to.to_string(), detail.unwrap_or_else(|| how.to_string()))
            }
            Some(Fate::Drops(why)) => Outcome::Dropped(detail.unwrap_or_else(|| why.to_string())),
            None => Outcome::Unknown,
        };
        // An object made from the legacy ConfigMap had its plain mappings
        // noted in the legacy terms; conversions of its own are told here.
        let quiet = self.quiet.contains(obj)
            && match &outcome {
                Outcome::Mapped(_) => true,
                Outcome::Converted(..) => {
                    detail_is_default(&outcome, kind, path)
                        && crate::legacy::legacy_path(obj, path).is_none()
                }
                _ => false,
            };
        if !quiet {
            self.report.note(obj, path, outcome);
        }
    }

    fn drop(&mut self, obj: &str, path: &str, why: String) {
        self.report.note(obj, path, Outcome::Dropped(why));
    }

    /// Every spec key of `o` not in `known` is unknown (nested maps named in
    /// `nested` are walked one level down).
    fn unknown_keys(&mut self, o: &Value, kind: &str, nested: &[&str]) {
        let obj = label(o);
        for (k, v) in o["spec"].as_object().into_iter().flatten() {
            if nested.contains(&k.as_str()) {
                for k2 in v.as_object().into_iter().flatten().map(|(k, _)| k) {
                    let path = format!("spec.{k}.{k2}");
                    if field(kind, &path).is_none() {
                        self.report.note(&obj, &path, Outcome::Unknown);
                    }
                }
            } else if field(kind, &format!("spec.{k}")).is_none() {
                self.report
                    .note(&obj, &format!("spec.{k}"), Outcome::Unknown);
            }
        }
    }

    /// The converted names of the pools an advertisement selects: `None`
    /// when it names none (every pool), `Some(empty)` when it names some and
    /// none resolves (it advertises nothing).
    fn ad_pools(&mut self, o: &Value, kind: &str) -> Option<Vec<String>> {
        let obj = label(o);
        let names = array(&o["spec"]["ipAddressPools"]);
        let selectors = array(&o["spec"]["ipAddressPoolSelectors"]);
        if names.is_empty() && selectors.is_empty() {
            return None;
        }
        let mut out = Vec::new();
        if !names.is_empty() {
            let mut missing = Vec::new();
            for n in names.iter().filter_map(Value::as_str) {
                match self.pool_names.get(n) {
                    Some(p) => out.push(p.clone()),
                    None => missing.push(n.to_string()),
                }
            }
            if missing.is_empty() {
                self.seen(&obj, kind, "spec.ipAddressPools", None);
            } else {
                self.drop(
                    &obj,
                    "spec.ipAddressPools",
                    format!(
                        "no IPAddressPool named {} in the input; the others carried over",
                        missing.join(", ")
                    ),
                );
            }
        }
        if !selectors.is_empty() {
            let mut matched = Vec::new();
            for p in &self.objects.pools {
                let labels = &p["metadata"]["labels"];
                if selectors.iter().any(|s| selects(s, labels)) {
                    let name = p["metadata"]["name"].as_str().unwrap_or_default();
                    if let Some(n) = self.pool_names.get(name) {
                        matched.push(n.clone());
                    }
                }
            }
            let detail = if matched.is_empty() {
                "they select no IPAddressPool of the input".to_string()
            } else {
                format!("they select {}", matched.join(", "))
            };
            self.seen(&obj, kind, "spec.ipAddressPoolSelectors", Some(detail));
            out.extend(matched);
        }
        let mut seen = BTreeSet::new();
        out.retain(|p| seen.insert(p.clone()));
        Some(out)
    }

    /// A selector list field carried over as one selector; `false` (and a
    /// note saying `consequence`) when it cannot be expressed.
    fn selector_field(
        &mut self,
        o: &Value,
        kind: &str,
        key: &str,
        entry: &mut Yaml,
        to: &str,
        consequence: &str,
    ) -> bool {
        let list = array(&o["spec"][key]);
        if o["spec"].get(key).is_none() {
            return true;
        }
        let obj = label(o);
        let path = format!("spec.{key}");
        match one_selector(&list) {
            Ok(Some(s)) => {
                let detail = Some(merged_how(list.len()));
                self.seen(&obj, kind, &path, detail);
                entry.put(to, s);
                true
            }
            Ok(None) => {
                self.seen(
                    &obj,
                    kind,
                    &path,
                    Some("matches everything: no selector needed".into()),
                );
                true
            }
            Err(why) => {
                self.drop(
                    &obj,
                    &path,
                    format!("{why}, and a ferrolb selector is one: {consequence}; give the objects a common label, select on it, and convert again"),
                );
                false
            }
        }
    }
}

impl Ctx<'_> {
    /// An advertisement's entry, with its `serviceSelectors` (ORed) as
    /// ferrolb's `serviceSelector`: one selector, or a merged one; any other
    /// list as one entry per selector, identical otherwise, which together
    /// select the Services MetalLB's list does (ferrolb's entries add up).
    fn by_service_selectors(&mut self, o: &Value, kind: &str, mut entry: Yaml) -> Vec<Yaml> {
        if o["spec"].get("serviceSelectors").is_none() {
            return vec![entry];
        }
        let list = array(&o["spec"]["serviceSelectors"]);
        let obj = label(o);
        let path = "spec.serviceSelectors";
        match one_selector(&list) {
            Ok(Some(sel)) => {
                self.seen(&obj, kind, path, Some(merged_how(list.len())));
                entry.put("serviceSelector", sel);
                vec![entry]
            }
            Ok(None) => {
                self.seen(
                    &obj,
                    kind,
                    path,
                    Some("matches everything: no selector needed".into()),
                );
                vec![entry]
            }
            Err(why) => {
                self.seen(
                    &obj,
                    kind,
                    path,
                    Some(format!(
                        "{why}: written as {} entries, one selector each",
                        list.len()
                    )),
                );
                list.iter()
                    .map(|sel| {
                        let mut e = entry.clone();
                        e.put("serviceSelector", selector_yaml(sel));
                        e
                    })
                    .collect()
            }
        }
    }
}

/// Whether a conversion note carries only the table's own text (nothing
/// particular to this object, so a quiet object may leave it out).
fn detail_is_default(outcome: &Outcome, kind: &str, path: &str) -> bool {
    match (outcome, field(kind, path).map(|f| f.fate)) {
        (Outcome::Mapped(_), _) => true,
        (Outcome::Converted(_, how), Some(Fate::Converts(_, table))) => how == table,
        _ => false,
    }
}

/// A standard or large community (or an alias of one) as ferrolb writes it.
enum Community {
    Standard(String),
    Large(String),
}

fn community(value: &str, aliases: &BTreeMap<String, String>) -> Result<Community, String> {
    let v = aliases.get(value).map(String::as_str).unwrap_or(value);
    if let Some(large) = v.strip_prefix("large:") {
        return Ok(Community::Large(large.to_string()));
    }
    let parts: Vec<&str> = v.split(':').collect();
    if parts.len() == 2 && parts.iter().all(|p| p.parse::<u16>().is_ok()) {
        return Ok(Community::Standard(v.to_string()));
    }
    if parts.len() == 3 && parts.iter().all(|p| p.parse::<u32>().is_ok()) {
        return Ok(Community::Large(v.to_string()));
    }
    Err(format!(
        "{value:?} is neither ASN:VALUE, large:A:B:C nor a Community alias of the input"
    ))
}

/// Converts `objects`; `quiet` names objects (by [`label`]) whose plain
/// mappings are reported elsewhere.
pub fn convert(objects: &Objects, quiet: BTreeSet<String>) -> (Yaml, Report) {
    let mut ctx = Ctx {
        objects,
        report: Report::default(),
        quiet,
        pool_names: BTreeMap::new(),
        peer_names: BTreeMap::new(),
    };
    let mut root = Yaml::map();

    // Pools.
    let mut taken = BTreeSet::new();
    for p in &objects.pools {
        let name = p["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let new = dns_label(&name, &mut taken);
        ctx.pool_names.insert(name.clone(), new.clone());
    }
    let mut pools = Vec::new();
    for p in &objects.pools {
        let obj = label(p);
        let spec = &p["spec"];
        let given = p["metadata"]["name"].as_str().unwrap_or_default();
        let name = ctx.pool_names[given].clone();
        if name != given {
            ctx.seen(
                &obj,
                "IPAddressPool",
                "metadata.name",
                Some(format!("renamed {name}: not a DNS label")),
            );
        }
        let mut out = Yaml::map();
        out.put("name", Yaml::Str(name));
        let mut addresses = Vec::new();
        let mut moved = Vec::new();
        for a in array(&spec["addresses"]).iter().filter_map(Value::as_str) {
            match network(a) {
                Some(n) => {
                    moved.push(format!("{a} to {n}"));
                    addresses.push(n);
                }
                _ => addresses.push(a.to_string()),
            }
        }
        out.put("addresses", Yaml::strs(addresses));
        if moved.is_empty() {
            ctx.seen(&obj, "IPAddressPool", "spec.addresses", None);
        } else {
            ctx.report.note(&obj, "spec.addresses", Outcome::Converted(
                "pools[].addresses".into(),
                format!("{}: MetalLB takes a CIDR with host bits set as its network (Go's ParseCIDR), ferrolb wants the network written", moved.join(", ")),
            ));
        }
        if let Some(b) = spec["autoAssign"].as_bool() {
            ctx.seen(&obj, "IPAddressPool", "spec.autoAssign", None);
            if !b {
                out.put("autoAssign", Yaml::Bool(false));
            }
        }
        if let Some(b) = spec["avoidBuggyIPs"].as_bool() {
            ctx.seen(&obj, "IPAddressPool", "spec.avoidBuggyIPs", None);
            if b {
                out.put("avoidBuggyIPs", Yaml::Bool(true));
            }
        }
        let alloc = &spec["serviceAllocation"];
        if let Some(pr) = alloc["priority"].as_i64() {
            if pr > 0 {
                out.put("priority", Yaml::Int(pr as i128));
                ctx.seen(
                    &obj,
                    "IPAddressPool",
                    "spec.serviceAllocation.priority",
                    Some(format!("priority {pr}")),
                );
            } else {
                ctx.seen(
                    &obj,
                    "IPAddressPool",
                    "spec.serviceAllocation.priority",
                    Some("0: no priority, left unset".into()),
                );
            }
        }
        let namespaces = array(&alloc["namespaces"]);
        if !namespaces.is_empty() {
            out.put(
                "namespaces",
                Yaml::strs(namespaces.iter().filter_map(Value::as_str)),
            );
            ctx.seen(
                &obj,
                "IPAddressPool",
                "spec.serviceAllocation.namespaces",
                None,
            );
        }
        let mut restrict = false;
        let ns_selectors = array(&alloc["namespaceSelectors"]);
        if !ns_selectors.is_empty() {
            match one_selector(&ns_selectors) {
                Ok(sel) => {
                    // An empty selector admits every namespace (MetalLB adds
                    // the selected namespaces to the named ones).
                    out.put("namespaceSelector", sel.unwrap_or_else(Yaml::map));
                    let how = merged_how(ns_selectors.len());
                    ctx.seen(
                        &obj,
                        "IPAddressPool",
                        "spec.serviceAllocation.namespaceSelectors",
                        Some(how),
                    );
                }
                Err(why) => {
                    ctx.drop(&obj, "spec.serviceAllocation.namespaceSelectors", format!("{why}, and a ferrolb pool takes one namespaceSelector: the pool is written with autoAssign: false, so only Services that ask for it get its addresses, rather than Services of every namespace; give the namespaces a common label, select on it, and convert again"));
                    restrict = true;
                }
            }
        }
        let services = array(&alloc["serviceSelectors"]);
        if !services.is_empty() {
            match one_selector(&services) {
                Ok(Some(s)) => {
                    out.put("serviceSelector", s);
                    let how = merged_how(services.len());
                    ctx.seen(
                        &obj,
                        "IPAddressPool",
                        "spec.serviceAllocation.serviceSelectors",
                        Some(how),
                    );
                }
                Ok(None) => ctx.seen(
                    &obj,
                    "IPAddressPool",
                    "spec.serviceAllocation.serviceSelectors",
                    Some("matches everything: no selector needed".into()),
                ),
                Err(why) => {
                    ctx.drop(&obj, "spec.serviceAllocation.serviceSelectors", format!("{why}, and a ferrolb pool takes one serviceSelector: the pool is written with autoAssign: false, so only Services that ask for it get its addresses, rather than every Service; give the Services a common label, select on it, and convert again"));
                    restrict = true;
                }
            }
        }
        if restrict && spec["autoAssign"].as_bool() != Some(false) {
            out.put("autoAssign", Yaml::Bool(false));
        }
        ctx.unknown_keys(p, "IPAddressPool", &["serviceAllocation"]);
        pools.push(out);
    }
    if !pools.is_empty() {
        root.put("pools", Yaml::List(pools));
    }

    // Layer 2.
    let mut l2 = Vec::new();
    for a in &objects.l2 {
        let obj = label(a);
        let mut out = Yaml::map();
        match ctx.ad_pools(a, "L2Advertisement") {
            Some(p) if p.is_empty() => {
                ctx.drop(&obj, "spec", "it selects no pool, so it announces nothing: left out (ferrolb reads an l2 entry without pools as every pool)".into());
                continue;
            }
            Some(p) => out.put("pools", Yaml::strs(p)),
            None => {}
        }
        let ifaces = array(&a["spec"]["interfaces"]);
        if !ifaces.is_empty() {
            let list: Vec<String> = ifaces
                .iter()
                .filter_map(Value::as_str)
                .map(String::from)
                .collect();
            out.put("interfaces", Yaml::strs(list));
            ctx.seen(&obj, "L2Advertisement", "spec.interfaces", None);
        }
        ctx.selector_field(a, "L2Advertisement", "nodeSelectors", &mut out, "nodeSelector", "the entry is kept without a node selector, so every node may announce its pools (a node off their segment would take VIPs it cannot serve)");
        ctx.unknown_keys(a, "L2Advertisement", &[]);
        l2.extend(ctx.by_service_selectors(a, "L2Advertisement", out));
    }
    if !l2.is_empty() {
        root.put("l2", Yaml::List(l2));
    }

    // BGP: aliases and BFD profiles first.
    let mut aliases = BTreeMap::new();
    for c in &objects.communities {
        let obj = label(c);
        for e in array(&c["spec"]["communities"]) {
            if let (Some(n), Some(v)) = (e["name"].as_str(), e["value"].as_str()) {
                aliases.insert(n.to_string(), v.to_string());
            }
        }
        ctx.seen(&obj, "Community", "spec.communities", None);
        ctx.unknown_keys(c, "Community", &[]);
    }
    let mut profiles: BTreeMap<String, Yaml> = BTreeMap::new();
    for b in &objects.bfd {
        let obj = label(b);
        let spec = &b["spec"];
        let mut out = Yaml::map();
        out.put("enabled", Yaml::Bool(true));
        for (k, to) in [
            ("receiveInterval", "receiveInterval"),
            ("transmitInterval", "transmitInterval"),
        ] {
            if let Some(ms) = spec[k].as_u64() {
                out.put(to, Yaml::Str(format!("{ms}ms")));
                ctx.seen(
                    &obj,
                    "BFDProfile",
                    &format!("spec.{k}"),
                    Some(format!("{ms} to {ms}ms")),
                );
            }
        }
        if let Some(m) = spec["detectMultiplier"].as_u64() {
            out.put("detectMultiplier", Yaml::Int(m as i128));
            ctx.seen(&obj, "BFDProfile", "spec.detectMultiplier", None);
        }
        if spec.get("echoInterval").is_some() {
            ctx.seen(&obj, "BFDProfile", "spec.echoInterval", None);
        }
        if spec["echoMode"].as_bool() == Some(true) {
            ctx.seen(&obj, "BFDProfile", "spec.echoMode", None);
        }
        if let Some(p) = spec["passiveMode"].as_bool() {
            if p {
                out.put("passiveMode", Yaml::Bool(true));
            }
            ctx.seen(&obj, "BFDProfile", "spec.passiveMode", None);
        }
        if spec.get("minimumTtl").is_some() {
            ctx.seen(&obj, "BFDProfile", "spec.minimumTtl", None);
        }
        ctx.unknown_keys(b, "BFDProfile", &[]);
        profiles.insert(
            b["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            out,
        );
    }

    // Peers.
    let mut taken = BTreeSet::new();
    let mut peers = Vec::new();
    for p in &objects.peers {
        let obj = label(p);
        let spec = &p["spec"];
        let name = p["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if let Some(v) = spec["vrf"].as_str().filter(|v| !v.is_empty()) {
            ctx.seen(
                &obj,
                "BGPPeer",
                "spec.vrf",
                Some(format!(
                    "VRF {v}: ferrolb peers in the default VRF only, so this peer is left out"
                )),
            );
            continue;
        }
        let Some(address) = spec["peerAddress"].as_str() else {
            let why = if spec.get("interface").is_some() {
                "unnumbered BGP (interface) is not supported: this peer is left out"
            } else {
                "no peerAddress: this peer is left out"
            };
            ctx.drop(&obj, "spec.peerAddress", why.into());
            continue;
        };
        let Some(asn) = spec["peerASN"].as_u64() else {
            let why = if spec.get("dynamicASN").is_some() {
                "dynamicASN: ferrolb needs the peer's AS; set peerASN (this peer is left out)"
            } else {
                "no peerASN: this peer is left out"
            };
            ctx.drop(&obj, "spec.peerASN", why.into());
            continue;
        };
        let new = dns_label(&name, &mut taken);
        if new != name {
            ctx.seen(
                &obj,
                "BGPPeer",
                "metadata.name",
                Some(format!("renamed {new}: not a DNS label")),
            );
        }
        ctx.peer_names.insert(name.clone(), new.clone());
        let my_asn = spec["myASN"].as_u64().unwrap_or(0);
        let mut out = Yaml::map();
        out.put("name", Yaml::Str(new));
        out.put("address", Yaml::Str(address.to_string()));
        ctx.seen(&obj, "BGPPeer", "spec.peerAddress", None);
        out.put("asn", Yaml::Int(asn as i128));
        ctx.seen(&obj, "BGPPeer", "spec.peerASN", None);
        out.put("myAsn", Yaml::Int(my_asn as i128));
        ctx.seen(&obj, "BGPPeer", "spec.myASN", None);
        if let Some(port) = spec["peerPort"].as_u64() {
            ctx.seen(&obj, "BGPPeer", "spec.peerPort", None);
            if port != 179 {
                out.put("port", Yaml::Int(port as i128));
            }
        }
        for (k, to) in [("holdTime", "holdTime"), ("keepaliveTime", "keepaliveTime")] {
            if let Some(d) = spec[k].as_str() {
                match go_duration_ms(d) {
                    Some(ms) => {
                        let secs = ms.div_ceil(1000);
                        out.put(to, Yaml::Str(format!("{secs}s")));
                        let how = if ms % 1000 == 0 {
                            format!("{d} to {secs}s")
                        } else {
                            format!("{d} to {secs}s (BGP timers are whole seconds: rounded up)")
                        };
                        ctx.seen(&obj, "BGPPeer", &format!("spec.{k}"), Some(how));
                    }
                    None => ctx.drop(
                        &obj,
                        &format!("spec.{k}"),
                        format!("{d:?} is not a Go duration: left at ferrolb's default"),
                    ),
                }
            }
        }
        if let Some(s) = spec["sourceAddress"].as_str() {
            out.put("sourceAddress", Yaml::Str(s.to_string()));
            ctx.seen(&obj, "BGPPeer", "spec.sourceAddress", None);
        }
        if let Some(s) = spec["password"].as_str() {
            out.put("password", Yaml::Str(s.to_string()));
            ctx.seen(&obj, "BGPPeer", "spec.password", None);
        }
        if let Some(secret) = spec["passwordSecret"]["name"].as_str() {
            let ns = spec["passwordSecret"]["namespace"]
                .as_str()
                .or(p["metadata"]["namespace"].as_str())
                .unwrap_or("metallb-system");
            let mut s = Yaml::map();
            s.put("name", Yaml::Str(secret.to_string()));
            s.put("key", Yaml::Str("password".into()));
            out.put("passwordSecret", s);
            ctx.seen(&obj, "BGPPeer", "spec.passwordSecret", Some(format!(
                "Secret {secret}, key password; copy it into ferrolb's namespace: kubectl -n ferrolb-system create secret generic {secret} --from-literal=password=\"$(kubectl -n {ns} get secret {secret} -o jsonpath='{{.data.password}}' | base64 -d)\""
            )));
        }
        if let Some(b) = spec["bfdProfile"].as_str() {
            match profiles.get(b) {
                Some(prof) => {
                    out.put("bfd", prof.clone());
                    ctx.seen(
                        &obj,
                        "BGPPeer",
                        "spec.bfdProfile",
                        Some(format!("BFDProfile {b}")),
                    );
                }
                None => ctx.drop(
                    &obj,
                    "spec.bfdProfile",
                    format!("no BFDProfile {b:?} in the input: the peer runs without BFD"),
                ),
            }
        }
        if spec["ebgpMultiHop"].as_bool() == Some(true) {
            if asn == my_asn {
                ctx.drop(&obj, "spec.ebgpMultiHop", "an iBGP peer (peerASN = myASN): ferrolb refuses a TTL for iBGP, which is multi-hop already".into());
            } else {
                out.put("ebgpMultihop", Yaml::Int(255));
                ctx.seen(&obj, "BGPPeer", "spec.ebgpMultiHop", None);
            }
        } else if spec.get("ebgpMultiHop").is_some() {
            ctx.seen(
                &obj,
                "BGPPeer",
                "spec.ebgpMultiHop",
                Some("false: TTL 1, the default".into()),
            );
        }
        let gr = spec["enableGracefulRestart"].as_bool();
        let mut g = Yaml::map();
        g.put("enabled", Yaml::Bool(gr == Some(true)));
        out.put("gracefulRestart", g);
        ctx.seen(&obj, "BGPPeer", "spec.enableGracefulRestart", Some(match gr {
            Some(true) => "on".into(),
            Some(false) => "off".into(),
            None => "absent, MetalLB's default (off): written as enabled: false, as ferrolb's own default is on".into(),
        }));
        if let Some(r) = spec["routerID"].as_str() {
            out.put("routerId", Yaml::Str(r.to_string()));
            ctx.seen(&obj, "BGPPeer", "spec.routerID", None);
        }
        if !ctx.selector_field(
            p,
            "BGPPeer",
            "nodeSelectors",
            &mut out,
            "nodeSelector",
            "the peer is left out rather than peered from every node",
        ) {
            continue;
        }
        for k in ["connectTime", "disableMP", "dualStackAddressFamily"] {
            if spec.get(k).is_some() && !(k == "disableMP" && spec[k] == false) {
                ctx.seen(&obj, "BGPPeer", &format!("spec.{k}"), None);
            }
        }
        ctx.unknown_keys(p, "BGPPeer", &[]);
        peers.push(out);
    }
    // Advertisements.
    let mut ads = Vec::new();
    for a in &objects.bgp_ads {
        let obj = label(a);
        let spec = &a["spec"];
        let mut out = Yaml::map();
        match ctx.ad_pools(a, "BGPAdvertisement") {
            Some(p) if p.is_empty() => {
                ctx.drop(&obj, "spec", "it selects no pool, so it advertises nothing: left out (ferrolb reads an advertisement without pools as every pool)".into());
                continue;
            }
            Some(p) => out.put("pools", Yaml::strs(p)),
            None => {}
        }
        for (k, to) in [
            ("aggregationLength", "aggregationLength"),
            ("aggregationLengthV6", "aggregationLengthV6"),
            ("localPref", "localPref"),
        ] {
            if let Some(n) = spec[k].as_u64() {
                out.put(to, Yaml::Int(n as i128));
                ctx.seen(&obj, "BGPAdvertisement", &format!("spec.{k}"), None);
            }
        }
        let communities = array(&spec["communities"]);
        if !communities.is_empty() {
            let (mut std, mut large, mut bad) = (Vec::new(), Vec::new(), Vec::new());
            for c in communities.iter().filter_map(Value::as_str) {
                match community(c, &aliases) {
                    Ok(Community::Standard(s)) => std.push(s),
                    Ok(Community::Large(l)) => large.push(l),
                    Err(e) => bad.push(e),
                }
            }
            if !std.is_empty() {
                out.put("communities", Yaml::strs(std));
            }
            if !large.is_empty() {
                out.put("largeCommunities", Yaml::strs(large));
            }
            if bad.is_empty() {
                ctx.seen(&obj, "BGPAdvertisement", "spec.communities", None);
            } else {
                ctx.drop(
                    &obj,
                    "spec.communities",
                    format!("{}; the others carried over", bad.join("; ")),
                );
            }
        }
        ctx.selector_field(
            a,
            "BGPAdvertisement",
            "nodeSelectors",
            &mut out,
            "nodeSelector",
            "the advertisement is kept without a node selector, so every node that peers advertises its pools",
        );
        let named = array(&spec["peers"]);
        if !named.is_empty() {
            let mut to = Vec::new();
            let mut missing = Vec::new();
            for n in named.iter().filter_map(Value::as_str) {
                match ctx.peer_names.get(n) {
                    Some(p) => to.push(p.clone()),
                    None => missing.push(n.to_string()),
                }
            }
            if to.is_empty() {
                ctx.drop(
                    &obj,
                    "spec.peers",
                    format!(
                        "none of its peers ({}) carried over, so it advertises nothing: left out",
                        missing.join(", ")
                    ),
                );
                continue;
            }
            if missing.is_empty() {
                ctx.seen(&obj, "BGPAdvertisement", "spec.peers", None);
            } else {
                ctx.drop(
                    &obj,
                    "spec.peers",
                    format!(
                        "peers {} did not carry over; the others did",
                        missing.join(", ")
                    ),
                );
            }
            out.put("peers", Yaml::strs(to));
        }
        ctx.unknown_keys(a, "BGPAdvertisement", &[]);
        ads.extend(ctx.by_service_selectors(a, "BGPAdvertisement", out));
    }
    if !peers.is_empty() {
        let mut bgp = Yaml::map();
        if ads.is_empty() {
            // ferrolb reads "no advertisements" as "every pool to every
            // peer"; MetalLB advertises nothing then.
            for p in &objects.peers {
                ctx.drop(&label(p), "spec", "no BGPAdvertisement in the input: MetalLB advertises nothing over BGP then, while ferrolb would advertise every pool to every peer, so the peers are left out; add a BGPAdvertisement and convert again".into());
            }
        } else {
            bgp.put("peers", Yaml::List(peers));
            bgp.put("advertisements", Yaml::List(ads));
            root.put("bgp", bgp);
        }
    } else if !objects.bgp_ads.is_empty() {
        for a in &objects.bgp_ads {
            ctx.drop(
                &label(a),
                "spec",
                "no BGPPeer carried over, so nothing is advertised over BGP: left out".into(),
            );
        }
    }
    (root, ctx.report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn go_durations_in_milliseconds() {
        for (s, want) in [
            ("90s", Some(90_000)),
            ("1m30s", Some(90_000)),
            ("1.5s", Some(1_500)),
            ("300ms", Some(300)),
            ("2h", Some(7_200_000)),
            ("0", Some(0)),
            ("", None),
            ("90", None),
            ("5x", None),
        ] {
            assert_eq!(go_duration_ms(s), want, "{s}");
        }
    }

    #[test]
    fn names_become_unique_dns_labels() {
        let mut taken = BTreeSet::new();
        assert_eq!(dns_label("prod", &mut taken), "prod");
        assert_eq!(dns_label("prod", &mut taken), "prod-2");
        assert_eq!(dns_label("Pool.Prod_A", &mut taken), "pool-prod-a");
        assert_eq!(dns_label("-x-", &mut taken), "x");
        assert_eq!(dns_label(&"a".repeat(80), &mut taken).len(), 63);
    }

    #[test]
    fn selector_lists_merge_only_where_the_meaning_is_kept() {
        let host = |h: &str| json!({"matchLabels": {"kubernetes.io/hostname": h}});
        let merged = one_selector(&[host("a"), host("b")]).unwrap().unwrap();
        assert_eq!(
            crate::yaml::to_string(&merged),
            "matchExpressions:\n- key: kubernetes.io/hostname\n  operator: In\n  values: [a, b]\n"
        );
        assert!(one_selector(&[host("a"), json!({"matchLabels": {"zone": "b"}})]).is_err());
        assert!(one_selector(&[host("a"), json!({})]).unwrap().is_none());
        assert!(one_selector(&[]).unwrap().is_none());
    }

    #[test]
    fn label_selectors_select_as_kubernetes_does() {
        let labels = json!({"zone": "a", "tier": "web"});
        for (sel, want) in [
            (json!({"matchLabels": {"zone": "a"}}), true),
            (json!({"matchLabels": {"zone": "b"}}), false),
            (
                json!({"matchExpressions": [{"key": "tier", "operator": "In", "values": ["web", "db"]}]}),
                true,
            ),
            (
                json!({"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["web"]}]}),
                false,
            ),
            (
                json!({"matchExpressions": [{"key": "x", "operator": "DoesNotExist"}]}),
                true,
            ),
            (
                json!({"matchExpressions": [{"key": "zone", "operator": "Exists"}]}),
                true,
            ),
            (json!({}), true),
        ] {
            assert_eq!(selects(&sel, &labels), want, "{sel}");
        }
    }
}
