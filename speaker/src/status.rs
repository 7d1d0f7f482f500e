//! `ferrolb-speaker status`: what a speaker announces and how its backends
//! are, read from its `/metrics` (pure parsing here; main.rs fetches).

use std::collections::BTreeMap;
use std::fmt::Write;

/// One sample: metric name, labels, value.
type Sample = (String, BTreeMap<String, String>, f64);

/// Parses the Prometheus text exposition (the subset the speaker writes).
pub fn parse(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let Some((head, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let (name, labels) = match head.split_once('{') {
            Some((n, rest)) => (n, rest.trim_end_matches('}')),
            None => (head, ""),
        };
        let mut map = BTreeMap::new();
        // Label values the speaker writes never contain `",`; a split is enough.
        for pair in labels.split("\",").filter(|p| !p.is_empty()) {
            if let Some((k, v)) = pair.split_once("=\"") {
                map.insert(k.trim().to_string(), v.trim_end_matches('"').to_string());
            }
        }
        out.push((name.to_string(), map, value));
    }
    out
}

/// The table `status` prints: per service, its VIPs and how this node
/// announces them, and its backends' health.
pub fn render(metrics: &str) -> String {
    let samples = parse(metrics);
    #[derive(Default)]
    struct Row {
        vips: BTreeMap<String, Vec<String>>,
        up: Option<bool>,
        backends: Vec<(String, bool)>,
    }
    let mut rows: BTreeMap<String, Row> = BTreeMap::new();
    for (name, labels, value) in &samples {
        let Some(service) = labels.get("service") else {
            continue;
        };
        match name.as_str() {
            "ferrolb_vip_announced" if *value == 1.0 => {
                let mode = match labels.get("mode").map(String::as_str) {
                    Some("l2") => "layer 2 owner",
                    Some("bgp") => "BGP",
                    _ => "?",
                };
                rows.entry(service.clone())
                    .or_default()
                    .vips
                    .entry(labels.get("vip").cloned().unwrap_or_default())
                    .or_default()
                    .push(mode.to_string());
            }
            "ferrolb_service_up" => {
                rows.entry(service.clone()).or_default().up = Some(*value == 1.0)
            }
            "ferrolb_backend_up" => {
                let backend = format!(
                    "{} ({})",
                    labels.get("backend").cloned().unwrap_or_default(),
                    labels.get("port").cloned().unwrap_or_default()
                );
                rows.entry(service.clone())
                    .or_default()
                    .backends
                    .push((backend, *value == 1.0));
            }
            _ => {}
        }
    }
    if rows.is_empty() {
        return "this speaker announces and forwards nothing\n".to_string();
    }
    let mut out = String::new();
    let _ = writeln!(out, "{:<28} {:<40} BACKENDS", "SERVICE", "ANNOUNCED HERE");
    for (service, row) in rows {
        let announced = if row.vips.is_empty() {
            "-".to_string()
        } else {
            row.vips
                .iter()
                .map(|(vip, modes)| format!("{vip} ({})", modes.join(", ")))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let backends = if row.backends.is_empty() {
            "- (not forwarded here)".to_string()
        } else {
            let up = row.backends.iter().filter(|(_, u)| *u).count();
            let down: Vec<&str> = row
                .backends
                .iter()
                .filter(|(_, u)| !u)
                .map(|(b, _)| b.as_str())
                .collect();
            let mut s = format!("{up}/{} up", row.backends.len());
            if !down.is_empty() {
                let _ = write!(s, "; down: {}", down.join(", "));
            }
            if row.up == Some(false) {
                s.push_str(" (service down)");
            }
            s
        };
        let _ = writeln!(out, "{service:<28} {announced:<40} {backends}");
    }
    out
}

/// One node's NodeAnnouncement, as the cluster view needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeClaim {
    /// The node.
    pub node: String,
    /// When its speaker wrote the set, in nanoseconds since the Unix epoch
    /// (the node's clock).
    pub updated: i128,
    /// `namespace/name` of each Service it owns in layer 2.
    pub layer2: Vec<String>,
    /// `namespace/name` of each Service it advertises over BGP.
    pub bgp: Vec<String>,
    /// Whether its speaker Pod runs and the Node is Ready: a dead node
    /// cannot rewrite its object, so its claim is stale, not current.
    pub live: bool,
    /// Whether the lists were cut to fit the object.
    pub truncated: bool,
}

/// The Service key of a NodeAnnouncement entry (`namespace/name=ip,ip`).
pub fn entry_service(entry: &str) -> &str {
    entry.split_once('=').map(|(k, _)| k).unwrap_or(entry)
}

/// One node announcing a Service now.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Announcer {
    /// The node.
    pub node: String,
    /// `layer2` (the owner) or `bgp`.
    pub mode: &'static str,
}

