//! The `ferrolb-controller` binary as an operator runs it.

use std::path::Path;
use std::process::{Command, Output};

fn controller(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ferrolb-controller"))
        .args(args)
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
        .output()
        .expect("the controller binary runs")
}

#[test]
fn validate_configmap_config() {
    let out = controller(&[
        "validate",
        "--config",
        "crates/config/tests/fixtures/good/full.yaml",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        stdout.contains("prod: 148 IPv4 and 18446744073709551616 IPv6 addresses free"),
        "{stdout}"
    );
    assert!(stdout.contains("standalone-mode sections"), "{stdout}");
    let out = controller(&[
        "validate",
        "--config",
        "crates/config/tests/fixtures/bad/three-at-once.yaml",
    ]);
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn help_on_binary_and_every_subcommand() {
    for args in [
        &["--help"][..],
        &["validate", "--help"][..],
        &["run", "--help"][..],
    ] {
        let out = controller(args);
        assert!(out.status.success(), "{args:?}");
        assert!(!out.stdout.is_empty());
    }
}

#[test]
fn a_closed_stdout_is_not_a_panic() {
    use std::process::Stdio;
    // `ferrolb-controller validate ... | head -1`: the reader goes away first.
    let mut child = Command::new(env!("CARGO_BIN_EXE_ferrolb-controller"))
        .args([
            "validate",
            "--config",
            "crates/config/tests/fixtures/good/full.yaml",
        ])
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(out.status.success(), "{stderr}");
}

/// An empty ConfigMap key parses but assigns nothing: refused, not "valid".
#[test]
fn validate_refuses_an_empty_configuration() {
    let file = std::env::temp_dir().join(format!("ferrolb-ctl-empty-{}.yaml", std::process::id()));
    std::fs::write(&file, "").unwrap();
    let out = controller(&["validate", "--config", file.to_str().unwrap()]);
    let _ = std::fs::remove_file(&file);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no address pools"), "{stderr}");
}

/// The ConfigMap manifest itself checks offline, as docs/install.md shows.
#[test]
fn validate_reads_the_configmap_manifest() {
    let out = controller(&["validate", "--config", "deploy/config.yaml"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("deploy/config.yaml: valid"), "{stdout}");
    assert!(stdout.contains("default"), "{stdout}");
}
