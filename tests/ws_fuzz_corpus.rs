//! Replays the `ws_message` fuzz corpus (`fuzz/corpus/ws_message`) as an ordinary
//! test: every frame goes through the same check as the fuzz target, so whatever
//! the fuzzer once found stays fixed without cargo-fuzz.

#![allow(clippy::unwrap_used)]

use std::path::Path;

#[test]
fn ws_message_corpus_replays_cleanly() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/ws_message");
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let result = std::panic::catch_unwind(|| dagflow::api::fuzz_client_message(&data));
        assert!(result.is_ok(), "{} makes the check panic", path.display());
        count += 1;
    }
    assert!(count >= 10, "the corpus at {} is missing", dir.display());
}