/// One Service of the cluster view.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ClusterRow {
    /// `namespace/name`.
    pub service: String,
    /// Its addresses, from its status.
    pub addresses: Vec<String>,
    /// The nodes announcing it now (empty: nobody).
    pub announced_by: Vec<Announcer>,
    /// Nodes whose claim is stale (speaker not running or node not Ready).
    pub stale: Vec<String>,
}

/// The cluster view: per Service with an address, the nodes announcing it
/// now. Layer 2 has one owner: among live nodes claiming it the newest
/// claim stands (the previous owner may not have rewritten its set yet);
/// BGP nodes advertise side by side. Claims of nodes that are not live are
/// named as stale.
pub fn cluster_rows(services: &[(String, Vec<String>)], claims: &[NodeClaim]) -> Vec<ClusterRow> {
    let mut l2: BTreeMap<&str, Vec<&NodeClaim>> = BTreeMap::new();
    let mut bgp: BTreeMap<&str, Vec<&NodeClaim>> = BTreeMap::new();
    for c in claims {
        for e in &c.layer2 {
            l2.entry(entry_service(e)).or_default().push(c);
        }
        for e in &c.bgp {
            bgp.entry(entry_service(e)).or_default().push(c);
        }
    }
    services
        .iter()
        .map(|(service, vips)| {
            let mut by = Vec::new();
            let mut stale = Vec::new();
            if let Some(cs) = l2.get(service.as_str()) {
                if let Some(owner) = cs.iter().filter(|c| c.live).max_by_key(|c| c.updated) {
                    by.push(Announcer {
                        node: owner.node.clone(),
                        mode: "layer2",
                    });
                }
                stale.extend(cs.iter().filter(|c| !c.live).map(|c| c.node.clone()));
            }
            if let Some(cs) = bgp.get(service.as_str()) {
                by.extend(cs.iter().filter(|c| c.live).map(|c| Announcer {
                    node: c.node.clone(),
                    mode: "bgp",
                }));
                stale.extend(cs.iter().filter(|c| !c.live).map(|c| c.node.clone()));
            }
            stale.sort();
            stale.dedup();
            ClusterRow {
                service: service.clone(),
                addresses: vips.clone(),
                announced_by: by,
                stale,
            }
        })
        .collect()
}

/// Nodes whose NodeAnnouncement was cut to fit the API's object size.
fn truncated(claims: &[NodeClaim]) -> Vec<&str> {
    claims
        .iter()
        .filter(|c| c.truncated)
        .map(|c| c.node.as_str())
        .collect()
}

