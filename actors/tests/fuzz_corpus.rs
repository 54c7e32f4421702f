//! Replays the cargo-fuzz corpus of the `flow_spec` target (`fuzz/corpus/flow_spec`)
//! as an ordinary test, through the same check the fuzz target runs
//! ([`dagflow_actors::fuzzing::fuzz_check`]): no input may panic, and what
//! `validate` answers must be consistent (see that function for the list).
//!
//! Seed files say what they must give by their name: `valid_*` must validate,
//! `invalid_*` must be refused by `validate`, `malformed_*` must be refused by
//! `parse`. Files the fuzzer added (named by their hash) only have to pass the check.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use dagflow_actors::fuzzing::{fuzz_check, Outcome};

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/flow_spec")
}

fn corpus_files() -> Vec<PathBuf> {
    let dir = corpus_dir();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading the corpus {}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    files
}

#[test]
fn flow_spec_corpus_never_panics_and_validate_is_consistent() {
    let files = corpus_files();
    // A moved or emptied corpus must not pass quietly.
    assert!(
        files.len() >= 40,
        "only {} files in {}",
        files.len(),
        corpus_dir().display()
    );

    let mut failures = Vec::new();
    let (mut unparsed, mut invalid, mut valid) = (0, 0, 0);
    for path in &files {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let data = std::fs::read(path).unwrap();
        // Catch the panic so that one bad input names itself and the rest still run.
        let outcome = match std::panic::catch_unwind(|| fuzz_check(&data)) {
            Ok(outcome) => outcome,
            Err(_) => {
                failures.push(format!("{name}: panicked (message above)"));
                continue;
            }
        };
        match outcome {
            Outcome::Unparsed => unparsed += 1,
            Outcome::Invalid(_) => invalid += 1,
            Outcome::Valid(_) => valid += 1,
        }
        let expected_ok = if name.starts_with("valid_") {
            matches!(outcome, Outcome::Valid(_))
        } else if name.starts_with("invalid_") {
            matches!(outcome, Outcome::Invalid(_))
        } else if name.starts_with("malformed_") {
            outcome == Outcome::Unparsed
        } else {
            true
        };
        if !expected_ok {
            failures.push(format!("{name}: its name disagrees with {outcome:?}"));
        }
    }
    println!(
        "{} corpus files: {unparsed} unparsed, {invalid} invalid, {valid} valid",
        files.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(unparsed > 0 && invalid > 0 && valid > 0);
}
