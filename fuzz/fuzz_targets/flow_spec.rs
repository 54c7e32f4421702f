//! Fuzz target: a flow spec as `POST /flows` receives it, through `spec::parse` and
//! `spec::validate` with the default limits. The check, and what counts as a bug,
//! is in `dagflow_actors::fuzzing::fuzz_check`; `actors/tests/fuzz_corpus.rs` runs
//! the same function over `corpus/flow_spec`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = dagflow_actors::fuzzing::fuzz_check(data);
});
