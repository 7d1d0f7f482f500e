//! Replays the committed fuzz corpus (`fuzz/corpus/proxy`) through the
//! fuzz target's property on stable Rust, so every input the fuzzer found
//! interesting stays covered in CI. Grow it with
//! `cd crates/balance/fuzz && cargo +nightly fuzz run proxy`, then
//! `cargo +nightly fuzz cmin proxy` (docs/architecture.md, "Fuzzing").

#[path = "../fuzz/fuzz_targets/check.rs"]
#[allow(dead_code)]
mod check;

#[test]
fn proxy_corpus_replays_clean() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/proxy");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("corpus directory is committed") {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let r = std::panic::catch_unwind(|| check::proxy(&data));
        assert!(r.is_ok(), "{} fails", path.display());
        n += 1;
    }
    assert!(n >= 10, "only {n} proxy corpus files");
    eprintln!("{n} proxy corpus inputs replayed");
}
