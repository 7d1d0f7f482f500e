//! Helpers shared by ferrolb's end-to-end suites.
//!
//! The skip policy lives here. A test that needs something the machine may
//! lack (root, network namespaces, a router daemon) calls [`require`]; on a
//! developer's machine without it the test prints a loud SKIPPED line and
//! returns, but when [`NO_SKIP_ENV`] is set (CI sets it) the same test
//! fails instead, so CI can never pass by skipping.

/// The value after `--name` among a benchmark's arguments, or `default`.
pub fn bench_arg<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> T {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

pub mod backend;
pub mod client;
pub mod cluster;
pub mod deploy;
pub mod image;
pub mod kernel_lab;
pub mod l2lab;
pub mod metallb_fake;
pub mod netns;
pub mod pods;
pub mod product;
pub mod prometheus;
pub mod rogue;
pub mod routers;
pub mod speaker;

use std::io::Write;
use std::path::PathBuf;

/// Set to `1` to turn every skip into a failure.
pub const NO_SKIP_ENV: &str = "FERROLB_REQUIRE_ALL_TESTS";

/// When set, every skip is also appended to this file, one line each, so
/// the test runner can count and list them in its summary.
pub const SKIP_LOG_ENV: &str = "FERROLB_SKIP_LOG";

/// What a test needs from the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Running as root (namespaces, raw sockets, routes).
    Root,
    /// A program on PATH (a router daemon, `ip`, `arping`...), or an absolute path.
    Program(&'static str),
    /// The statically linked binaries the pod runner's images hold
    /// (`tests/run.sh` builds them; [`image::build_command`]).
    StaticImages,
    /// The kernel data path's BPF program built into the binaries (clang
    /// and libbpf-dev at build time; `tests/run.sh` installs them).
    BpfProgram,
}

/// Whether the machine offers `need`.
pub fn available(need: Need) -> bool {
    match need {
        Need::Root => is_root(),
        Need::Program(name) => find_program(name).is_some(),
        Need::BpfProgram => ferrolb_sys::bpf::built(),
        Need::StaticImages => image::static_binaries_built(),
    }
}

fn is_root() -> bool {
    // The effective uid is in /proc without libc; "Uid: real effective saved fs".
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// The full path of `name` on PATH, if it is there.
pub fn find_program(name: &str) -> Option<PathBuf> {
    // Daemons outside PATH (FRR's in /usr/lib/frr) are named by absolute path.
    if name.starts_with('/') {
        let p = PathBuf::from(name);
        return p.is_file().then_some(p);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(name))
            .find(|p| p.is_file())
    })
}

/// Prints a loud SKIPPED line and appends it to the skip log, if any.
fn skipped(why: &str) {
    eprintln!("\n*** SKIPPED {why} ***\n");
    if let Some(path) = std::env::var_os(SKIP_LOG_ENV) {
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = writeln!(f, "{why}");
        }
    }
}

/// The kubeconfig of a real cluster for the suites that need one
/// (`KUBECONFIG`). Without it they skip loudly and the skip is logged, but
/// never fail: CI machines have no cluster, so [`NO_SKIP_ENV`] does not
/// apply; the summary lists them as skipped, never as passed.
pub fn real_cluster(test: &str) -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("KUBECONFIG").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(path));
    }
    let why = format!("{test}: needs a real cluster (set KUBECONFIG)");
    skipped(&why);
    None
}

/// Returns true if the test may go on. Otherwise prints a loud skip (or,
/// under [`NO_SKIP_ENV`], panics) and the test must return at once.
#[must_use]
pub fn require(test: &str, needs: &[Need]) -> bool {
    let missing: Vec<String> = needs
        .iter()
        .filter(|n| !available(**n))
        .map(|n| match n {
            Need::Root => "root".to_string(),
            Need::Program(p) => format!("program `{p}`"),
            Need::BpfProgram => {
                "the kernel data path built in (install clang and libbpf-dev, then rebuild)"
                    .to_string()
            }
            Need::StaticImages => format!(
                "the static binaries for the Pod images ({})",
                image::build_command()
            ),
        })
        .collect();
    if missing.is_empty() {
        return true;
    }
    let why = format!("{test}: needs {}", missing.join(", "));
    if std::env::var(NO_SKIP_ENV).is_ok_and(|v| v == "1") {
        panic!(
            "{why}; {NO_SKIP_ENV}=1 forbids skipping (tests/run.sh installs what the suite needs)"
        );
    }
    skipped(&why);
    false
}

/// The path of a workspace binary (`ferrolb-speaker`, `ferrolb-echo`),
/// next to the running test executable in `target/<profile>/`.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test>-<hash> -> target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target directory");
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing; build it first with `cargo build --workspace --bins` (tests/run.sh does)",
        path.display()
    );
    path
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_programs_on_path() {
        assert!(find_program("sh").is_some(), "every test host has sh");
        assert!(find_program("definitely-not-a-program-ferrolb").is_none());
    }

    #[test]
    fn nothing_needed_never_skips() {
        assert!(require("empty", &[]));
    }
}
