//! Builds the data path's BPF program (bpf/forward.bpf.c) with clang.
//!
//! Without clang (or libbpf-dev's headers) the build still succeeds, with
//! an empty program and a warning: the speaker then runs every service on
//! the user-space forwarder and says why (README's first command must work
//! on a machine without them). `FERROLB_REQUIRE_BPF=1` (set by tests/run.sh
//! and the image build) turns that into a build error, so CI and shipped
//! binaries always carry the program.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR")).join("forward.bpf.o");
    println!("cargo:rerun-if-changed=bpf/forward.bpf.c");
    println!("cargo:rerun-if-changed=bpf/maps.h");
    println!("cargo:rerun-if-env-changed=FERROLB_REQUIRE_BPF");
    println!("cargo:rerun-if-env-changed=CLANG");
    let required = std::env::var("FERROLB_REQUIRE_BPF").is_ok_and(|v| v == "1");
    let clang = std::env::var("CLANG").unwrap_or_else(|_| "clang".into());
    // Debian keeps asm/ under the multiarch directory, which clang's BPF
    // target does not search.
    let multiarch = format!(
        "/usr/include/{}-linux-gnu",
        std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_else(|_| "x86_64".into())
    );
    let result = Command::new(&clang)
        .args(["-O2", "-g", "-target", "bpf", "-Wall", "-Werror"])
        .arg(format!("-I{multiarch}"))
        .args(["-c", "bpf/forward.bpf.c", "-o"])
        .arg(&out)
        .output();
    let why = match result {
        Ok(o) if o.status.success() => {
            println!("cargo:rustc-cfg=ferrolb_bpf");
            return;
        }
        Ok(o) => format!(
            "{clang} failed on bpf/forward.bpf.c:\n{}",
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => format!("{clang} not found ({e}); install clang and libbpf-dev"),
    };
    if required {
        panic!("FERROLB_REQUIRE_BPF=1 and the data path's BPF program cannot be built: {why}");
    }
    println!("cargo:warning=the kernel data path is not built into this binary: {why}");
    std::fs::write(&out, b"").expect("write the empty program");
}
