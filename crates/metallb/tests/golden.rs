//! Golden tests: MetalLB's documented examples and a large realistic setup
//! (tests/golden/*.yaml), each converted; the configuration and the report
//! must equal the reviewed files beside them (`NAME.ferrolb.yaml`,
//! `NAME.report.txt`; `FERROLB_UPDATE_GOLDEN=1` rewrites them for review),
//! and the configuration must pass ferrolb's validation.

use std::path::Path;

fn check(name: &str) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let input = std::fs::read_to_string(dir.join(format!("{name}.yaml"))).unwrap();
    let import = ferrolb_metallb::import(&input).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert!(
        import.errors.is_empty(),
        "{name}: the converted configuration does not validate:\n{}\n{}",
        import.errors.join("\n"),
        import.config
    );
    ferrolb_config::Config::from_yaml(&import.config).expect("validates");
    let report = format!("{}\n", import.report);
    for (ext, got) in [("ferrolb.yaml", &import.config), ("report.txt", &report)] {
        let path = dir.join(format!("{name}.{ext}"));
        if std::env::var_os("FERROLB_UPDATE_GOLDEN").is_some() {
            std::fs::write(&path, got).unwrap();
            continue;
        }
        let want = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (FERROLB_UPDATE_GOLDEN=1 writes it)",
                path.display()
            )
        });
        if got != &want {
            let line = got
                .lines()
                .zip(want.lines())
                .position(|(a, b)| a != b)
                .unwrap_or_else(|| got.lines().count().min(want.lines().count()));
            panic!(
                "{name}.{ext} differs from the reviewed file at line {}:\n  got:  {:?}\n  want: {:?}\n(FERROLB_UPDATE_GOLDEN=1 rewrites it; review the diff)",
                line + 1,
                got.lines().nth(line),
                want.lines().nth(line)
            );
        }
    }
}

#[test]
fn documented_layer2_legacy_configmap() {
    check("docs-layer2-legacy");
}

#[test]
fn documented_bgp_legacy_configmap() {
    check("docs-bgp-legacy");
}

#[test]
fn documented_layer2_and_pool_custom_resources() {
    check("docs-layer2-crds");
}

#[test]
fn documented_bgp_custom_resources() {
    check("docs-bgp-crds");
}

#[test]
fn a_large_realistic_cluster() {
    check("realistic-cluster");
}
