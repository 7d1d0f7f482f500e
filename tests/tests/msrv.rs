//! The minimum Rust versions the crates state (`rust-version`) are true of
//! their dependencies: no crate a workspace member builds with (normal and
//! build dependencies, on Linux, as Cargo.lock resolves them) asks for a
//! newer Rust than the member says it needs. This machine has one toolchain
//! and cannot fetch another, so the stated versions cannot be built here;
//! what our own code uses from the standard library is checked against them
//! by clippy's `incompatible_msrv` lint, which `tests/run.sh` runs.

use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// "1.85" or "1.85.0" as (major, minor, patch).
fn version(v: &str) -> (u32, u32, u32) {
    let mut parts = v.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    (
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
    )
}

fn metadata() -> Value {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = std::process::Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--locked",
            "--filter-platform",
            "x86_64-unknown-linux-gnu",
        ])
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .output()
        .expect("cargo runs");
    assert!(
        out.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("cargo metadata prints JSON")
}

#[test]
fn no_dependency_needs_a_newer_rust_than_its_member_states() {
    let meta = metadata();
    let packages: BTreeMap<&str, &Value> = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["id"].as_str().unwrap(), p))
        .collect();
    let name = |id: &str| -> String {
        let p = packages[id];
        format!(
            "{} {}",
            p["name"].as_str().unwrap(),
            p["version"].as_str().unwrap()
        )
    };
    // Normal and build dependencies of each package, as resolved.
    let mut deps: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for node in meta["resolve"]["nodes"].as_array().unwrap() {
        let id = node["id"].as_str().unwrap();
        let list = node["deps"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| {
                d["dep_kinds"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|k| k["kind"].is_null() || k["kind"] == "build")
            })
            .map(|d| d["pkg"].as_str().unwrap())
            .collect();
        deps.insert(id, list);
    }
    let members: Vec<&str> = meta["workspace_members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    assert!(members.len() >= 10, "the workspace's members: {members:?}");
    let mut problems = Vec::new();
    let mut checked = 0;
    for m in &members {
        let stated = packages[m]["rust_version"]
            .as_str()
            .unwrap_or_else(|| panic!("{} states no rust-version", name(m)));
        // Every crate the member builds with, and the path that brings it in.
        let mut seen: BTreeSet<&str> = BTreeSet::new();
        let mut queue: VecDeque<(&str, Vec<&str>)> = VecDeque::from([(*m, vec![*m])]);
        while let Some((id, path)) = queue.pop_front() {
            for d in deps.get(id).into_iter().flatten() {
                if !seen.insert(d) {
                    continue;
                }
                let mut next = path.clone();
                next.push(d);
                if let Some(needs) = packages[d]["rust_version"].as_str() {
                    checked += 1;
                    if version(needs) > version(stated) {
                        let chain: Vec<String> = next.iter().map(|i| name(i)).collect();
                        problems.push(format!(
                            "{} states rust-version {stated}, but {} needs {needs} (via {})",
                            name(m),
                            name(d),
                            chain.join(" -> ")
                        ));
                    }
                }
                queue.push_back((d, next));
            }
        }
    }
    assert!(
        checked > 100,
        "dependencies with a stated rust-version: {checked}"
    );
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn versions_compare_by_number() {
    assert!(version("1.89") > version("1.85.0"));
    assert!(version("1.100") > version("1.99"));
    assert_eq!(version("1.85"), version("1.85.0"));
}