/// The cluster view as a table.
pub fn render_cluster(services: &[(String, Vec<String>)], claims: &[NodeClaim]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{:<28} {:<32} ANNOUNCED BY", "SERVICE", "ADDRESSES");
    for row in cluster_rows(services, claims) {
        let mut text = if row.announced_by.is_empty() {
            "nobody (no ready endpoint, no eligible node, or not yet)".to_string()
        } else {
            row.announced_by
                .iter()
                .map(|a| match a.mode {
                    "layer2" => format!("{} (layer 2 owner)", a.node),
                    _ => format!("{} (BGP)", a.node),
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        if !row.stale.is_empty() {
            let _ = write!(
                text,
                "; stale claim of {} (speaker not running or node not Ready)",
                row.stale.join(", ")
            );
        }
        let _ = writeln!(
            out,
            "{:<28} {:<32} {text}",
            row.service,
            row.addresses.join(",")
        );
    }
    let cut = truncated(claims);
    if !cut.is_empty() {
        let _ = writeln!(
            out,
            "note: the NodeAnnouncement of {} was cut to fit the API's object size; Services missing above may still be announced there (see its metrics)",
            cut.join(", ")
        );
    }
    out
}

/// The cluster view as JSON, for scripts: `{"services": [ClusterRow...],
/// "truncated": [node...]}`.
pub fn render_cluster_json(services: &[(String, Vec<String>)], claims: &[NodeClaim]) -> String {
    let v = serde_json::json!({
        "services": cluster_rows(services, claims),
        "truncated": truncated(claims),
    });
    let mut s = serde_json::to_string_pretty(&v).unwrap_or_else(|_| "{}".into());
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_announcements_and_backend_health() {
        let text = r#"# HELP ferrolb_vip_announced x
# TYPE ferrolb_vip_announced gauge
ferrolb_vip_announced{service="shop/web",vip="192.0.2.100",mode="l2"} 1
ferrolb_vip_announced{service="shop/api",vip="192.0.2.101",mode="bgp"} 1
ferrolb_backend_up{service="shop/api",port="80/TCP",backend="10.0.0.1:9000"} 1
ferrolb_backend_up{service="shop/api",port="80/TCP",backend="10.0.0.2:9000"} 0
ferrolb_service_up{service="shop/api"} 1
ferrolb_backend_up{service="shop/db",port="5432/TCP",backend="10.0.0.3:5432"} 0
ferrolb_service_up{service="shop/db"} 0
"#;
        let out = render(text);
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines[0].starts_with("SERVICE"));
        assert!(
            lines[1].starts_with("shop/api")
                && lines[1].contains("192.0.2.101 (BGP)")
                && lines[1].contains("1/2 up; down: 10.0.0.2:9000 (80/TCP)"),
            "{out}"
        );
        assert!(
            lines[2].starts_with("shop/db")
                && lines[2].contains("0/1 up")
                && lines[2].contains("(service down)"),
            "{out}"
        );
        assert!(
            lines[3].starts_with("shop/web")
                && lines[3].contains("192.0.2.100 (layer 2 owner)")
                && lines[3].contains("not forwarded here"),
            "{out}"
        );
        assert_eq!(render(""), "this speaker announces and forwards nothing\n");
    }

    #[test]
    fn cluster_view_takes_the_newest_live_layer_2_claim() {
        let claim = |node: &str, updated: i128, l2: &[&str], bgp: &[&str], live: bool| NodeClaim {
            node: node.into(),
            updated,
            layer2: l2.iter().map(|s| s.to_string()).collect(),
            bgp: bgp.iter().map(|s| s.to_string()).collect(),
            live,
            truncated: false,
        };
        let services = vec![
            ("shop/web".to_string(), vec!["192.0.2.100".to_string()]),
            ("shop/idle".to_string(), vec!["192.0.2.101".to_string()]),
            ("shop/api".to_string(), vec!["203.0.113.1".to_string()]),
        ];
        let claims = vec![
            // node1 owned web and died without a word; node3 owned it and has
            // not rewritten its set yet; node2's newer claim stands.
            claim("node1", 0, &["shop/web=192.0.2.100"], &[], false),
            claim(
                "node3",
                1,
                &["shop/web=192.0.2.100"],
                &["shop/api=203.0.113.1"],
                true,
            ),
            claim(
                "node2",
                4,
                &["shop/web=192.0.2.100"],
                &["shop/api=203.0.113.1"],
                true,
            ),
        ];
        let out = render_cluster(&services, &claims);
        let line = |s: &str| out.lines().find(|l| l.starts_with(s)).unwrap().to_string();
        assert!(
            line("shop/web").contains("node2 (layer 2 owner); stale claim of node1"),
            "{out}"
        );
        assert!(!line("shop/web").contains("node3"), "{out}");
        assert!(
            line("shop/api").ends_with("node3 (BGP), node2 (BGP)"),
            "{out}"
        );
        assert!(line("shop/idle").contains("nobody"), "{out}");
        assert!(!out.contains("note:"));
        let mut cut = claims.clone();
        cut[2].truncated = true;
        assert!(render_cluster(&services, &cut).contains("NodeAnnouncement of node2 was cut"));
        // The same view for scripts.
        let v: serde_json::Value =
            serde_json::from_str(&render_cluster_json(&services, &cut)).unwrap();
        assert_eq!(
            v["services"][0],
            serde_json::json!({
                "service": "shop/web",
                "addresses": ["192.0.2.100"],
                "announced_by": [{"node": "node2", "mode": "layer2"}],
                "stale": ["node1"],
            })
        );
        assert_eq!(v["services"][1]["announced_by"], serde_json::json!([]));
        assert_eq!(
            v["services"][2]["announced_by"],
            serde_json::json!([{"node": "node3", "mode": "bgp"}, {"node": "node2", "mode": "bgp"}])
        );
        assert_eq!(v["truncated"], serde_json::json!(["node2"]));
    }
}
