//! The shipped alerts (deploy/monitoring/) against what they depend on:
//! `promtool test rules` on their unit tests (each alert fires on a series
//! that should fire it, after its `for`, and stays silent otherwise), the
//! PrometheusRule equal to the plain rule file, every runbook link naming a
//! heading of docs/troubleshooting.md, every alert tested, and every metric
//! an expression reads registered by the speaker or the controller (a metric
//! renamed without its alerts fails here). promtool comes from Debian's
//! `prometheus` package (tests/run.sh installs it); without it the promtool
//! test skips loudly (a failure in CI).

use ferrolb_tests::{require, Need};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

const RULES: &str = "deploy/monitoring/ferrolb.rules.yml";
const OPERATOR: &str = "deploy/monitoring/prometheusrule.yaml";
const UNIT: &str = "deploy/monitoring/tests/ferrolb.rules.test.yml";

/// `key: value` of the rule file's lines (our own flat layout: one key per line).
fn values<'a>(text: &'a str, key: &str) -> Vec<&'a str> {
    let prefix = format!("{key}: ");
    text.lines()
        .filter_map(|l| l.trim_start().strip_prefix(prefix.as_str()))
        .map(|v| v.trim().trim_matches('\''))
        .collect()
}

fn alerts() -> Vec<String> {
    values(&read(RULES), "- alert")
        .into_iter()
        .map(String::from)
        .collect()
}

/// GitHub's anchor of a Markdown heading: lower case, punctuation other
/// than `-` and `_` dropped, spaces to `-`.
fn anchor(heading: &str) -> String {
    heading
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            '-' | '_' => Some(c),
            c if c.is_alphanumeric() => Some(c.to_ascii_lowercase()),
            _ => None,
        })
        .collect()
}

#[test]
fn the_prometheus_rule_holds_exactly_the_plain_rule_files_groups() {
    let plain = read(RULES);
    let groups = &plain[plain.find("groups:").expect("groups:")..];
    let indented: String = groups
        .lines()
        .map(|l| {
            if l.trim().is_empty() {
                "\n".to_string()
            } else {
                format!("  {l}\n")
            }
        })
        .collect();
    let op = read(OPERATOR);
    assert!(
        op.contains("kind: PrometheusRule") && op.contains("apiVersion: monitoring.coreos.com/v1")
    );
    let spec = &op[op.find("spec:\n").expect("spec:") + 6..];
    if spec != indented {
        let (n, (a, b)) = spec
            .lines()
            .chain(std::iter::repeat("<end>"))
            .zip(indented.lines().chain(std::iter::repeat("<end>")))
            .enumerate()
            .find(|(_, (a, b))| a != b)
            .expect("a difference");
        panic!(
            "{OPERATOR}'s spec must be {RULES}'s groups indented by two spaces; line {} of the spec differs:\n  {a}\nwant\n  {b}",
            n + 1
        );
    }
}

#[test]
fn every_runbook_link_names_a_heading_of_the_troubleshooting_guide() {
    let repo = read("Cargo.toml")
        .lines()
        .find_map(|l| l.strip_prefix("repository = "))
        .map(|v| v.trim_matches('"').to_string())
        .expect("workspace repository");
    let base = format!("{repo}/blob/main/docs/troubleshooting.md#");
    let headings: BTreeSet<String> = read("docs/troubleshooting.md")
        .lines()
        .filter_map(|l| l.strip_prefix("## ").or_else(|| l.strip_prefix("### ")))
        .map(anchor)
        .collect();
    let rules = read(RULES);
    let links = values(&rules, "runbook_url");
    assert_eq!(links.len(), alerts().len(), "one runbook link per alert");
    for link in links {
        let a = link
            .strip_prefix(&base)
            .unwrap_or_else(|| panic!("{link} is not under {base}"));
        assert!(
            headings.contains(a),
            "{link}: no heading #{a} in docs/troubleshooting.md (headings: {headings:?})"
        );
    }
    assert_eq!(
        anchor("A Service stays `<pending>`"),
        "a-service-stays-pending"
    );
    assert_eq!(
        anchor("A speaker Pod restarts (CrashLoopBackOff)"),
        "a-speaker-pod-restarts-crashloopbackoff"
    );
}

#[test]
fn every_alert_has_a_unit_test_that_sees_it_fire_and_stay_silent() {
    let unit = read(UNIT);
    for a in alerts() {
        let evals = unit.matches(&format!("alertname: {a}\n")).count();
        assert!(
            evals >= 2,
            "{a}: {evals} evaluations in {UNIT}; want a silent and a firing one"
        );
    }
}

