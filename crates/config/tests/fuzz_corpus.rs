//! Replays the committed fuzz corpus (`fuzz/corpus/parse`) through the fuzz
//! target's property on stable Rust, so every input the fuzzer found
//! interesting stays covered in CI. Grow it with
//! `cd crates/config/fuzz && cargo +nightly fuzz run parse`, then `cargo +nightly fuzz cmin parse`.

#[path = "../fuzz/fuzz_targets/check.rs"]
mod check;

#[test]
fn corpus_replays_clean() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/parse");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("corpus directory is committed") {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let r = std::panic::catch_unwind(|| check::check(&data));
        assert!(r.is_ok(), "{} fails", path.display());
        n += 1;
    }
    assert!(n >= 5, "only {n} corpus files");
    eprintln!("{n} corpus inputs replayed");
}
