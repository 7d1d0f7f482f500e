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

#[test]
fn every_metric_an_alert_reads_is_exported() {
    let mut known = registered("speaker/src/metrics.rs", "ferrolb_");
    known.extend(registered(
        "controller/src/metrics.rs",
        "ferrolb_controller_",
    ));
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
    let used: BTreeSet<String> = exprs
        .iter()
        .flat_map(|e| e.split(|c: char| !(c.is_alphanumeric() || c == '_')))
        .filter(|w| w.starts_with("ferrolb_"))
        .map(String::from)
        .collect();
    assert!(used.len() >= 10, "{used:?}");
    for m in &used {
        let base = ["_total", "_bucket", "_count", "_sum"]
            .iter()
            .find_map(|s| m.strip_suffix(s))
            .unwrap_or(m);
        assert!(
            known.contains(base) || known.contains(m.as_str()),
            "{m} is read by an alert but neither the speaker nor the controller exports it"
        );
    }
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