/// The metric names a crate registers (`registry.register("name", ...)` in
/// its metrics.rs), with their exposition prefix.
fn registered(file: &str, prefix: &str) -> BTreeSet<String> {
    let text = read(file);
    let mut out = BTreeSet::new();
    let mut rest = text.as_str();
    while let Some(i) = rest.find("registry.register(") {
        rest = &rest[i + "registry.register(".len()..];
        let start = rest.find('"').expect("a name") + 1;
        let len = rest[start..].find('"').expect("a name");
        out.insert(format!("{prefix}{}", &rest[start..start + len]));
    }
    out
}

/// Every metric the speaker and the controller register.
fn known_metrics() -> BTreeSet<String> {
    let mut known = registered("speaker/src/metrics.rs", "ferrolb_");
    known.extend(registered(
        "controller/src/metrics.rs",
        "ferrolb_controller_",
    ));
    known
}

#[test]
fn every_metric_an_alert_reads_is_exported() {
    let known = known_metrics();
    assert!(
        known.contains("ferrolb_bgp_session_up") && known.contains("ferrolb_controller_leader")
    );
    let rules = read(RULES);
    // Each rule's expression: from `expr:` to its `labels:`.
    let exprs: Vec<&str> = rules
        .split("- alert: ")
        .skip(1)
        .map(|r| {
            let e = &r[r.find("expr:").expect("expr") + 5..];
            &e[..e.find("labels:").expect("labels")]
        })
        .collect();
    assert_eq!(exprs.len(), alerts().len());
    assert_exported(&exprs, "an alert", 10);
}

/// Every metric name `exprs` read is registered by the speaker or the
/// controller (at least `min` distinct names are read: the split works).
fn assert_exported(exprs: &[&str], what: &str, min: usize) {
    let known = known_metrics();
    let used: BTreeSet<String> = exprs
        .iter()
        .flat_map(|e| e.split(|c: char| !(c.is_alphanumeric() || c == '_')))
        .filter(|w| w.starts_with("ferrolb_"))
        .map(String::from)
        .collect();
    assert!(used.len() >= min, "{used:?}");
    for m in &used {
        let base = ["_total", "_bucket", "_count", "_sum"]
            .iter()
            .find_map(|s| m.strip_suffix(s))
            .unwrap_or(m);
        assert!(
            known.contains(base) || known.contains(m.as_str()),
            "{m} is read by {what} but neither the speaker nor the controller exports it"
        );
    }
}

#[test]
fn every_dashboard_panel_queries_exported_metrics_through_the_chosen_data_source() {
    let d = ferrolb_tests::prometheus::dashboard();
    let queries = ferrolb_tests::prometheus::dashboard_queries(&d);
    let exprs: Vec<&str> = queries.iter().map(|(_, _, e)| e.as_str()).collect();
    assert_exported(&exprs, "a dashboard panel", 20);
    let rows: BTreeSet<&str> = queries.iter().map(|(r, _, _)| r.as_str()).collect();
    for want in [
        "Announcements",
        "Layer 2",
        "BGP",
        "Pools",
        "Forwarder",
        "Controller",
    ] {
        assert!(rows.contains(want), "no {want} row: {rows:?}");
    }
    let mut ids = BTreeSet::new();
    for p in d["panels"].as_array().unwrap() {
        assert!(ids.insert(p["id"].as_u64().unwrap()), "panel id twice: {p}");
        let g = &p["gridPos"];
        assert!(
            g["x"].as_u64().unwrap() + g["w"].as_u64().unwrap() <= 24,
            "{}: wider than the grid",
            p["title"]
        );
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{}", p["title"]);
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{}: no query", p["title"]);
        for t in targets {
            assert_eq!(t["datasource"]["uid"], "${datasource}", "{}", p["title"]);
        }
        assert!(
            p["description"].as_str().is_some_and(|s| !s.is_empty()),
            "{}: no description",
            p["title"]
        );
    }
    // Variables other than the data source would leave queries the lab
    // cannot run as they stand.
    let vars = d["templating"]["list"].as_array().unwrap();
    assert_eq!(vars.len(), 1);
    for e in &exprs {
        let expanded = ferrolb_tests::prometheus::grafana_expand(e);
        assert!(
            !expanded.contains('$'),
            "{e}: a variable the lab cannot fill"
        );
    }
}

/// The pod templates `deploy/` ships (the speaker DaemonSet's, the
/// controller Deployment's) as Pods in `ferrolb-system` with an address.
fn shipped_pods() -> Vec<serde_json::Value> {
    ferrolb_tests::deploy::render()
        .into_iter()
        .filter(|o| o["kind"] == "DaemonSet" || o["kind"] == "Deployment")
        .map(|o| {
            let t = &o["spec"]["template"];
            serde_json::json!({
                "metadata": {
                    "namespace": o["metadata"]["namespace"],
                    "name": format!("{}-x", o["metadata"]["name"].as_str().unwrap()),
                    "labels": t["metadata"]["labels"],
                    "annotations": t["metadata"]["annotations"],
                },
                "spec": t["spec"].clone(),
                "status": {"podIP": "10.0.0.1", "phase": "Running"},
            })
        })
        .collect()
}

