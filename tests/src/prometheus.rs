//! A real Prometheus (Debian's `prometheus`) in the lab, scraping the
//! product as `deploy/monitoring/` tells operators to, with the shipped
//! alert rules loaded; and its HTTP API for the tests' checks.
//!
//! Debian's Prometheus is built without Kubernetes service discovery, so the
//! job of `deploy/monitoring/scrape-configs.yml` runs with file discovery in
//! its place: [`pod_targets`] writes what `kubernetes_sd_configs` with `role:
//! pod` would discover from the Pods in the API server (one target per
//! container port at the Pod's address, with the `__meta_kubernetes_pod_*`
//! labels), and the job's `relabel_configs` run verbatim on them. Only the
//! scrape and rule intervals are shortened, to a second.

use crate::netns::Lab;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// `deploy/monitoring/`.
pub fn monitoring_dir() -> PathBuf {
    crate::deploy::dir().join("monitoring")
}

/// A label name as Prometheus' Kubernetes discovery writes it: every
/// character that may not be in a label name becomes `_`.
fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// What Prometheus' Kubernetes discovery (`role: pod`) finds in `pods` (Pod
/// objects as the API serves them) within `namespaces`, as a file discovery
/// document: a target per container port (a container without ports: one
/// at the bare Pod address), Pods without an address left out.
pub fn pod_targets(pods: &[Value], namespaces: &[String]) -> Value {
    let mut groups = Vec::new();
    for pod in pods {
        let ns = pod["metadata"]["namespace"].as_str().unwrap_or_default();
        if !namespaces.is_empty() && !namespaces.iter().any(|n| n == ns) {
            continue;
        }
        let Some(ip) = pod.pointer("/status/podIP").and_then(Value::as_str) else {
            continue;
        };
        let mut common = serde_json::Map::new();
        let mut put = |k: &str, v: &str| {
            common.insert(format!("__meta_kubernetes_{k}"), json!(v));
        };
        put("namespace", ns);
        put(
            "pod_name",
            pod["metadata"]["name"].as_str().unwrap_or_default(),
        );
        put(
            "pod_uid",
            pod["metadata"]["uid"].as_str().unwrap_or_default(),
        );
        put("pod_ip", ip);
        put(
            "pod_node_name",
            pod["spec"]["nodeName"].as_str().unwrap_or_default(),
        );
        put(
            "pod_host_ip",
            pod["status"]["hostIP"].as_str().unwrap_or_default(),
        );
        put(
            "pod_phase",
            pod["status"]["phase"].as_str().unwrap_or_default(),
        );
        let ready = pod["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["type"] == "Ready")
            .and_then(|c| c["status"].as_str())
            .map_or("unknown", |s| if s == "True" { "true" } else { "false" });
        put("pod_ready", ready);
        for (kind, field) in [("label", "labels"), ("annotation", "annotations")] {
            for (k, v) in pod["metadata"][field].as_object().into_iter().flatten() {
                let k = sanitize(k);
                put(&format!("pod_{kind}_{k}"), v.as_str().unwrap_or_default());
                put(&format!("pod_{kind}present_{k}"), "true");
            }
        }
        if let Some(owner) = pod["metadata"]["ownerReferences"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|o| o["controller"] == true)
        {
            put(
                "pod_controller_kind",
                owner["kind"].as_str().unwrap_or_default(),
            );
            put(
                "pod_controller_name",
                owner["name"].as_str().unwrap_or_default(),
            );
        }
        for (init, field) in [(false, "containers"), (true, "initContainers")] {
            for c in pod["spec"][field].as_array().into_iter().flatten() {
                let mut labels = common.clone();
                let mut put = |k: &str, v: &str| {
                    labels.insert(format!("__meta_kubernetes_pod_{k}"), json!(v));
                };
                put("container_name", c["name"].as_str().unwrap_or_default());
                put("container_image", c["image"].as_str().unwrap_or_default());
                put("container_init", if init { "true" } else { "false" });
                let ports = c["ports"].as_array().cloned().unwrap_or_default();
                if ports.is_empty() {
                    groups.push(json!({"targets": [ip], "labels": labels}));
                    continue;
                }
                for port in ports {
                    let mut labels = labels.clone();
                    let number = port["containerPort"].as_u64().unwrap_or(0).to_string();
                    for (k, v) in [
                        ("name", port["name"].as_str().unwrap_or_default()),
                        ("number", &number),
                        ("protocol", port["protocol"].as_str().unwrap_or("TCP")),
                    ] {
                        labels.insert(
                            format!("__meta_kubernetes_pod_container_port_{k}"),
                            json!(v),
                        );
                    }
                    groups.push(json!({"targets": [format!("{ip}:{number}")], "labels": labels}));
                }
            }
        }
    }
    Value::Array(groups)
}

/// `prometheus.yml` for the lab: the jobs of `scrape-configs.yml` with
/// file discovery from `sd_file` in place of Kubernetes discovery (the
/// namespaces it names are returned, for [`pod_targets`]), scrapes and rule
/// evaluations every second, and `rules` loaded.
pub fn lab_config(scrape_configs: &str, sd_file: &Path, rules: &[PathBuf]) -> (Value, Vec<String>) {
    let doc: Value = serde_saphyr::from_str(scrape_configs).expect("scrape-configs.yml parses");
    let mut jobs = doc["scrape_configs"]
        .as_array()
        .cloned()
        .expect("scrape-configs.yml has scrape_configs");
    let mut namespaces = Vec::new();
    for job in &mut jobs {
        let sd = job
            .as_object_mut()
            .unwrap()
            .remove("kubernetes_sd_configs")
            .expect("every job discovers Pods in Kubernetes");
        for s in sd.as_array().unwrap() {
            assert_eq!(s["role"], "pod", "the lab stands in for role: pod only");
            for n in s["namespaces"]["names"].as_array().into_iter().flatten() {
                namespaces.push(n.as_str().unwrap().to_string());
            }
        }
        job["file_sd_configs"] = json!([{"files": [sd_file], "refresh_interval": "1s"}]);
        job["scrape_interval"] = json!("1s");
        job["scrape_timeout"] = json!("1s");
    }
    (
        json!({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": rules,
            "scrape_configs": jobs,
        }),
        namespaces,
    )
}

/// One GET over HTTP/1.0 (no chunking, the connection closes): the status
/// code and the body.
pub fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .map_err(|e| format!("send to {addr}: {e}"))?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)
        .map_err(|e| format!("read from {addr}: {e}"))?;
    let text = String::from_utf8_lossy(&out).to_string();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("{addr}: no HTTP response: {text}"))?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("{addr}: bad status line: {head}"))?;
    Ok((code, body.to_string()))
}

