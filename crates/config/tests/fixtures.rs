//! Table tests over the fixture files: every good file parses, every bad
//! file fails with exactly the errors its `# expect: PATH ~ TEXT` lines name.

use ferrolb_config::Config;
use std::fs;
use std::path::{Path, PathBuf};

fn files(dir: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(dir);
    let mut out: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    out.sort();
    assert!(!out.is_empty(), "no fixtures in {}", dir.display());
    out
}

#[test]
fn good_files_parse() {
    let mut all = files("good");
    all.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/standalone.yaml"));
    for path in all {
        let text = fs::read_to_string(&path).unwrap();
        if let Err(e) = Config::from_yaml(&text) {
            panic!("{} should be valid:\n{e}", path.display());
        }
    }
}

#[test]
fn bad_files_report_exactly_their_errors() {
    for path in files("bad") {
        let text = fs::read_to_string(&path).unwrap();
        let expected: Vec<(String, String)> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# expect:"))
            .map(|l| {
                let (p, m) = l.split_once(" ~ ").expect("expect lines are `PATH ~ TEXT`");
                (p.trim().to_string(), m.trim().to_string())
            })
            .collect();
        assert!(
            !expected.is_empty(),
            "{} has no expect lines",
            path.display()
        );
        let errors = match Config::from_yaml(&text) {
            Ok(_) => panic!("{} should be rejected", path.display()),
            Err(e) => e,
        };
        for (p, m) in &expected {
            assert!(
                errors
                    .errors()
                    .iter()
                    .any(|e| &e.path == p && e.message.contains(m.as_str())),
                "{}: no error at {p:?} containing {m:?}; got:\n{errors}",
                path.display()
            );
        }
        // Nothing beyond what the file expects: a stray error would be a false alarm for operators.
        assert_eq!(
            errors.errors().len(),
            expected.len(),
            "{}: unexpected extra errors:\n{errors}",
            path.display()
        );
    }
}
