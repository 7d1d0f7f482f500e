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
}
