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

/// A speaker's Event about a Service, as the cluster view needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpeakerEvent {
    /// `namespace/name` of the Service.
    pub service: String,
    /// The node that reported (`reportingInstance`).
    pub node: String,
    /// `IPAnnounced` or `IPWithdrawn`.
    pub reason: String,
    /// The note.
    pub note: String,
    /// When, in nanoseconds since the Unix epoch.
    pub time: i128,
}

/// The cluster view: per Service with an address, the nodes announcing it
/// now, from the speakers' latest Event per node.
pub fn render_cluster(services: &[(String, Vec<String>)], events: &[SpeakerEvent]) -> String {
    let mut latest: BTreeMap<(&str, &str), &SpeakerEvent> = BTreeMap::new();
    for e in events {
        let k = (e.service.as_str(), e.node.as_str());
        if latest.get(&k).is_none_or(|old| old.time <= e.time) {
            latest.insert(k, e);
        }
    }
    let mut out = String::new();
    let _ = writeln!(out, "{:<28} {:<32} ANNOUNCED BY", "SERVICE", "ADDRESSES");
    for (service, vips) in services {
        let announcing: Vec<(&str, &SpeakerEvent)> = latest
            .iter()
            .filter(|((s, _), e)| *s == service && e.reason == "IPAnnounced")
            .map(|((_, node), e)| (*node, *e))
            .collect();
        // Layer 2 has one owner: a node that died could not withdraw, so the
        // newest owner's word stands. BGP nodes advertise side by side.
        let newest_owner = announcing
            .iter()
            .filter(|(_, e)| e.note.contains("layer 2 owner"))
            .max_by_key(|(_, e)| e.time)
            .map(|(n, _)| *n);
        let nodes: Vec<String> = announcing
            .iter()
            .filter_map(|(node, e)| {
                if e.note.contains("layer 2 owner") {
                    (Some(*node) == newest_owner).then(|| format!("{node} (layer 2 owner)"))
                } else if e.note.contains("over BGP") {
                    Some(format!("{node} (BGP)"))
                } else {
                    Some(format!("{node} (?)"))
                }
            })
            .collect();
        let by = if nodes.is_empty() {
            "nobody (no ready endpoint, no eligible node, or not yet)".to_string()
        } else {
            nodes.join(", ")
        };
        let _ = writeln!(out, "{service:<28} {:<32} {by}", vips.join(","));
    }
    out
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
    fn cluster_view_keeps_each_nodes_latest_word() {
        let ev = |node: &str, reason: &str, note: &str, time: i128| SpeakerEvent {
            service: "shop/web".into(),
            node: node.into(),
            reason: reason.into(),
            note: note.into(),
            time,
        };
        let events = vec![
            ev(
                "node3",
                "IPAnnounced",
                "node node3 announces 192.0.2.100 as its layer 2 owner",
                1,
            ),
            ev(
                "node3",
                "IPWithdrawn",
                "node node3 no longer announces 192.0.2.100",
                5,
            ),
            ev(
                "node2",
                "IPAnnounced",
                "node node2 announces 192.0.2.100 as its layer 2 owner",
                4,
            ),
            // node1 owned it before and died without a word: node2's newer claim stands.
            ev(
                "node1",
                "IPAnnounced",
                "node node1 announces 192.0.2.100 as its layer 2 owner",
                0,
            ),
        ];
        let services = vec![
            ("shop/web".to_string(), vec!["192.0.2.100".to_string()]),
            ("shop/idle".to_string(), vec!["192.0.2.101".to_string()]),
        ];
        let out = render_cluster(&services, &events);
        let web = out.lines().find(|l| l.starts_with("shop/web")).unwrap();
        assert!(web.ends_with("node2 (layer 2 owner)"), "{out}");
        let bgp = vec![
            ev(
                "node1",
                "IPAnnounced",
                "node node1 announces 203.0.113.1 over BGP to tor1",
                1,
            ),
            ev(
                "node2",
                "IPAnnounced",
                "node node2 announces 203.0.113.1 over BGP to tor1",
                2,
            ),
        ];
        let out2 = render_cluster(&services[..1], &bgp);
        assert!(out2.contains("node1 (BGP), node2 (BGP)"), "{out2}");
        let idle = out.lines().find(|l| l.starts_with("shop/idle")).unwrap();
        assert!(idle.contains("nobody"), "{out}");
    }
}
