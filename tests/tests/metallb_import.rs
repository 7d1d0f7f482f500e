//! `ferrolb-controller import-metallb` as a user runs it: a file and
//! standard input, the configuration on standard output (which `validate`
//! accepts), the report on standard error, the exit codes, and the field
//! table that docs/migrate-from-metallb.md must hold verbatim. No root.

use ferrolb_tests::binary;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn golden(name: &str) -> PathBuf {
    root().join("crates/metallb/tests/golden").join(name)
}

fn import(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(binary("ferrolb-controller"))
        .arg("import-metallb")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut pipe = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        pipe.write_all(text.as_bytes()).unwrap();
    }
    drop(pipe);
    child.wait_with_output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).to_string()
}

#[test]
fn a_file_and_standard_input_give_the_reviewed_configuration_which_validate_accepts() {
    let input = golden("realistic-cluster.yaml");
    let want = std::fs::read_to_string(golden("realistic-cluster.ferrolb.yaml")).unwrap();
    let from_file = import(&[input.to_str().unwrap()], None);
    let stdin = std::fs::read_to_string(&input).unwrap();
    let from_stdin = import(&["-"], Some(&stdin));
    for out in [&from_file, &from_stdin] {
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        assert_eq!(text(&out.stdout), want);
        let report = text(&out.stderr);
        assert!(report.contains("DROPPED    spec.connectTime"), "{report}");
        assert!(
            report.ends_with("the converted configuration validates\n"),
            "{report}"
        );
    }
    // As the runbook has users do: the output straight into validate.
    let dir = ferrolb_tests::speaker::unique_dir();
    let file = dir.join("config.yaml");
    std::fs::write(&file, &from_file.stdout).unwrap();
    let v = Command::new(binary("ferrolb-controller"))
        .args(["validate", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(v.status.success(), "{}{}", text(&v.stdout), text(&v.stderr));
    // --strict: something did not carry over, so exit 3 (the output is still written).
    let strict = import(&["--strict", input.to_str().unwrap()], None);
    assert_eq!(strict.status.code(), Some(3), "{}", text(&strict.stderr));
    assert_eq!(text(&strict.stdout), want);
    // The documented layer 2 example loses nothing: --strict passes.
    let clean = import(
        &[
            "--strict",
            golden("docs-layer2-legacy.yaml").to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(clean.status.code(), Some(0), "{}", text(&clean.stderr));
}

#[test]
fn unreadable_input_exits_1_with_what_was_expected() {
    for (input, says) in [
        ("a: [b", "not YAML"),
        (
            "apiVersion: v1\nkind: Service\nmetadata: {name: x}\n",
            "no MetalLB configuration",
        ),
    ] {
        let out = import(&["-"], Some(input));
        assert_eq!(out.status.code(), Some(1), "{input}");
        assert!(
            out.stdout.is_empty(),
            "nothing on standard output for {input:?}"
        );
        assert!(text(&out.stderr).contains(says), "{}", text(&out.stderr));
    }
    let missing = import(&["/nonexistent/metallb.yaml"], None);
    assert_eq!(missing.status.code(), Some(1));
    assert!(text(&missing.stderr).contains("/nonexistent/metallb.yaml"));
    // A result ferrolb refuses: written, the errors said, exit 1.
    let overlap = "apiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata: {name: a}\nspec: {addresses: [192.0.2.0/28]}\n---\napiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata: {name: b}\nspec: {addresses: [192.0.2.8/29]}\n";
    let out = import(&["-"], Some(overlap));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("does not validate"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn the_migration_guide_holds_the_converters_own_field_table() {
    let out = import(&["--fields"], None);
    assert!(out.status.success());
    let table = text(&out.stdout);
    assert!(table.lines().count() > 60, "{table}");
    let doc = std::fs::read_to_string(root().join("docs/migrate-from-metallb.md")).unwrap();
    let begin = "<!-- generated: ferrolb-controller import-metallb --fields -->\n";
    let end = "<!-- end of generated table -->";
    let start = doc.find(begin).expect("the table's begin marker") + begin.len();
    let stop = doc[start..].find(end).expect("the table's end marker") + start;
    assert_eq!(
        &doc[start..stop],
        table,
        "docs/migrate-from-metallb.md's table differs from the converter's: paste `ferrolb-controller import-metallb --fields` between the markers"
    );
}
