//! Fuzz target: a WebSocket frame as a `/ws` session receives it, through what the
//! session does before touching the engine (decode, parse the target, build the
//! error reply). The check is `dagflow::api::fuzz_client_message`;
//! `tests/ws_fuzz_corpus.rs` runs the same function over `corpus/ws_message`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    dagflow::api::fuzz_client_message(data);
});
