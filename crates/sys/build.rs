//! Builds the data path's BPF programs with clang: bpf/forward.bpf.c (the
//! load balancer's) and bpf/decap.bpf.c (a DSR backend's, for
//! `ferrolb-speaker prepare-backend`).
//!
//! Without clang (or libbpf-dev's headers) the build still succeeds, with
//! empty programs and a warning: the speaker then runs every service on
//! the user-space forwarder and says why (README's first command must work
//! on a machine without them). `FERROLB_REQUIRE_BPF=1` (set by tests/run.sh
//! and the image build) turns that into a build error, so CI and shipped
//! binaries always carry the program.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    for f in [
        "bpf/forward.bpf.c",
        "bpf/maps.h",
        "bpf/decap.bpf.c",
        "bpf/decap.h",
    ] {
        println!("cargo:rerun-if-changed={f}");
    }
    println!("cargo:rerun-if-env-changed=FERROLB_REQUIRE_BPF");
    println!("cargo:rerun-if-env-changed=CLANG");
    let required = std::env::var("FERROLB_REQUIRE_BPF").is_ok_and(|v| v == "1");
    println!("cargo:rustc-env=FERROLB_MAPS_LAYOUT={:016x}", layout());
    let mut failed = None;
    for name in ["forward", "decap"] {
        let out = out_dir.join(format!("{name}.bpf.o"));
        if let Err(why) = build(name, &out) {
            if required {
                panic!(
                    "FERROLB_REQUIRE_BPF=1 and the data path's BPF program cannot be built: {why}"
                );
            }
            std::fs::write(&out, b"").expect("write the empty program");
            failed.get_or_insert(why);
        }
    }
    match failed {
        None => println!("cargo:rustc-cfg=ferrolb_bpf"),
        Some(why) => {
            // Both or neither: a half-built pair would confuse `validate`.
            for name in ["forward", "decap"] {
                std::fs::write(out_dir.join(format!("{name}.bpf.o")), b"")
                    .expect("write the empty program");
            }
            println!("cargo:warning=the kernel data path is not built into this binary: {why}");
        }
    }
}

fn build(name: &str, out: &std::path::Path) -> Result<(), String> {
    let clang = std::env::var("CLANG").unwrap_or_else(|_| "clang".into());
    // Debian keeps asm/ under the multiarch directory, which clang's BPF
    // target does not search.
    let multiarch = format!(
        "/usr/include/{}-linux-gnu",
        std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_else(|_| "x86_64".into())
    );
    let src = format!("bpf/{name}.bpf.c");
    let result = Command::new(&clang)
        .args(["-O2", "-g", "-target", "bpf", "-Wall", "-Werror"])
        .arg(format!("-I{multiarch}"))
        .args(["-c", &src, "-o"])
        .arg(out)
        .output();
    match result {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(format!(
            "{clang} failed on {src}:\n{}",
            String::from_utf8_lossy(&o.stderr)
        )),
        Err(e) => Err(format!(
            "{clang} not found ({e}); install clang and libbpf-dev"
        )),
    }
}

/// A hash of everything that fixes the maps' layout: maps.h, and the map
/// definitions of forward.bpf.c (types, sizes, key and value types). Pinned
/// maps are reused only by a binary with the same hash, so a restarted
/// speaker never hands its program maps of another shape.
fn layout() -> u64 {
    let header = std::fs::read_to_string("bpf/maps.h").unwrap_or_default();
    let program = std::fs::read_to_string("bpf/forward.bpf.c").unwrap_or_default();
    let defs: String = program
        .lines()
        .filter(|l| l.contains("__uint(") || l.contains("__type(") || l.contains("SEC(\".maps\")"))
        .collect::<Vec<_>>()
        .join("\n");
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in header.bytes().chain(defs.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}