/// `s` percent-encoded for a query string.
fn encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A Prometheus running in a lab namespace.
pub struct Prometheus {
    /// Its HTTP API, reachable from the test's own namespace.
    pub addr: SocketAddr,
    /// When it started: a range query from here covers the whole run.
    pub started: std::time::SystemTime,
    dir: PathBuf,
    namespaces: Vec<String>,
}

impl Prometheus {
    /// Starts Prometheus in `ns` on `addr` (an address of `ns` the test's
    /// namespace reaches) with the shipped scrape job and rules, discovering
    /// `pods`; waits until its API answers.
    pub fn start(
        lab: &mut Lab,
        ns: &str,
        addr: SocketAddr,
        dir: &Path,
        pods: &[Value],
    ) -> Prometheus {
        std::fs::create_dir_all(dir).unwrap();
        let scrape = std::fs::read_to_string(monitoring_dir().join("scrape-configs.yml")).unwrap();
        let sd = dir.join("pods.json");
        let (config, namespaces) =
            lab_config(&scrape, &sd, &[monitoring_dir().join("ferrolb.rules.yml")]);
        let p = Prometheus {
            addr,
            started: std::time::SystemTime::now(),
            dir: dir.to_path_buf(),
            namespaces,
        };
        p.set_pods(pods);
        let file = dir.join("prometheus.yml");
        std::fs::write(&file, serde_json::to_string_pretty(&config).unwrap()).unwrap();
        lab.spawn(
            ns,
            &[
                "prometheus",
                &format!("--config.file={}", file.display()),
                &format!("--storage.tsdb.path={}", dir.join("data").display()),
                &format!("--web.listen-address={addr}"),
                "--log.level=info",
            ],
            &dir.join("prometheus.log"),
        );
        let t = Instant::now();
        while !matches!(http_get(addr, "/-/ready"), Ok((200, _))) {
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "Prometheus not ready on {addr} after 30 s:\n{}",
                p.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        p
    }

    /// Rewrites the discovered targets from `pods`.
    pub fn set_pods(&self, pods: &[Value]) {
        let sd = self.dir.join("pods.json");
        let tmp = self.dir.join("pods.json.tmp");
        let targets = pod_targets(pods, &self.namespaces);
        std::fs::write(&tmp, serde_json::to_string_pretty(&targets).unwrap()).unwrap();
        std::fs::rename(&tmp, &sd).unwrap();
    }

    /// Prometheus' own log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    /// An API call's `data`, or the error Prometheus gave.
    pub fn api(&self, path: &str) -> Result<Value, String> {
        let (code, body) = http_get(self.addr, path)?;
        let v: Value = serde_json::from_str(&body).map_err(|e| format!("{path}: {e}: {body}"))?;
        if code != 200 || v["status"] != "success" {
            return Err(format!("{path}: {code} {body}"));
        }
        Ok(v["data"].clone())
    }

    /// An instant query's result (a vector's samples, or a scalar as one).
    pub fn query(&self, q: &str) -> Result<Vec<Value>, String> {
        let data = self.api(&format!("/api/v1/query?query={}", encode(q)))?;
        Ok(match data["resultType"].as_str() {
            Some("vector") | Some("matrix") => {
                data["result"].as_array().cloned().unwrap_or_default()
            }
            _ => vec![json!({"metric": {}, "value": data["result"]})],
        })
    }

    /// A range query's series since Prometheus started, a point per `step_s`.
    pub fn query_range(&self, q: &str, step_s: u64) -> Result<Vec<Value>, String> {
        let unix =
            |t: std::time::SystemTime| t.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        let data = self.api(&format!(
            "/api/v1/query_range?query={}&start={}&end={}&step={step_s}",
            encode(q),
            unix(self.started),
            unix(std::time::SystemTime::now())
        ))?;
        Ok(data["result"].as_array().cloned().unwrap_or_default())
    }

    /// The value of a query that gives one sample; `None` for no sample.
    pub fn value(&self, q: &str) -> Option<f64> {
        let r = self.query(q).unwrap_or_else(|e| panic!("{q}: {e}"));
        assert!(r.len() <= 1, "{q} gave {} samples: {r:?}", r.len());
        r.first()
            .and_then(|s| s["value"][1].as_str())
            .and_then(|v| v.parse().ok())
    }

    /// Waits up to `timeout` until `q` has a value `ok` accepts; returns it.
    pub fn wait_value(&self, q: &str, timeout: Duration, ok: impl Fn(f64) -> bool) -> f64 {
        let t = Instant::now();
        loop {
            let v = self.value(q);
            if let Some(v) = v.filter(|v| ok(*v)) {
                return v;
            }
            assert!(
                t.elapsed() < timeout,
                "{q} is {v:?} after {timeout:?}\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The active targets (`/api/v1/targets`).
    pub fn targets(&self) -> Vec<Value> {
        self.api("/api/v1/targets").unwrap()["activeTargets"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Waits until exactly `n` targets are discovered and every one is up.
    pub fn wait_targets_up(&self, n: usize, timeout: Duration) -> Vec<Value> {
        let t = Instant::now();
        loop {
            let targets = self.targets();
            if targets.len() == n && targets.iter().all(|t| t["health"] == "up") {
                return targets;
            }
            assert!(
                t.elapsed() < timeout,
                "wanted {n} targets up: {}\n{}",
                serde_json::to_string_pretty(&targets).unwrap(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Every alerting rule loaded: (name, health, last error).
    pub fn alerting_rules(&self) -> Vec<(String, String, String)> {
        let data = self.api("/api/v1/rules?type=alert").unwrap();
        data["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .map(|r| {
                (
                    r["name"].as_str().unwrap_or_default().to_string(),
                    r["health"].as_str().unwrap_or_default().to_string(),
                    r["lastError"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect()
    }

    /// The alerts named `name` now (pending or firing), with their labels.
    pub fn alerts(&self, name: &str) -> Vec<Value> {
        self.api("/api/v1/alerts").unwrap()["alerts"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|a| a["labels"]["alertname"] == name)
            .cloned()
            .collect()
    }
}

/// The shipped Grafana dashboard (`deploy/monitoring/grafana-dashboard.json`).
pub fn dashboard() -> Value {
    let path = monitoring_dir().join("grafana-dashboard.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A Grafana variable-free expression made concrete for an instant query:
/// the interval macros as Grafana would fill them for a 15-minute view.
pub fn grafana_expand(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m")
        .replace("$__interval", "15s")
        .replace("$__range", "15m")
}

/// Every query of a Grafana dashboard: (row title, panel title, expr).
pub fn dashboard_queries(dashboard: &Value) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    let mut row = String::new();
    for p in dashboard["panels"].as_array().into_iter().flatten() {
        if p["type"] == "row" {
            row = p["title"].as_str().unwrap_or_default().to_string();
        }
        for t in p["targets"].as_array().into_iter().flatten() {
            if let Some(e) = t["expr"].as_str() {
                out.push((
                    row.clone(),
                    p["title"].as_str().unwrap_or_default().to_string(),
                    e.to_string(),
                ));
            }
        }
    }
    out
}

/// The dashboard's panels with every query's series over the whole run, for
/// tests/monitoring/plot_dashboard.py: written to `$FERROLB_DASHBOARD_DATA/NAME.json`
/// when that variable names a directory, nothing otherwise. Waits `settle`
/// first (only then), so the plot shows the end of the run's last change.
pub fn export_dashboard(prom: &Prometheus, name: &str, settle: Duration) {
    let Some(dir) = std::env::var_os("FERROLB_DASHBOARD_DATA") else {
        return;
    };
    std::thread::sleep(settle);
    let d = dashboard();
    let mut panels = Vec::new();
    for p in d["panels"].as_array().into_iter().flatten() {
        let mut targets = Vec::new();
        for t in p["targets"].as_array().into_iter().flatten() {
            let q = grafana_expand(t["expr"].as_str().unwrap_or_default());
            let series = prom.query_range(&q, 1).unwrap_or_default();
            targets.push(json!({"expr": q, "legend": t["legendFormat"], "series": series}));
        }
        panels.push(json!({
            "type": p["type"],
            "title": p["title"],
            "unit": p["fieldConfig"]["defaults"]["unit"],
            "targets": targets,
        }));
    }
    let out = Path::new(&dir).join(format!("{name}.json"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        &out,
        serde_json::to_string(&json!({"name": name, "panels": panels})).unwrap(),
    )
    .unwrap();
    eprintln!("dashboard data written to {}", out.display());
}
