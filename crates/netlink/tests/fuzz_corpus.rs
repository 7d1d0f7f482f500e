//! Replays the committed fuzz corpus (`fuzz/corpus/replies`) through the
//! fuzz target's property on stable Rust, so every input the fuzzer found
//! interesting stays covered in CI. Grow it with
//! `cd crates/netlink/fuzz && cargo +nightly fuzz run replies`, then
//! `cargo +nightly fuzz cmin replies` (docs/architecture.md, "Fuzzing").

#[path = "../fuzz/fuzz_targets/check.rs"]
#[allow(dead_code)]
mod check;

#[test]
fn replies_corpus_replays_clean() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/replies");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("corpus directory is committed") {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let r = std::panic::catch_unwind(|| check::replies(&data));
        assert!(r.is_ok(), "{} fails", path.display());
        n += 1;
    }
    assert!(n >= 10, "only {n} replies corpus files");
    eprintln!("{n} replies corpus inputs replayed");
}
