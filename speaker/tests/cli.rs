//! The `ferrolb-speaker` binary as an operator runs it.

use std::path::Path;
use std::process::{Command, Output};

fn speaker(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ferrolb-speaker"))
        .args(args)
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
        .output()
        .expect("the speaker binary runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn validate_example_succeeds_with_summary() {
    let out = speaker(&["validate", "--config", "examples/standalone.yaml"]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    assert!(
        stdout.contains("examples/standalone.yaml: valid"),
        "{stdout}"
    );
    assert!(stdout.contains("loopback"), "{stdout}");
    assert!(
        stdout.contains("25 addresses"),
        "pool capacity is printed: {stdout}"
    );
    assert!(
        stdout.contains("TCP 127.0.10.1:8080 -> 127.0.0.1:9001"),
        "{stdout}"
    );
}

#[test]
fn validate_reports_all_three_errors_and_fails() {
    let out = speaker(&[
        "validate",
        "--config",
        "crates/config/tests/fixtures/bad/three-at-once.yaml",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    for path in [
        "pools[0].avoidBuggyIps",
        "pools[1].addresses",
        "pools[2].addresses[0]",
    ] {
        assert!(stderr.contains(path), "{path} missing from:\n{stderr}");
    }
    assert!(stderr.contains("configuration has 3 errors"), "{stderr}");
    assert!(
        out.stdout.is_empty(),
        "nothing on stdout for an invalid file"
    );
}

#[test]
fn validate_reports_unallocatable_services() {
    let dir = std::env::temp_dir().join(format!("ferrolb-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("full.yaml");
    std::fs::write(
        &file,
        "pools: [{name: p, addresses: [127.0.10.1]}]\nservices: [{name: a}, {name: b}]\n",
    )
    .unwrap();
    let out = speaker(&["validate", "--config", file.to_str().unwrap()]);
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("services[1]: no free IPv4 address in pool(s) p"),
        "{stderr}"
    );
}

#[test]
fn missing_file_is_a_usage_error() {
    let out = speaker(&["validate", "--config", "/nonexistent/ferrolb.yaml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("cannot read /nonexistent/ferrolb.yaml"));
}

#[test]
fn help_on_binary_and_every_subcommand() {
    let out = speaker(&["--help"]);
    assert!(out.status.success());
    assert!(text(&out.stdout).contains("validate"));
    let out = speaker(&["validate", "--help"]);
    assert!(out.status.success());
    assert!(text(&out.stdout).contains("--config <FILE>"));
    let out = speaker(&["kubernetes", "--help"]);
    assert!(out.status.success());
    assert!(
        text(&out.stdout).contains("--node <NAME>"),
        "{}",
        text(&out.stdout)
    );
    let out = speaker(&["no-such-command"]);
    assert_eq!(out.status.code(), Some(2));
}

/// An empty file parses, but assigns nothing: `validate` refuses it rather
/// than calling it valid (the wrong file or ConfigMap key, most likely).
#[test]
fn validate_refuses_an_empty_configuration() {
    let dir = std::env::temp_dir().join(format!("ferrolb-cli-empty-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (name, yaml) in [("empty.yaml", ""), ("no-pools.yaml", "pools: []\n")] {
        let file = dir.join(name);
        std::fs::write(&file, yaml).unwrap();
        let out = speaker(&["validate", "--config", file.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(1), "{name}");
        let stderr = text(&out.stderr);
        assert!(stderr.contains("no address pools"), "{name}: {stderr}");
        assert!(!text(&out.stdout).contains("valid"), "{name}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A BGP password appears nowhere in `validate`'s output.
#[test]
fn validate_never_prints_a_bgp_password() {
    let file = std::env::temp_dir().join(format!("ferrolb-cli-pw-{}.yaml", std::process::id()));
    std::fs::write(
        &file,
        "pools: [{name: p, addresses: [192.0.2.0/28]}]\nbgp:\n  routerId: 192.0.2.1\n  peers: [{name: r, address: 192.0.2.254, asn: 65000, myAsn: 65001, password: hunter2-very-secret}]\n",
    )
    .unwrap();
    let out = speaker(&["validate", "--config", file.to_str().unwrap()]);
    let _ = std::fs::remove_file(&file);
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{all}");
    assert!(all.contains("md5"), "the summary says a key is set: {all}");
    assert!(!all.contains("hunter2"), "{all}");
}