#[test]
fn the_scrape_job_and_the_pod_monitor_pick_each_shipped_pods_metrics_port_alone() {
    let pods = shipped_pods();
    assert_eq!(pods.len(), 2, "the speaker and the controller");
    // What Kubernetes discovery finds, through the job's relabelling rules
    // (their keep rule, as Prometheus applies it: the source labels joined
    // with ';', the regex anchored).
    let job: serde_json::Value =
        serde_saphyr::from_str(&read("deploy/monitoring/scrape-configs.yml")).unwrap();
    let relabel = job["scrape_configs"][0]["relabel_configs"]
        .as_array()
        .unwrap()
        .clone();
    let namespaces = vec![ferrolb_tests::cluster::SYSTEM_NS.to_string()];
    let found = ferrolb_tests::prometheus::pod_targets(&pods, &namespaces);
    let mut kept = Vec::new();
    for g in found.as_array().unwrap() {
        let labels = &g["labels"];
        let keep = relabel.iter().filter(|r| r["action"] == "keep").all(|r| {
            let joined: Vec<&str> = r["source_labels"]
                .as_array()
                .unwrap()
                .iter()
                .map(|l| labels[l.as_str().unwrap()].as_str().unwrap_or(""))
                .collect();
            joined.join(";") == r["regex"].as_str().unwrap()
        });
        if keep {
            kept.push(g["targets"][0].as_str().unwrap().to_string());
        }
    }
    kept.sort();
    assert_eq!(kept, ["10.0.0.1:7472", "10.0.0.1:7474"], "{found:#}");
    // The PodMonitor selects both templates, names their port, and adds the
    // labels the plain job adds.
    let pm: serde_json::Value =
        serde_saphyr::from_str(&read("deploy/monitoring/podmonitor.yaml")).unwrap();
    assert_eq!(pm["kind"], "PodMonitor");
    assert_eq!(
        pm["spec"]["namespaceSelector"]["matchNames"][0],
        namespaces[0]
    );
    for pod in &pods {
        let labels = &pod["metadata"]["labels"];
        for e in pm["spec"]["selector"]["matchExpressions"]
            .as_array()
            .unwrap()
        {
            assert_eq!(e["operator"], "In");
            let v = &labels[e["key"].as_str().unwrap()];
            assert!(
                e["values"].as_array().unwrap().contains(v),
                "{}: {e} does not select {labels}",
                pod["metadata"]["name"]
            );
        }
        let ep = &pm["spec"]["podMetricsEndpoints"][0];
        let port = ep["port"].as_str().unwrap();
        assert!(
            pod["spec"]["containers"][0]["ports"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["name"] == port),
            "{}: no port {port}",
            pod["metadata"]["name"]
        );
    }
    let targets = |rules: &[serde_json::Value], src: &str, dst: &str| -> Vec<(String, String)> {
        rules
            .iter()
            .filter(|r| r.get(dst).is_some())
            .map(|r| {
                (
                    r[src][0].as_str().unwrap().to_string(),
                    r[dst].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    assert_eq!(
        targets(&relabel, "source_labels", "target_label"),
        targets(
            pm["spec"]["podMetricsEndpoints"][0]["relabelings"]
                .as_array()
                .unwrap(),
            "sourceLabels",
            "targetLabel"
        )
    );
}

#[test]
fn promtool_checks_the_lab_scrape_configuration_with_the_rules() {
    if !require(
        "promtool_checks_the_lab_scrape_configuration_with_the_rules",
        &[Need::Program("promtool")],
    ) {
        return;
    }
    let dir = ferrolb_tests::speaker::unique_dir();
    let sd = dir.join("pods.json");
    std::fs::write(&sd, "[]").unwrap();
    let (config, _) = ferrolb_tests::prometheus::lab_config(
        &read("deploy/monitoring/scrape-configs.yml"),
        &sd,
        &[root().join(RULES)],
    );
    let file = dir.join("prometheus.yml");
    std::fs::write(&file, serde_json::to_string(&config).unwrap()).unwrap();
    let out = std::process::Command::new("promtool")
        .args(["check", "config"])
        .arg(&file)
        .output()
        .expect("run promtool");
    assert!(
        out.status.success(),
        "promtool check config:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn promtool_checks_the_rules_and_runs_their_unit_tests() {
    if !require(
        "promtool_checks_the_rules_and_runs_their_unit_tests",
        &[Need::Program("promtool")],
    ) {
        return;
    }
    let dir = root().join("deploy/monitoring");
    for args in [
        vec!["check", "rules", "ferrolb.rules.yml"],
        vec!["test", "rules", "tests/ferrolb.rules.test.yml"],
    ] {
        let out = std::process::Command::new("promtool")
            .args(&args)
            .current_dir(&dir)
            .output()
            .expect("run promtool");
        assert!(
            out.status.success(),
            "promtool {}:\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
