//! Replays the committed fuzz corpora (`fuzz/corpus/heartbeat`,
//! `fuzz/corpus/frame`) through the fuzz targets' properties on stable
//! Rust, so every input the fuzzer found interesting stays covered in CI.
//! Grow them with `cd crates/l2/fuzz && cargo +nightly fuzz run heartbeat`
//! (or `frame`), then `cargo +nightly fuzz cmin` (docs/l2.md).

#[path = "../fuzz/fuzz_targets/check.rs"]
#[allow(dead_code)]
mod check;

fn replay(target: &str, check: fn(&[u8]), at_least: usize) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("corpus directory is committed") {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let r = std::panic::catch_unwind(|| check(&data));
        assert!(r.is_ok(), "{} fails", path.display());
        n += 1;
    }
    assert!(n >= at_least, "only {n} {target} corpus files");
    eprintln!("{n} {target} corpus inputs replayed");
}

#[test]
fn heartbeat_corpus_replays_clean() {
    replay("heartbeat", check::heartbeat, 10);
}

#[test]
fn frame_corpus_replays_clean() {
    replay("frame", check::frame, 10);
}
