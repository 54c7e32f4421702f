//! Tests of the flow state machine: hand-written scenarios first, then property
//! tests that drive random DAGs with a random scheduler, duplicate and stale
//! deliveries, failures, cancellations and crashes modelled as restores.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashSet};

use proptest::prelude::*;
use serde_json::{json, Value};

use super::*;
use crate::spec::{self, Backoff, BackoffKind, Limits};

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// A start time far from zero, so that a forgotten `now` shows up as a wrong delay.
const T0: u64 = 1_700_000_000_000;

fn flow_id() -> FlowId {
    FlowId::from_bytes([7; 16])
}

fn dag(value: Value) -> Arc<Dag> {
    let spec = spec::parse(&serde_json::to_vec(&value).unwrap()).unwrap();
    Arc::new(spec::validate(&spec, &Limits::default()).unwrap())
}

fn new_flow(value: Value) -> FlowState {
    FlowState::new(flow_id(), dag(value), T0)
}

/// A node by its wire name: a DAG node, or `{map}[{i}]` for a live map element.
fn idx(state: &FlowState, name: &str) -> NodeIdx {
    state
        .lookup(name)
        .unwrap_or_else(|| panic!("no node '{name}'"))
}

fn status_of(state: &FlowState, name: &str) -> NodeStatus {
    state.node(idx(state, name)).status
}

fn attempt_of(state: &FlowState, name: &str) -> u32 {
    state.node(idx(state, name)).attempt
}

/// Applies an input and checks the shape every effect list must have: nothing at
/// all, or `Persist` first (listing each node once, in order), then the jobs to
/// enqueue or cancel, then the events numbered on from the previous `seq` without
/// gaps, then at most one `Finished`, last.
fn apply(state: &mut FlowState, input: Input, now: u64) -> Vec<Effect> {
    let before_seq = state.seq();
    let before_status = state.status();
    let effects = state.apply(input, now);
    check_shape(&effects, before_seq, before_status, state);
    effects
}

fn check_shape(effects: &[Effect], before_seq: u64, before_status: FlowStatus, state: &FlowState) {
    if effects.is_empty() {
        assert_eq!(state.seq(), before_seq, "no effects, yet seq moved");
        return;
    }
    let Effect::Persist(changes) = &effects[0] else {
        panic!("first effect is not Persist: {effects:?}");
    };
    assert!(
        changes.nodes.windows(2).all(|w| w[0] < w[1]),
        "Persist lists a node twice or out of order: {:?}",
        changes.nodes
    );
    // 0: jobs, 1: events, 2: finished.
    let mut phase = 0;
    let mut seq = before_seq;
    let mut finished = 0;
    for effect in &effects[1..] {
        match effect {
            Effect::Persist(_) => panic!("second Persist: {effects:?}"),
            Effect::Enqueue(_) | Effect::CancelJob { .. } => {
                assert_eq!(phase, 0, "job effect after an event: {effects:?}")
            }
            Effect::Emit(event) => {
                assert!(phase <= 1, "event after Finished: {effects:?}");
                phase = 1;
                seq += 1;
                assert_eq!(event.seq, seq, "event seq is not the next one: {effects:?}");
            }
            Effect::Finished(status) => {
                phase = 2;
                finished += 1;
                assert_eq!(*status, state.status());
                assert!(status.is_terminal());
            }
        }
    }
    assert!(seq > before_seq, "effects without any event: {effects:?}");
    assert_eq!(state.seq(), seq, "header seq is not the last event's");
    assert!(finished <= 1);
    // Finished exactly when this input ended the flow: one that was running, or
    // one that a retry or re-run started again (and that may end at once).
    let restarted = effects.iter().any(|e| {
        matches!(
            e,
            Effect::Emit(Event {
                node: None,
                status: EventStatus::Flow(FlowStatus::Running),
                ..
            })
        )
    });
    assert_eq!(
        finished == 1,
        (!before_status.is_terminal() || restarted) && state.status().is_terminal(),
        "Finished does not match the status change: {effects:?}"
    );
}

fn persisted(effects: &[Effect]) -> Vec<NodeIdx> {
    match effects.first() {
        Some(Effect::Persist(changes)) => changes.nodes.clone(),
        _ => Vec::new(),
    }
}

fn enqueued(effects: &[Effect]) -> Vec<EnqueueJob> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Enqueue(job) => Some(*job),
            _ => None,
        })
        .collect()
}

fn enqueued_names(state: &FlowState, effects: &[Effect]) -> Vec<String> {
    enqueued(effects)
        .iter()
        .map(|j| state.dag().node(j.node).name.to_string())
        .collect()
}

fn cancelled_jobs(effects: &[Effect]) -> Vec<(NodeIdx, u32)> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::CancelJob { node, attempt } => Some((*node, *attempt)),
            _ => None,
        })
        .collect()
}

fn events(effects: &[Effect]) -> Vec<Event> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Emit(event) => Some(event.clone()),
            _ => None,
        })
        .collect()
}

fn finished(effects: &[Effect]) -> Option<FlowStatus> {
    effects.iter().find_map(|e| match e {
        Effect::Finished(status) => Some(*status),
        _ => None,
    })
}

fn started(state: &mut FlowState, name: &str, now: u64) -> Vec<Effect> {
    let node = idx(state, name);
    let attempt = state.node(node).attempt;
    apply(
        state,
        Input::JobStarted {
            node,
            attempt,
            worker: Some(Arc::from("test-worker")),
        },
        now,
    )
}

fn complete(state: &mut FlowState, name: &str, result: Value, now: u64) -> Vec<Effect> {
    let node = idx(state, name);
    let attempt = state.node(node).attempt;
    let result: Arc<str> = Arc::from(result.to_string());
    apply(
        state,
        Input::JobCompleted {
            node,
            attempt,
            result,
        },
        now,
    )
}

fn fail(state: &mut FlowState, name: &str, error: &str, retryable: bool, now: u64) -> Vec<Effect> {
    let node = idx(state, name);
    let attempt = state.node(node).attempt;
    apply(
        state,
        Input::JobFailed {
            node,
            attempt,
            error: error.to_owned(),
            retryable,
            cause: None,
        },
        now,
    )
}

fn input_of(state: &FlowState, name: &str) -> Value {
    serde_json::from_str(&state.job_input(idx(state, name))).unwrap()
}

/// Everything a client or the store can observe of a flow.
fn observable(state: &FlowState) -> (FlowHeader, Vec<NodeState>, usize, bool) {
    (
        state.header().clone(),
        state.nodes().to_vec(),
        state.remaining(),
        state.can_retry(),
    )
}

fn diamond() -> FlowState {
    new_flow(json!({ "name": "diamond", "nodes": [
        { "name": "a", "data": { "seed": 1 } },
        { "name": "b", "parents": ["a"] },
        { "name": "c", "parents": ["a"] },
        { "name": "d", "parents": ["b", "c"], "data": { "own": true } }
    ]}))
}

// ---------------------------------------------------------------------------
// Scenarios
// ---------------------------------------------------------------------------

#[test]
fn start_queues_the_roots_and_nothing_else() {
    let mut state = diamond();
    assert_eq!(state.seq(), 0);
    assert_eq!(state.status(), FlowStatus::Running);
    assert!(
        state.resume(T0).is_empty(),
        "nothing to resume before Start"
    );

    let a = idx(&state, "a");
    let effects = apply(&mut state, Input::Start, T0 + 1);
    assert_eq!(
        effects,
        vec![
            Effect::Persist(Changes { nodes: vec![a] }),
            Effect::Enqueue(EnqueueJob {
                node: a,
                attempt: 1,
                delay_ms: 0
            }),
            Effect::Emit(Event {
                seq: 1,
                ts: T0 + 1,
                node: None,
                status: EventStatus::Flow(FlowStatus::Running),
                attempt: 0,
                progress: None,
                error: None,

                reason: None,
            }),
            Effect::Emit(Event {
                seq: 2,
                ts: T0 + 1,
                node: Some(a),
                status: EventStatus::Node(NodeStatus::Queued),
                attempt: 1,
                progress: None,
                error: None,

                reason: None,
            }),
        ]
    );
    let node = state.node(a);
    assert_eq!(node.status, NodeStatus::Queued);
    assert_eq!(node.attempt, 1);
    assert_eq!(node.run_first_attempt, 1);
    assert_eq!(node.queued_at, Some(T0 + 1));
    assert_eq!(node.due_at, None);
    for name in ["b", "c", "d"] {
        assert_eq!(status_of(&state, name), NodeStatus::Pending);
        assert_eq!(attempt_of(&state, name), 0);
    }
    assert_eq!(state.header().updated_at, T0 + 1);
    assert_eq!(state.header().created_at, T0);

    // A second Start does nothing.
    let before = observable(&state);
    assert!(apply(&mut state, Input::Start, T0 + 2).is_empty());
    assert_eq!(observable(&state), before);
}

#[test]
fn diamond_runs_children_after_all_parents_with_their_results() {
    let mut state = diamond();
    apply(&mut state, Input::Start, T0);

    let effects = started(&mut state, "a", T0 + 1);
    assert_eq!(enqueued(&effects), []);
    assert_eq!(status_of(&state, "a"), NodeStatus::Active);
    assert_eq!(state.node(idx(&state, "a")).started_at, Some(T0 + 1));

    assert_eq!(
        input_of(&state, "a"),
        json!({ "data": { "seed": 1 }, "parents": {} })
    );
    let effects = complete(&mut state, "a", json!({ "image": "raw" }), T0 + 2);
    assert_eq!(enqueued_names(&state, &effects), ["b", "c"]);
    assert_eq!(finished(&effects), None);
    let statuses: Vec<_> = events(&effects).iter().map(|e| e.status).collect();
    assert_eq!(
        statuses,
        [
            EventStatus::Node(NodeStatus::Completed),
            EventStatus::Node(NodeStatus::Queued),
            EventStatus::Node(NodeStatus::Queued)
        ]
    );
    assert_eq!(
        persisted(&effects),
        [idx(&state, "a"), idx(&state, "b"), idx(&state, "c")]
    );
    assert_eq!(
        input_of(&state, "b"),
        json!({ "data": null, "parents": { "a": { "image": "raw" } } })
    );

    // One parent of d done: d still waits.
    let effects = complete(&mut state, "c", json!("c-result"), T0 + 3);
    assert_eq!(enqueued(&effects), []);
    assert_eq!(status_of(&state, "d"), NodeStatus::Pending);

    // The last parent done: d is queued, with both results in its input.
    let effects = complete(&mut state, "b", json!([1, 2, 3]), T0 + 4);
    assert_eq!(enqueued_names(&state, &effects), ["d"]);
    assert_eq!(
        input_of(&state, "d"),
        json!({ "data": { "own": true }, "parents": { "b": [1, 2, 3], "c": "c-result" } })
    );

    let effects = complete(&mut state, "d", json!(null), T0 + 5);
    assert_eq!(finished(&effects), Some(FlowStatus::Completed));
    assert_eq!(
        events(&effects).last().unwrap().status,
        EventStatus::Flow(FlowStatus::Completed)
    );
    assert_eq!(state.status(), FlowStatus::Completed);
    assert_eq!(state.header().finished_at, Some(T0 + 5));
    assert_eq!(state.remaining(), 0);
    assert!(!state.can_retry());
    for n in state.nodes() {
        assert_eq!(n.status, NodeStatus::Completed);
        assert_eq!(n.attempt, 1);
    }
    // A node completed without a JobStarted still gets a start time.
    assert_eq!(state.node(idx(&state, "d")).started_at, Some(T0 + 5));
    assert_eq!(state.node(idx(&state, "d")).finished_at, Some(T0 + 5));
    assert!(state.resume(T0 + 6).is_empty());
    // Nothing changes a completed flow.
    assert!(apply(&mut state, Input::Cancel, T0 + 6).is_empty());
    assert!(apply(&mut state, Input::Retry, T0 + 6).is_empty());
    assert!(apply(&mut state, Input::Start, T0 + 6).is_empty());
}

#[test]
fn duplicate_and_stale_inputs_change_nothing() {
    let mut state = new_flow(json!({ "nodes": [
        { "name": "a" },
        { "name": "r", "opts": { "attempts": 3 } },
        { "name": "child", "parents": ["a"] }
    ]}));
    apply(&mut state, Input::Start, T0);
    let a = idx(&state, "a");
    let r = idx(&state, "r");
    complete(&mut state, "a", json!("first"), T0 + 1);

    let before = observable(&state);
    let stale = [
        // The same completion again.
        Input::JobCompleted {
            node: a,
            attempt: 1,
            result: Arc::from("\"second\""),
        },
        Input::JobFailed {
            node: a,
            attempt: 1,
            error: "late".into(),
            retryable: false,
            cause: None,
        },
        Input::JobStarted {
            node: a,
            attempt: 1,
            worker: None,
        },
        Input::Progress {
            node: a,
            attempt: 1,
            progress: Arc::from("1"),
        },
        // Attempts that are not r's current one.
        Input::JobCompleted {
            node: r,
            attempt: 2,
            result: Arc::from("0"),
        },
        Input::JobCompleted {
            node: r,
            attempt: 0,
            result: Arc::from("0"),
        },
        Input::JobStarted {
            node: r,
            attempt: 2,
            worker: None,
        },
        // A node that does not exist.
        Input::JobCompleted {
            node: NodeIdx::from_usize(99),
            attempt: 1,
            result: Arc::from("0"),
        },
        Input::JobStarted {
            node: NodeIdx::from_usize(99),
            attempt: 1,
            worker: None,
        },
        Input::Progress {
            node: NodeIdx::from_usize(99),
            attempt: 1,
            progress: Arc::from("0"),
        },
        Input::JobFailed {
            node: NodeIdx::from_usize(99),
            attempt: 1,
            error: "x".into(),
            retryable: true,
            cause: None,
        },
        Input::Start,
        // Retry only applies to a failed or cancelled flow.
        Input::Retry,
    ];
    for input in stale {
        let effects = apply(&mut state, input.clone(), T0 + 2);
        assert!(effects.is_empty(), "{input:?} gave {effects:?}");
        assert_eq!(observable(&state), before, "{input:?} changed the state");
    }
    assert_eq!(state.node(a).result.as_deref(), Some("\"first\""));

    // r fails once; the late completion of its first attempt is then stale.
    fail(&mut state, "r", "flaky", true, T0 + 3);
    assert_eq!(state.node(r).attempt, 2);
    let before = observable(&state);
    for input in [
        Input::JobCompleted {
            node: r,
            attempt: 1,
            result: Arc::from("\"late\""),
        },
        Input::JobFailed {
            node: r,
            attempt: 1,
            error: "late".into(),
            retryable: true,
            cause: None,
        },
        Input::JobStarted {
            node: r,
            attempt: 1,
            worker: None,
        },
    ] {
        assert!(apply(&mut state, input, T0 + 4).is_empty());
        assert_eq!(observable(&state), before);
    }
    // Starting the current attempt twice is one transition.
    assert!(!started(&mut state, "r", T0 + 5).is_empty());
    let before = observable(&state);
    assert!(started(&mut state, "r", T0 + 6).is_empty());
    assert_eq!(observable(&state), before);
}

#[test]
fn retryable_failure_requeues_with_exponential_backoff() {
    let mut state = new_flow(json!({ "nodes": [
        { "name": "n", "opts": { "attempts": 3, "backoff": { "type": "exponential", "delayMs": 100 } } },
        { "name": "after", "parents": ["n"] }
    ]}));
    let n = idx(&state, "n");
    apply(&mut state, Input::Start, T0);
    started(&mut state, "n", T0 + 1);

    let effects = fail(&mut state, "n", "connection reset", true, T0 + 10);
    assert_eq!(
        effects,
        vec![
            Effect::Persist(Changes { nodes: vec![n] }),
            Effect::Enqueue(EnqueueJob {
                node: n,
                attempt: 2,
                delay_ms: 100
            }),
            Effect::Emit(Event {
                // 1: flow running, 2: queued, 3: active, 4: queued again.
                seq: 4,
                ts: T0 + 10,
                node: Some(n),
                status: EventStatus::Node(NodeStatus::Queued),
                attempt: 2,
                progress: None,
                error: Some("connection reset".into()),

                reason: None,
            }),
        ]
    );
    let node = state.node(n);
    assert_eq!(node.status, NodeStatus::Queued);
    assert_eq!(node.attempt, 2);
    assert_eq!(node.run_first_attempt, 1);
    assert_eq!(node.due_at, Some(T0 + 110));
    assert_eq!(node.started_at, None);
    assert_eq!(
        node.error.as_deref(),
        Some("connection reset"),
        "the error stays visible while retrying"
    );
    // The remaining backoff is what a restart would wait.
    assert_eq!(
        state.resume(T0 + 40),
        [EnqueueJob {
            node: n,
            attempt: 2,
            delay_ms: 70
        }]
    );
    assert_eq!(state.resume(T0 + 500)[0].delay_ms, 0);

    // Failing without having started also counts as an attempt.
    let effects = fail(&mut state, "n", "again", true, T0 + 200);
    assert_eq!(
        enqueued(&effects),
        [EnqueueJob {
            node: n,
            attempt: 3,
            delay_ms: 200
        }]
    );
    // The third try is the last: the node fails for good and its child is skipped.
    let effects = fail(&mut state, "n", "still broken", true, T0 + 500);
    assert_eq!(enqueued(&effects), []);
    assert_eq!(state.node(n).status, NodeStatus::Failed);
    assert_eq!(state.node(n).error.as_deref(), Some("still broken"));
    assert_eq!(state.node(n).due_at, None);
    assert_eq!(status_of(&state, "after"), NodeStatus::Skipped);
    assert_eq!(finished(&effects), Some(FlowStatus::Failed));
    let failed_event = events(&effects)
        .into_iter()
        .find(|e| e.node == Some(n))
        .unwrap();
    assert_eq!(failed_event.status, EventStatus::Node(NodeStatus::Failed));
    assert_eq!(failed_event.error.as_deref(), Some("still broken"));
    assert_eq!(failed_event.attempt, 3);
}

#[test]
fn fixed_backoff_and_no_backoff() {
    let mut state = new_flow(json!({ "nodes": [
        { "name": "fixed", "opts": { "attempts": 3, "backoff": { "type": "fixed", "delayMs": 250 } } },
        { "name": "none", "opts": { "attempts": 2 } }
    ]}));
    apply(&mut state, Input::Start, T0);
    for (attempt, now) in [(2, T0 + 1), (3, T0 + 2)] {
        let effects = fail(&mut state, "fixed", "x", true, now);
        let job = enqueued(&effects)[0];
        assert_eq!((job.attempt, job.delay_ms), (attempt, 250));
    }
    let effects = fail(&mut state, "none", "x", true, T0 + 3);
    let job = enqueued(&effects)[0];
    assert_eq!((job.attempt, job.delay_ms), (2, 0));
    assert_eq!(state.node(job.node).due_at, None);
}

#[test]
fn non_retryable_failure_fails_at_once() {
    let mut state = new_flow(json!({ "nodes": [
        { "name": "n", "opts": { "attempts": 5, "backoff": { "type": "fixed", "delayMs": 10 } } }
    ]}));
    apply(&mut state, Input::Start, T0);
    let effects = fail(&mut state, "n", "bad input", false, T0 + 1);
    assert_eq!(enqueued(&effects), []);
    assert_eq!(status_of(&state, "n"), NodeStatus::Failed);
    assert_eq!(attempt_of(&state, "n"), 1);
    assert_eq!(finished(&effects), Some(FlowStatus::Failed));
    assert_eq!(state.status(), FlowStatus::Failed);
}

#[test]
fn continue_policy_skips_descendants_only() {
    // a -> b -> c -> d <- e -> f, and g alone. b fails: c and d are skipped,
    // e, f and g still run, the flow ends failed once they are done.
    let mut state = new_flow(json!({ "nodes": [
        { "name": "a" },
        { "name": "b", "parents": ["a"] },
        { "name": "c", "parents": ["b"] },
        { "name": "d", "parents": ["c", "e"] },
        { "name": "e" },
        { "name": "f", "parents": ["e"] },
        { "name": "g" }
    ], "opts": { "onFailure": "continue" } }));
    let effects = apply(&mut state, Input::Start, T0);
    assert_eq!(enqueued_names(&state, &effects), ["a", "e", "g"]);
    complete(&mut state, "a", json!(1), T0 + 1);

    let effects = fail(&mut state, "b", "boom", false, T0 + 2);
    assert_eq!(enqueued(&effects), []);
    assert_eq!(cancelled_jobs(&effects), []);
    assert_eq!(finished(&effects), None);
    assert_eq!(status_of(&state, "b"), NodeStatus::Failed);
    assert_eq!(status_of(&state, "c"), NodeStatus::Skipped);
    assert_eq!(status_of(&state, "d"), NodeStatus::Skipped);
    for name in ["e", "g"] {
        assert_eq!(status_of(&state, name), NodeStatus::Queued);
    }
    assert_eq!(status_of(&state, "f"), NodeStatus::Pending);
    assert_eq!(state.status(), FlowStatus::Running);
    assert_eq!(
        persisted(&effects),
        [idx(&state, "b"), idx(&state, "c"), idx(&state, "d")]
    );
    let skipped: Vec<_> = events(&effects)
        .into_iter()
        .filter(|e| e.status == EventStatus::Node(NodeStatus::Skipped))
        .map(|e| e.node.unwrap())
        .collect();
    assert_eq!(skipped.len(), 2);

    // e completing does not queue the skipped d, but does queue f.
    let effects = complete(&mut state, "e", json!(2), T0 + 3);
    assert_eq!(enqueued_names(&state, &effects), ["f"]);
    assert!(finished(&complete(&mut state, "f", json!(3), T0 + 4)).is_none());
    let effects = complete(&mut state, "g", json!(4), T0 + 5);
    assert_eq!(finished(&effects), Some(FlowStatus::Failed));
    assert_eq!(state.status(), FlowStatus::Failed);
    assert!(state.can_retry());
}

#[test]
fn fail_fast_cancels_everything_not_finished() {
    let mut state = new_flow(json!({ "nodes": [
        { "name": "r1" },
        { "name": "r2" },
        { "name": "r3" },
        { "name": "done" },
        { "name": "x", "parents": ["r1", "r2"] }
    ], "opts": { "onFailure": "failFast" } }));
    apply(&mut state, Input::Start, T0);
    started(&mut state, "r2", T0 + 1);
    complete(&mut state, "done", json!("ok"), T0 + 2);

    let effects = fail(&mut state, "r1", "fatal", false, T0 + 3);
    let r2 = idx(&state, "r2");
    let r3 = idx(&state, "r3");
    assert_eq!(
        cancelled_jobs(&effects),
        [(r2, 1), (r3, 1)],
        "queued and active jobs are stopped"
    );
    assert_eq!(enqueued(&effects), []);
    assert_eq!(status_of(&state, "r1"), NodeStatus::Failed);
    for name in ["r2", "r3", "x"] {
        assert_eq!(status_of(&state, name), NodeStatus::Cancelled, "{name}");
        assert_eq!(state.node(idx(&state, name)).finished_at, Some(T0 + 3));
        // Each says why, on the node and on its event.
        assert_eq!(reason_of(&state, name), "node 'r1' failed (failFast)");
        assert_eq!(
            event_of(&state, &effects, name).reason.as_deref(),
            Some("node 'r1' failed (failFast)")
        );
    }
    assert_eq!(status_of(&state, "done"), NodeStatus::Completed);
    assert_eq!(finished(&effects), Some(FlowStatus::Failed));
    assert_eq!(state.status(), FlowStatus::Failed);
    assert_eq!(
        persisted(&effects),
        [idx(&state, "r1"), r2, r3, idx(&state, "x")]
    );

    // The stopped job's late completion changes nothing.
    let before = observable(&state);
    let late = Input::JobCompleted {
        node: r2,
        attempt: 1,
        result: Arc::from("1"),
    };
    assert!(apply(&mut state, late, T0 + 4).is_empty());
    assert_eq!(observable(&state), before);
}

#[test]
fn fail_fast_ignores_failures_with_continue_on_failure() {
    let mut state = new_flow(json!({ "nodes": [
        { "name": "soft", "continueOnFailure": true },
        { "name": "other" },
        { "name": "child", "parents": ["soft"] }
    ], "opts": { "onFailure": "failFast" } }));
    apply(&mut state, Input::Start, T0);
    let effects = fail(&mut state, "soft", "meh", false, T0 + 1);
    assert_eq!(cancelled_jobs(&effects), []);
    assert_eq!(enqueued_names(&state, &effects), ["child"]);
    assert_eq!(status_of(&state, "other"), NodeStatus::Queued);
}

#[test]
fn continue_on_failure_passes_the_error_to_children() {
    let mut state = new_flow(json!({ "nodes": [
        { "name": "flaky", "opts": { "continueOnFailure": true, "attempts": 2 } },
        { "name": "fine" },
        { "name": "child", "parents": ["flaky", "fine"], "data": 5 }
    ]}));
    apply(&mut state, Input::Start, T0);
    complete(&mut state, "fine", json!({ "ok": true }), T0 + 1);
    // A retryable failure with attempts left is still a retry.
    let effects = fail(&mut state, "flaky", "first", true, T0 + 2);
    assert_eq!(enqueued_names(&state, &effects), ["flaky"]);

    let effects = fail(&mut state, "flaky", "disk \"full\"", true, T0 + 3);
    assert_eq!(status_of(&state, "flaky"), NodeStatus::Failed);
    assert_eq!(enqueued_names(&state, &effects), ["child"]);
    assert_eq!(
        input_of(&state, "child"),
        json!({ "data": 5, "parents": { "flaky": { "error": "disk \"full\"" }, "fine": { "ok": true } } })
    );
    let effects = complete(&mut state, "child", json!("made do"), T0 + 4);
    assert_eq!(finished(&effects), Some(FlowStatus::Completed));
    assert_eq!(state.status(), FlowStatus::Completed);
    assert_eq!(status_of(&state, "flaky"), NodeStatus::Failed);
    assert!(!state.can_retry());
}

#[test]
fn cancel_stops_running_and_queued_jobs_and_keeps_completed_ones() {
    let mut state = new_flow(json!({ "nodes": [
        { "name": "done" },
        { "name": "running" },
        { "name": "waiting" },
        { "name": "later", "parents": ["running"] }
    ]}));
    // Cancel before Start does nothing: the flow has not begun.
    assert!(apply(&mut state, Input::Cancel, T0).is_empty());
    apply(&mut state, Input::Start, T0);
    complete(&mut state, "done", json!(1), T0 + 1);
    started(&mut state, "running", T0 + 2);

    let effects = apply(&mut state, Input::Cancel, T0 + 3);
    assert_eq!(
        cancelled_jobs(&effects),
        [(idx(&state, "running"), 1), (idx(&state, "waiting"), 1)]
    );
    assert_eq!(finished(&effects), Some(FlowStatus::Cancelled));
    assert_eq!(
        events(&effects).last().unwrap().status,
        EventStatus::Flow(FlowStatus::Cancelled)
    );
    assert_eq!(state.status(), FlowStatus::Cancelled);
    assert_eq!(status_of(&state, "done"), NodeStatus::Completed);
    for name in ["running", "waiting", "later"] {
        assert_eq!(status_of(&state, name), NodeStatus::Cancelled);
    }
    assert_eq!(state.remaining(), 0);
    assert!(state.resume(T0 + 4).is_empty());
    assert!(state.can_retry());

    // A second cancel, and completions that arrive after it, change nothing.
    let before = observable(&state);
    assert!(apply(&mut state, Input::Cancel, T0 + 4).is_empty());
    assert!(complete(&mut state, "running", json!(2), T0 + 5).is_empty());
    assert_eq!(observable(&state), before);
}

#[test]
fn retry_reruns_failed_skipped_and_cancelled_nodes_with_fresh_attempts() {
    let mut state = new_flow(json!({ "nodes": [
        { "name": "ok" },
        { "name": "bad", "parents": ["ok"], "opts": { "attempts": 2 } },
        { "name": "below", "parents": ["bad"] },
        { "name": "side" }
    ]}));
    apply(&mut state, Input::Start, T0);
    complete(&mut state, "ok", json!("kept"), T0 + 1);
    fail(&mut state, "bad", "one", true, T0 + 2);
    let effects = fail(&mut state, "bad", "two", true, T0 + 3);
    assert_eq!(finished(&effects), None, "side is still running");
    let effects = complete(&mut state, "side", json!("s"), T0 + 4);
    assert_eq!(finished(&effects), Some(FlowStatus::Failed));
    assert_eq!(attempt_of(&state, "bad"), 2);
    assert_eq!(status_of(&state, "below"), NodeStatus::Skipped);

    let effects = apply(&mut state, Input::Retry, T0 + 10);
    let bad = idx(&state, "bad");
    let below = idx(&state, "below");
    // Only `bad` can run: its parent's result is kept; `below` waits for it.
    assert_eq!(
        enqueued(&effects),
        [EnqueueJob {
            node: bad,
            attempt: 3,
            delay_ms: 0
        }]
    );
    assert_eq!(persisted(&effects), [bad, below]);
    // The flow runs again, `bad` is queued and `below` is told to be pending again.
    let told: Vec<_> = events(&effects)
        .iter()
        .map(|e| (e.node, e.status))
        .collect();
    assert_eq!(
        told,
        [
            (None, EventStatus::Flow(FlowStatus::Running)),
            (Some(bad), EventStatus::Node(NodeStatus::Queued)),
            (Some(below), EventStatus::Node(NodeStatus::Pending)),
        ]
    );
    assert_eq!(
        events(&effects)[0].status,
        EventStatus::Flow(FlowStatus::Running)
    );
    assert_eq!(state.status(), FlowStatus::Running);
    assert_eq!(state.header().finished_at, None);
    assert_eq!(state.node(bad).run_first_attempt, 3);
    assert_eq!(state.node(bad).error, None);
    assert_eq!(status_of(&state, "below"), NodeStatus::Pending);
    assert_eq!(status_of(&state, "ok"), NodeStatus::Completed);
    assert_eq!(state.node(idx(&state, "ok")).attempt, 1);
    assert_eq!(status_of(&state, "side"), NodeStatus::Completed);
    assert!(!state.can_retry());
    // A retry while running does nothing.
    assert!(apply(&mut state, Input::Retry, T0 + 11).is_empty());

    // The new run has its own budget of attempts: one retry is allowed again.
    let effects = fail(&mut state, "bad", "three", true, T0 + 12);
    assert_eq!(
        enqueued(&effects),
        [EnqueueJob {
            node: bad,
            attempt: 4,
            delay_ms: 0
        }]
    );
    // The stale attempts of the earlier run are ignored.
    for attempt in [1, 2, 3] {
        let late = Input::JobCompleted {
            node: bad,
            attempt,
            result: Arc::from("0"),
        };
        assert!(apply(&mut state, late, T0 + 13).is_empty());
    }
    let effects = complete(&mut state, "bad", json!("fixed"), T0 + 14);
    assert_eq!(enqueued_names(&state, &effects), ["below"]);
    assert_eq!(
        input_of(&state, "below"),
        json!({ "data": null, "parents": { "bad": "fixed" } })
    );
    assert_eq!(attempt_of(&state, "below"), 1);
    let effects = complete(&mut state, "below", json!(0), T0 + 15);
    assert_eq!(finished(&effects), Some(FlowStatus::Completed));
    assert!(state
        .nodes()
        .iter()
        .all(|n| n.status == NodeStatus::Completed));
}

#[test]
fn retry_after_cancel_reruns_the_cancelled_nodes() {
    let mut state = new_flow(json!({ "nodes": [
        { "name": "a" },
        { "name": "b", "parents": ["a"] }
    ]}));
    apply(&mut state, Input::Start, T0);
    started(&mut state, "a", T0 + 1);
    apply(&mut state, Input::Cancel, T0 + 2);
    let effects = apply(&mut state, Input::Retry, T0 + 3);
    assert_eq!(
        enqueued(&effects),
        [EnqueueJob {
            node: idx(&state, "a"),
            attempt: 2,
            delay_ms: 0
        }]
    );
    complete(&mut state, "a", json!(1), T0 + 4);
    let effects = complete(&mut state, "b", json!(2), T0 + 5);
    assert_eq!(finished(&effects), Some(FlowStatus::Completed));
}

#[test]
fn abort_fails_the_flow_with_a_reason_and_can_be_retried() {
    let mut state = diamond();
    apply(&mut state, Input::Start, T0);
    started(&mut state, "a", T0 + 1);
    let effects = apply(
        &mut state,
        Input::Abort {
            reason: "actor kept crashing".into(),
        },
        T0 + 2,
    );
    assert_eq!(cancelled_jobs(&effects), [(idx(&state, "a"), 1)]);
    assert_eq!(finished(&effects), Some(FlowStatus::Failed));
    let last = events(&effects).pop().unwrap();
    assert_eq!(last.status, EventStatus::Flow(FlowStatus::Failed));
    assert_eq!(last.error.as_deref(), Some("actor kept crashing"));
    assert!(state
        .nodes()
        .iter()
        .all(|n| n.status == NodeStatus::Cancelled));
    assert!(apply(
        &mut state,
        Input::Abort {
            reason: "again".into()
        },
        T0 + 3
    )
    .is_empty());

    let effects = apply(&mut state, Input::Retry, T0 + 4);
    assert_eq!(enqueued_names(&state, &effects), ["a"]);
}

#[test]
fn progress_marks_the_node_active_and_is_an_event() {
    let mut state = new_flow(
        json!({ "nodes": [{ "name": "n", "opts": { "attempts": 2, "backoff": { "type": "fixed", "delayMs": 50 } } }] }),
    );
    apply(&mut state, Input::Start, T0);
    let n = idx(&state, "n");
    fail(&mut state, "n", "x", true, T0 + 1);
    assert_eq!(state.node(n).due_at, Some(T0 + 51));

    // Progress from a worker that never reported the start still means it runs.
    let progress = Input::Progress {
        node: n,
        attempt: 2,
        progress: Arc::from("{\"pct\":10}"),
    };
    let effects = apply(&mut state, progress, T0 + 60);
    let event = events(&effects).pop().unwrap();
    assert_eq!(event.status, EventStatus::Node(NodeStatus::Active));
    assert_eq!(event.attempt, 2);
    assert_eq!(event.progress.as_deref(), Some("{\"pct\":10}"));
    let node = state.node(n);
    assert_eq!(node.status, NodeStatus::Active);
    assert_eq!(node.started_at, Some(T0 + 60));
    assert_eq!(node.due_at, None);
    assert_eq!(node.progress.as_deref(), Some("{\"pct\":10}"));
    // The start arriving after the progress changes nothing.
    assert!(started(&mut state, "n", T0 + 61).is_empty());
}

#[test]
fn job_input_escapes_names_and_keeps_data_verbatim() {
    let mut state = new_flow(json!({ "nodes": [
        { "name": "we\"ird\\name" },
        { "name": "child", "parents": ["we\"ird\\name"], "data": { "nested": [1, { "x": "ünï" }] } }
    ]}));
    apply(&mut state, Input::Start, T0);
    complete(
        &mut state,
        "we\"ird\\name",
        json!({ "s": "line\nbreak" }),
        T0 + 1,
    );
    assert_eq!(
        input_of(&state, "child"),
        json!({
            "data": { "nested": [1, { "x": "ünï" }] },
            "parents": { "we\"ird\\name": { "s": "line\nbreak" } }
        })
    );
}

#[test]
fn every_event_is_numbered_without_gaps() {
    let mut state = new_flow(json!({ "nodes": [
        { "name": "a", "opts": { "attempts": 2 } },
        { "name": "b", "parents": ["a"] },
        { "name": "c", "parents": ["a"] }
    ]}));
    let mut all = Vec::new();
    all.extend(events(&apply(&mut state, Input::Start, T0)));
    all.extend(events(&started(&mut state, "a", T0)));
    all.extend(events(&fail(&mut state, "a", "x", true, T0)));
    all.extend(events(&complete(&mut state, "a", json!(1), T0)));
    let c = idx(&state, "c");
    all.extend(events(&apply(
        &mut state,
        Input::Progress {
            node: c,
            attempt: 1,
            progress: Arc::from("0.5"),
        },
        T0,
    )));
    all.extend(events(&complete(&mut state, "b", json!(2), T0)));
    all.extend(events(&complete(&mut state, "c", json!(3), T0)));
    let seqs: Vec<u64> = all.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=all.len() as u64).collect::<Vec<_>>());
    assert_eq!(state.seq(), all.len() as u64);
    assert_eq!(
        all.last().unwrap().status,
        EventStatus::Flow(FlowStatus::Completed)
    );
}

#[test]
fn restore_then_resume_returns_the_outstanding_jobs() {
    let mut state = new_flow(json!({ "nodes": [
        { "name": "done" },
        { "name": "active" },
        { "name": "delayed", "opts": { "attempts": 2, "backoff": { "type": "fixed", "delayMs": 1000 } } },
        { "name": "fresh" },
        { "name": "pending", "parents": ["done", "active"] }
    ]}));
    apply(&mut state, Input::Start, T0);
    complete(&mut state, "done", json!("d"), T0 + 1);
    started(&mut state, "active", T0 + 2);
    fail(&mut state, "delayed", "x", true, T0 + 3);

    // A crash: only the persisted records survive.
    let restored = FlowState::restore(
        state.id(),
        Arc::clone(state.dag()),
        state.header().clone(),
        state.nodes().to_vec(),
    );
    assert_eq!(observable(&restored), observable(&state));
    assert_eq!(restored.id(), flow_id());
    let expected = vec![
        EnqueueJob {
            node: idx(&state, "active"),
            attempt: 1,
            delay_ms: 0,
        },
        EnqueueJob {
            node: idx(&state, "delayed"),
            attempt: 2,
            delay_ms: 600,
        },
        EnqueueJob {
            node: idx(&state, "fresh"),
            attempt: 1,
            delay_ms: 0,
        },
    ];
    assert_eq!(restored.resume(T0 + 403), expected);
    assert_eq!(state.resume(T0 + 403), expected);

    // The restored flow carries on exactly like the original.
    let mut original = state;
    let mut restored = restored;
    for (name, value) in [
        ("active", json!("a")),
        ("delayed", json!(1)),
        ("fresh", json!(2)),
    ] {
        let e1 = complete(&mut original, name, value.clone(), T0 + 2000);
        let e2 = complete(&mut restored, name, value, T0 + 2000);
        assert_eq!(e1, e2);
    }
    assert_eq!(status_of(&restored, "pending"), NodeStatus::Queued);
    assert_eq!(
        input_of(&restored, "pending"),
        json!({ "data": null, "parents": { "done": "d", "active": "a" } })
    );
    let effects = complete(&mut restored, "pending", json!(0), T0 + 3000);
    assert_eq!(finished(&effects), Some(FlowStatus::Completed));
}

#[test]
fn restore_with_missing_node_records_treats_them_as_fresh() {
    let state = diamond();
    let restored = FlowState::restore(
        flow_id(),
        Arc::clone(state.dag()),
        state.header().clone(),
        Vec::new(),
    );
    assert_eq!(restored.nodes().len(), 4);
    assert_eq!(observable(&restored), observable(&state));
}

#[test]
fn failing_the_root_of_a_long_chain_skips_it_iteratively() {
    let n = spec::DEFAULT_MAX_NODES;
    let nodes: Vec<Value> = (0..n)
        .map(|i| {
            if i == 0 {
                json!({ "name": "n0" })
            } else {
                json!({ "name": format!("n{i}"), "parents": [format!("n{}", i - 1)] })
            }
        })
        .collect();
    let mut state = new_flow(json!({ "nodes": nodes }));
    apply(&mut state, Input::Start, T0);
    let effects = std::thread::Builder::new()
        .stack_size(256 * 1024)
        .spawn(move || {
            let effects = fail(&mut state, "n0", "x", false, T0 + 1);
            (effects, state)
        })
        .unwrap()
        .join()
        .unwrap();
    let (effects, state) = effects;
    assert_eq!(persisted(&effects).len(), n, "each node persisted once");
    assert_eq!(events(&effects).len(), n + 1);
    assert_eq!(finished(&effects), Some(FlowStatus::Failed));
    assert_eq!(
        state
            .nodes()
            .iter()
            .filter(|n| n.status == NodeStatus::Skipped)
            .count(),
        n - 1
    );
}

// ---------------------------------------------------------------------------
// Property tests
// ---------------------------------------------------------------------------

/// One node of a generated DAG.
#[derive(Debug, Clone)]
struct GenNode {
    /// Picks among the lower-indexed nodes; duplicates collapse.
    parents: Vec<prop::sample::Index>,
    attempts: u32,
    continue_on_failure: bool,
    /// Whether the node's incoming edges are written on its parents' `children`
    /// lists instead of its own `parents` list, to exercise both spellings.
    via_children: bool,
    /// `None`, or (exponential?, delay).
    backoff: Option<(bool, u64)>,
}

/// A generated flow and how to drive it.
#[derive(Debug, Clone)]
struct GenFlow {
    nodes: Vec<GenNode>,
    fail_fast: bool,
    /// Without it the scheduler never fails a job, cancels, aborts or retries.
    inject_failures: bool,
    /// Chance, in percent, that an answered job fails, when failures are injected.
    fail_percent: u64,
    seed: u64,
}

fn gen_node() -> impl Strategy<Value = GenNode> {
    (
        prop::collection::vec(any::<prop::sample::Index>(), 0..4),
        1u32..=3,
        prop::bool::weighted(0.15),
        prop::bool::weighted(0.3),
        prop::option::weighted(0.3, (any::<bool>(), 1u64..1000)),
    )
        .prop_map(
            |(parents, attempts, continue_on_failure, via_children, backoff)| GenNode {
                parents,
                attempts,
                continue_on_failure,
                via_children,
                backoff,
            },
        )
}

fn gen_flow() -> impl Strategy<Value = GenFlow> {
    (
        prop::collection::vec(gen_node(), 1..=200),
        any::<bool>(),
        prop::bool::weighted(0.7),
        1u64..25,
        any::<u64>(),
    )
        .prop_map(
            |(nodes, fail_fast, inject_failures, fail_percent, seed)| GenFlow {
                nodes,
                fail_fast,
                inject_failures,
                fail_percent,
                seed,
            },
        )
}

fn node_name(i: usize) -> String {
    format!("n{i}")
}

impl GenFlow {
    /// Parents of each node, as indices: edges go only from lower to higher index.
    fn parent_sets(&self) -> Vec<Vec<usize>> {
        self.nodes
            .iter()
            .enumerate()
            .map(|(i, n)| {
                if i == 0 {
                    return Vec::new();
                }
                let mut ps: Vec<usize> = n.parents.iter().map(|p| p.index(i)).collect();
                ps.sort_unstable();
                ps.dedup();
                ps
            })
            .collect()
    }

    /// The spec as a client would write it. A node that lists its parents lists
    /// all of them; a node that lists children lists all of them (a written list
    /// is complete), so both spellings agree.
    fn spec_json(&self) -> Value {
        let parents = self.parent_sets();
        let mut children = vec![Vec::new(); self.nodes.len()];
        for (c, ps) in parents.iter().enumerate() {
            for &p in ps {
                children[p].push(c);
            }
        }
        let nodes: Vec<Value> = self
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let mut node = json!({
                    "name": node_name(i),
                    "data": { "i": i },
                    "opts": { "attempts": n.attempts, "continueOnFailure": n.continue_on_failure },
                });
                if !n.via_children && !parents[i].is_empty() {
                    node["parents"] = parents[i].iter().map(|&p| node_name(p)).collect();
                }
                if children[i].iter().any(|&c| self.nodes[c].via_children) {
                    node["children"] = children[i].iter().map(|&c| node_name(c)).collect();
                }
                if let Some((exponential, delay_ms)) = n.backoff {
                    node["opts"]["backoff"] = json!({
                        "type": if exponential { "exponential" } else { "fixed" },
                        "delayMs": delay_ms,
                    });
                }
                node
            })
            .collect();
        json!({
            "name": "generated",
            "nodes": nodes,
            "opts": { "onFailure": if self.fail_fast { "failFast" } else { "continue" } },
        })
    }
}

/// splitmix64: the scheduler's choices, reproducible from the generated seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// A job the scheduler still owes an answer for, as the queue would hold it.
#[derive(Debug, Clone, Copy)]
struct Outstanding {
    /// When the job becomes due (enqueue time plus backoff).
    due: u64,
    /// A worker reported it started (or reported progress).
    started: bool,
}

/// Drives one flow, checking every property after every input.
struct Sim {
    dag: Arc<Dag>,
    /// The flow under test; replaced by a restored copy at each simulated crash.
    state: FlowState,
    /// The same inputs applied to a flow that never crashes: both must agree on
    /// every effect, which checks that `restore` rebuilds all derived state.
    shadow: FlowState,
    rng: Rng,
    now: u64,
    /// Every input with its time, for the replay check at the end.
    log: Vec<(Input, u64)>,
    /// Every effect, in order, for the replay check at the end.
    all_effects: Vec<Effect>,
    /// Jobs enqueued and neither answered nor cancelled, by (node, attempt).
    outstanding: BTreeMap<(usize, u32), Outstanding>,
    /// Every (node, attempt) ever enqueued.
    enqueued: HashSet<(usize, u32)>,
    /// Job inputs that were accepted, for duplicate deliveries.
    accepted: Vec<Input>,
    /// The result delivered in the accepted completion of each node.
    results: Vec<Option<Arc<str>>>,
    /// The last seq seen in an event.
    last_seq: u64,
    /// `Finished` effects in the current run (since the last Start or Retry).
    finished_this_run: u32,
    runs: u32,
}

impl Sim {
    fn new(dag: Arc<Dag>, seed: u64) -> Self {
        let state = FlowState::new(flow_id(), Arc::clone(&dag), T0);
        Sim {
            shadow: state.clone(),
            results: vec![None; dag.len()],
            dag,
            state,
            rng: Rng(seed),
            now: T0,
            log: Vec::new(),
            all_effects: Vec::new(),
            outstanding: BTreeMap::new(),
            enqueued: HashSet::new(),
            accepted: Vec::new(),
            last_seq: 0,
            finished_this_run: 0,
            runs: 0,
        }
    }

    fn apply(&mut self, input: Input) -> Vec<Effect> {
        let before = self.state.clone();
        let effects = self.state.apply(input.clone(), self.now);
        if std::env::var_os("DAGFLOW_DEBUG").is_some() {
            eprintln!("@{} {input:?}\n  -> {effects:?}", self.now);
        }
        let shadow_effects = self.shadow.apply(input.clone(), self.now);
        assert_eq!(
            effects, shadow_effects,
            "a restored flow behaves differently from one never restored"
        );
        self.log.push((input.clone(), self.now));
        self.all_effects.extend(effects.iter().cloned());
        self.check(&before, &input, &effects);
        effects
    }

    /// Checks one apply against the model and the invariants.
    fn check(&mut self, before: &FlowState, input: &Input, effects: &[Effect]) {
        check_shape(effects, before.seq(), before.status(), &self.state);
        if effects.is_empty() {
            assert_eq!(
                self.state.header(),
                before.header(),
                "{input:?}: no effects, yet the header changed"
            );
            assert_eq!(
                self.state.nodes(),
                before.nodes(),
                "{input:?}: no effects, yet a node changed"
            );
        } else {
            // Durability: every node whose record changed is in Persist.
            let persisted = persisted(effects);
            for i in 0..self.state.nodes().len() {
                if self.state.nodes()[i] != before.nodes()[i] {
                    assert!(
                        persisted.contains(&NodeIdx::from_usize(i)),
                        "{input:?}: node {i} changed but is not persisted"
                    );
                }
            }
        }

        // Answers and starts take the job off, or mark it, in the model queue.
        if !effects.is_empty() {
            match input {
                Input::JobCompleted {
                    node,
                    attempt,
                    result,
                } => {
                    let i = node.as_usize();
                    assert!(self.outstanding.remove(&(i, *attempt)).is_some());
                    self.results[i] = Some(Arc::clone(result));
                    self.accepted.push(input.clone());
                }
                Input::JobFailed { node, attempt, .. }
                | Input::JobCancelled { node, attempt, .. } => {
                    assert!(self
                        .outstanding
                        .remove(&(node.as_usize(), *attempt))
                        .is_some());
                    self.accepted.push(input.clone());
                }
                Input::JobStarted { node, attempt, .. } | Input::Progress { node, attempt, .. } => {
                    self.outstanding
                        .get_mut(&(node.as_usize(), *attempt))
                        .expect("start of a job that is not outstanding")
                        .started = true;
                    if matches!(input, Input::JobStarted { .. }) {
                        self.accepted.push(input.clone());
                    }
                }
                Input::Start | Input::Retry => {
                    if matches!(input, Input::Retry) {
                        assert_eq!(
                            self.finished_this_run, 1,
                            "a run ended without exactly one Finished"
                        );
                    }
                    self.finished_this_run = 0;
                    self.runs += 1;
                }
                Input::Cancel | Input::Abort { .. } => {}
                Input::Signal { .. } | Input::Tick | Input::Rerun { .. } => {}
            }
        }

        let mut last_event_status: BTreeMap<usize, NodeStatus> = BTreeMap::new();
        for effect in effects {
            match effect {
                Effect::Persist(_) => {}
                Effect::Enqueue(job) => self.check_enqueue(job),
                Effect::CancelJob { node, attempt } => {
                    let i = node.as_usize();
                    assert!(
                        self.outstanding.remove(&(i, *attempt)).is_some(),
                        "CancelJob for a job that is not outstanding: ({i}, {attempt})"
                    );
                    assert_eq!(self.state.nodes()[i].status, NodeStatus::Cancelled);
                }
                Effect::Emit(event) => {
                    assert_eq!(event.seq, self.last_seq + 1, "a gap in seq");
                    self.last_seq = event.seq;
                    assert_eq!(event.ts, self.now);
                    if let (Some(node), EventStatus::Node(status)) = (event.node, event.status) {
                        last_event_status.insert(node.as_usize(), status);
                    }
                }
                Effect::Finished(status) => {
                    self.finished_this_run += 1;
                    assert_eq!(self.finished_this_run, 1, "Finished twice in one run");
                    assert_eq!(*status, self.state.status());
                }
            }
        }
        assert_eq!(self.state.seq(), self.last_seq);
        // Every status change is told: a node whose status changed has an event,
        // and its last event in an apply tells its status after the apply.
        for (i, (old, new)) in before.nodes().iter().zip(self.state.nodes()).enumerate() {
            if old.status != new.status {
                assert!(
                    last_event_status.contains_key(&i),
                    "{input:?}: node {i} went from {:?} to {:?} without an event",
                    old.status,
                    new.status
                );
            }
        }
        for (i, status) in last_event_status {
            assert_eq!(
                self.state.nodes()[i].status,
                status,
                "node {i}: last event is stale"
            );
        }
        self.check_invariants();
    }

    fn check_enqueue(&mut self, job: &EnqueueJob) {
        let state = &self.state;
        let i = job.node.as_usize();
        assert!(
            self.enqueued.insert((i, job.attempt)),
            "({i}, {}) enqueued twice",
            job.attempt
        );
        let node = &state.nodes()[i];
        assert_eq!(node.status, NodeStatus::Queued);
        assert_eq!(node.attempt, job.attempt);
        // Every parent is done: completed, or failed with continueOnFailure.
        let dag_node = self.dag.node(job.node);
        for &p in &dag_node.parents {
            let parent = &state.nodes()[p.as_usize()];
            let cof = self.dag.node(p).opts.continue_on_failure;
            assert!(
                parent.status == NodeStatus::Completed
                    || (parent.status == NodeStatus::Failed && cof),
                "node {i} enqueued while parent {} is {:?}",
                p.as_usize(),
                parent.status
            );
        }
        // The first try of a run goes at once; a retry waits out its backoff.
        let retry = job.attempt - node.run_first_attempt;
        let expected_delay = if retry == 0 {
            0
        } else {
            dag_node.opts.backoff.map_or(0, |b| b.delay_for(retry))
        };
        assert_eq!(
            job.delay_ms, expected_delay,
            "node {i} attempt {}",
            job.attempt
        );
        // The input holds the node's data and every parent's result.
        let input: Value = serde_json::from_str(&state.job_input(job.node)).unwrap();
        assert_eq!(input["data"], json!({ "i": i }));
        let parents = input["parents"].as_object().unwrap();
        assert_eq!(parents.len(), dag_node.parents.len());
        for &p in &dag_node.parents {
            let parent = &state.nodes()[p.as_usize()];
            let slot = &parents[&*self.dag.node(p).name];
            if parent.status == NodeStatus::Completed {
                let delivered = self.results[p.as_usize()].as_deref().unwrap();
                assert_eq!(slot, &serde_json::from_str::<Value>(delivered).unwrap());
            } else {
                assert_eq!(slot, &json!({ "error": parent.error.as_deref().unwrap() }));
            }
        }
        self.outstanding.insert(
            (i, job.attempt),
            Outstanding {
                due: self.now + job.delay_ms,
                started: false,
            },
        );
    }

    fn check_invariants(&self) {
        attempt_history::check_history(&self.state, &self.accepted);
        let state = &self.state;
        let all_terminal = state.nodes().iter().all(|n| n.status.is_terminal());
        assert_eq!(
            state.status().is_terminal(),
            all_terminal,
            "flow {:?} while all nodes terminal = {all_terminal}",
            state.status()
        );
        assert_eq!(
            state.remaining(),
            state
                .nodes()
                .iter()
                .filter(|n| !n.status.is_terminal())
                .count()
        );
        // The model queue holds exactly the queued and active attempts.
        let live: Vec<(usize, u32)> = state
            .nodes()
            .iter()
            .enumerate()
            .filter(|(_, n)| matches!(n.status, NodeStatus::Queued | NodeStatus::Active))
            .map(|(i, n)| (i, n.attempt))
            .collect();
        let outstanding: Vec<(usize, u32)> = self.outstanding.keys().copied().collect();
        assert_eq!(live, outstanding);
        // A started flow that is still running always has something to wait for.
        if state.status() == FlowStatus::Running && state.seq() > 0 {
            assert!(
                !self.outstanding.is_empty(),
                "running flow with no job: stuck"
            );
        }
        for (i, n) in state.nodes().iter().enumerate() {
            if n.status == NodeStatus::Completed {
                assert_eq!(
                    n.result, self.results[i],
                    "node {i} holds a result other than the one accepted"
                );
            }
        }
    }

    /// A crash: rebuild the flow from what was persisted, and check that nothing
    /// observable was lost and that resume names exactly the outstanding jobs.
    fn crash(&mut self) {
        let restored = FlowState::restore(
            self.state.id(),
            Arc::clone(&self.dag),
            self.state.header().clone(),
            self.state.nodes().to_vec(),
        );
        assert_eq!(observable(&restored), observable(&self.state));
        let expected: Vec<EnqueueJob> = self
            .outstanding
            .iter()
            .map(|(&(node, attempt), job)| EnqueueJob {
                node: NodeIdx::from_usize(node),
                attempt,
                delay_ms: if job.started {
                    0
                } else {
                    job.due.saturating_sub(self.now)
                },
            })
            .collect();
        assert_eq!(restored.resume(self.now), expected);
        for job in &expected {
            assert_eq!(restored.job_input(job.node), self.state.job_input(job.node));
        }
        self.state = restored;
    }

    /// An input for an attempt that is not current: must be ignored.
    fn stale_input(&mut self) -> Input {
        let i = self.rng.below(self.dag.len() as u64) as usize;
        let node = NodeIdx::from_usize(i);
        let n = &self.state.nodes()[i];
        let live = matches!(n.status, NodeStatus::Queued | NodeStatus::Active)
            && self.state.status() == FlowStatus::Running;
        let attempt = match self.rng.below(3) {
            0 => n.attempt + 1,
            1 => n.attempt.saturating_sub(1),
            _ if live => n.attempt + 7,
            _ => n.attempt,
        };
        match self.rng.below(4) {
            0 => Input::JobStarted {
                node,
                attempt,
                worker: None,
            },
            1 => Input::JobCompleted {
                node,
                attempt,
                result: Arc::from("{\"stale\":true}"),
            },
            2 => Input::Progress {
                node,
                attempt,
                progress: Arc::from("\"stale\""),
            },
            _ => Input::JobFailed {
                node,
                attempt,
                error: "stale".into(),
                retryable: false,
                cause: None,
            },
        }
    }

    /// Runs the flow to its end, possibly over several runs.
    fn run(&mut self, inject_failures: bool, fail_percent: u64) {
        let effects = self.apply(Input::Start);
        assert!(!effects.is_empty());
        let mut retries_left = 3;
        let mut steps = 0;
        loop {
            steps += 1;
            assert!(steps < 50_000, "the flow does not end");
            self.now += self.rng.below(20);

            if self.state.status().is_terminal() {
                assert_eq!(self.finished_this_run, 1);
                if inject_failures
                    && retries_left > 0
                    && self.state.can_retry()
                    && self.rng.chance(70)
                {
                    retries_left -= 1;
                    let effects = self.apply(Input::Retry);
                    assert!(!effects.is_empty());
                    continue;
                }
                break;
            }
            if self.rng.chance(3) {
                self.crash();
            }

            let roll = self.rng.below(1000);
            if roll < 60 && !self.accepted.is_empty() {
                // A duplicate delivery of an input already applied.
                let k = self.rng.below(self.accepted.len() as u64) as usize;
                let input = self.accepted[k].clone();
                let effects = self.apply(input.clone());
                assert!(effects.is_empty(), "duplicate {input:?} gave {effects:?}");
            } else if roll < 100 {
                let input = self.stale_input();
                let effects = self.apply(input.clone());
                assert!(effects.is_empty(), "stale {input:?} gave {effects:?}");
            } else if roll < 110 {
                let effects = self.apply(Input::Start);
                assert!(effects.is_empty());
            } else if roll < 140 {
                let (node, attempt) = self.pick_outstanding();
                let input = Input::Progress {
                    node,
                    attempt,
                    progress: Arc::from(format!("{}", self.now).as_str()),
                };
                assert!(!self.apply(input).is_empty());
            } else if inject_failures && roll < 143 {
                let effects = self.apply(Input::Cancel);
                assert_eq!(finished(&effects), Some(FlowStatus::Cancelled));
            } else if inject_failures && roll < 144 {
                let effects = self.apply(Input::Abort {
                    reason: "engine gave up".into(),
                });
                assert_eq!(finished(&effects), Some(FlowStatus::Failed));
            } else {
                let (node, attempt) = self.pick_outstanding();
                let started = self.outstanding[&(node.as_usize(), attempt)].started;
                let input = if !started && self.rng.chance(50) {
                    Input::JobStarted {
                        node,
                        attempt,
                        worker: Some(Arc::from(format!("w{}", attempt % 3).as_str())),
                    }
                } else if inject_failures && self.rng.chance(fail_percent) {
                    Input::JobFailed {
                        node,
                        attempt,
                        error: format!("boom {}/{attempt}", node.as_usize()),
                        retryable: self.rng.chance(60),
                        cause: match self.rng.below(10) {
                            0 => Some(FailureCause::TimedOut),
                            1 => Some(FailureCause::Stalled),
                            _ => None,
                        },
                    }
                } else {
                    Input::JobCompleted {
                        node,
                        attempt,
                        result: Arc::from(
                            json!({ "n": node.as_usize(), "attempt": attempt }).to_string(),
                        ),
                    }
                };
                assert!(!self.apply(input).is_empty());
            }
        }
        assert_eq!(self.finished_this_run, 1);
        assert!(self.outstanding.is_empty());
    }

    fn pick_outstanding(&mut self) -> (NodeIdx, u32) {
        let k = self.rng.below(self.outstanding.len() as u64) as usize;
        let (&(node, attempt), _) = self.outstanding.iter().nth(k).unwrap();
        (NodeIdx::from_usize(node), attempt)
    }

    /// Replays the whole input log on a fresh flow: same effects, same state.
    fn check_replay(&self) {
        let mut fresh = FlowState::new(flow_id(), Arc::clone(&self.dag), T0);
        let mut effects = Vec::new();
        for (input, now) in &self.log {
            effects.extend(fresh.apply(input.clone(), *now));
        }
        assert_eq!(effects, self.all_effects);
        assert_eq!(observable(&fresh), observable(&self.state));
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: proptest_cases(256), ..ProptestConfig::default() })]

    /// A generated spec validates into exactly the generated edges, whichever
    /// side each edge was written on.
    #[test]
    fn generated_specs_validate_to_the_generated_edges(flow in gen_flow()) {
        let dag = dag(flow.spec_json());
        let parents = flow.parent_sets();
        prop_assert_eq!(dag.len(), flow.nodes.len());
        for (i, expected) in parents.iter().enumerate() {
            let node = dag.node(NodeIdx::from_usize(i));
            let mut got: Vec<usize> = node.parents.iter().map(|p| p.as_usize()).collect();
            got.sort_unstable();
            prop_assert_eq!(&got, expected);
            for &c in &node.children {
                prop_assert!(parents[c.as_usize()].contains(&i));
            }
            prop_assert_eq!(node.opts.attempts, flow.nodes[i].attempts);
            prop_assert_eq!(node.opts.continue_on_failure, flow.nodes[i].continue_on_failure);
            prop_assert_eq!(
                node.opts.backoff,
                flow.nodes[i].backoff.map(|(exponential, delay_ms)| Backoff {
                    kind: if exponential { BackoffKind::Exponential } else { BackoffKind::Fixed },
                    delay_ms,
                })
            );
        }
    }

    /// Random DAGs under a random scheduler with duplicates, stale attempts,
    /// progress, failures, cancellations and crashes keep every invariant, and
    /// replaying the inputs gives the same flow.
    #[test]
    fn random_flows_keep_every_invariant(flow in gen_flow()) {
        let dag = dag(flow.spec_json());
        let mut sim = Sim::new(Arc::clone(&dag), flow.seed);
        sim.run(flow.inject_failures, flow.fail_percent);

        let state = &sim.state;
        prop_assert!(state.status().is_terminal());
        prop_assert!(state.nodes().iter().all(|n| n.status.is_terminal()));
        if !flow.inject_failures {
            prop_assert_eq!(state.status(), FlowStatus::Completed);
            prop_assert!(state.nodes().iter().all(|n| n.status == NodeStatus::Completed));
            prop_assert_eq!(sim.runs, 1);
        }
        // Each run ended exactly once.
        let finished_count = sim.all_effects.iter().filter(|e| matches!(e, Effect::Finished(_))).count();
        prop_assert_eq!(finished_count as u32, sim.runs);
        prop_assert_eq!(state.seq(), sim.last_seq);
        sim.check_replay();
    }
}

#[test]
fn repair_completes_a_snapshot_cut_short_by_a_crash() {
    let mut state = diamond();
    apply(&mut state, Input::Start, 1);
    let a = idx(&state, "a");
    // The write that completed `a` got to disk only in part: `a` is completed, but
    // its children were never queued.
    let mut nodes = state.nodes().to_vec();
    nodes[a.as_usize()].status = NodeStatus::Completed;
    nodes[a.as_usize()].result = Some(Arc::from("1"));
    let mut torn = FlowState::restore(
        state.id(),
        Arc::clone(state.dag()),
        state.header().clone(),
        nodes,
    );
    let effects = torn.repair(10);
    assert!(matches!(effects.first(), Some(Effect::Persist(_))));
    let mut queued = enqueued_names(&torn, &effects);
    queued.sort();
    assert_eq!(queued, vec!["b", "c"]);
    assert_eq!(status_of(&torn, "b"), NodeStatus::Queued);
    // A consistent snapshot needs nothing.
    assert!(torn.repair(11).is_empty());
    assert!(state.repair(12).is_empty());
}

// ---------------------------------------------------------------------------
// Scenarios: trigger rules, conditions, maps, waits and re-runs
// ---------------------------------------------------------------------------

fn result_of(state: &FlowState, name: &str) -> Value {
    serde_json::from_str(state.node(idx(state, name)).result.as_deref().unwrap()).unwrap()
}

fn error_of(state: &FlowState, name: &str) -> String {
    state.node(idx(state, name)).error.clone().unwrap()
}

fn reason_of(state: &FlowState, name: &str) -> String {
    state.node(idx(state, name)).reason.clone().unwrap()
}

fn signal(state: &mut FlowState, name: &str, payload: Value, now: u64) -> Vec<Effect> {
    let node = idx(state, name);
    let payload: Arc<str> = Arc::from(payload.to_string());
    apply(state, Input::Signal { node, payload }, now)
}

fn rerun(state: &mut FlowState, name: &str, now: u64) -> Vec<Effect> {
    let node = idx(state, name);
    apply(state, Input::Rerun { node }, now)
}

/// Two roots and a child `c` with the given trigger rule, in continue mode so that a
/// failure does not cancel the rest.
fn rule_flow(rule: &str) -> FlowState {
    new_flow(json!({ "nodes": [
        { "name": "p1" },
        { "name": "p2" },
        { "name": "c", "parents": ["p1", "p2"], "trigger": rule }
    ], "opts": { "onFailure": "continue" } }))
}

/// The event that told `name`'s last change in these effects.
fn event_of(state: &FlowState, effects: &[Effect], name: &str) -> Event {
    let node = idx(state, name);
    events(effects)
        .into_iter()
        .rev()
        .find(|e| e.node == Some(node))
        .unwrap_or_else(|| panic!("no event for '{name}' in {effects:?}"))
}

#[test]
fn all_success_runs_when_every_parent_completed_and_skips_on_a_failure() {
    let mut state = rule_flow("allSuccess");
    apply(&mut state, Input::Start, T0);
    assert!(enqueued(&complete(&mut state, "p1", json!(1), T0 + 1)).is_empty());
    assert_eq!(status_of(&state, "c"), NodeStatus::Pending);
    let effects = complete(&mut state, "p2", json!(2), T0 + 2);
    assert_eq!(enqueued_names(&state, &effects), ["c"]);

    // One failure decides it at once, without waiting for the other parent.
    let mut state = rule_flow("allSuccess");
    apply(&mut state, Input::Start, T0);
    let effects = fail(&mut state, "p1", "boom", false, T0 + 1);
    assert_eq!(status_of(&state, "c"), NodeStatus::Skipped);
    assert_eq!(status_of(&state, "p2"), NodeStatus::Queued);
    let reason = "parent 'p1' failed (trigger allSuccess)";
    assert_eq!(reason_of(&state, "c"), reason);
    let event = event_of(&state, &effects, "c");
    assert_eq!(event.status, EventStatus::Node(NodeStatus::Skipped));
    assert_eq!(event.reason.as_deref(), Some(reason));
    assert_eq!(state.node(idx(&state, "c")).attempt, 0, "never ran");

    // A parent that failed with continueOnFailure counts as a success.
    let mut state = new_flow(json!({ "nodes": [
        { "name": "p1", "continueOnFailure": true },
        { "name": "p2" },
        { "name": "c", "parents": ["p1", "p2"] }
    ]}));
    apply(&mut state, Input::Start, T0);
    fail(&mut state, "p1", "soft", false, T0 + 1);
    let effects = complete(&mut state, "p2", json!(2), T0 + 2);
    assert_eq!(enqueued_names(&state, &effects), ["c"]);
}

#[test]
fn all_done_waits_for_every_parent_whatever_the_outcome() {
    let mut state = rule_flow("allDone");
    apply(&mut state, Input::Start, T0);
    let effects = fail(&mut state, "p1", "boom", false, T0 + 1);
    assert!(enqueued(&effects).is_empty());
    assert_eq!(
        status_of(&state, "c"),
        NodeStatus::Pending,
        "not while p2 is open"
    );
    let effects = complete(&mut state, "p2", json!("ok"), T0 + 2);
    assert_eq!(enqueued_names(&state, &effects), ["c"]);
    assert_eq!(
        input_of(&state, "c"),
        json!({ "data": null, "parents": { "p1": { "error": "boom" }, "p2": "ok" } })
    );
    let effects = complete(&mut state, "c", json!(0), T0 + 3);
    // The failure of p1 is still a failure of the flow.
    assert_eq!(finished(&effects), Some(FlowStatus::Failed));
}

#[test]
fn one_success_runs_at_the_first_completed_parent_and_skips_when_none_completed() {
    let mut state = rule_flow("oneSuccess");
    apply(&mut state, Input::Start, T0);
    let effects = complete(&mut state, "p1", json!(1), T0 + 1);
    assert_eq!(enqueued_names(&state, &effects), ["c"]);
    assert_eq!(status_of(&state, "p2"), NodeStatus::Queued);
    // The parent still open shows as null in the input.
    assert_eq!(
        input_of(&state, "c"),
        json!({ "data": null, "parents": { "p1": 1, "p2": null } })
    );

    let mut state = rule_flow("oneSuccess");
    apply(&mut state, Input::Start, T0);
    fail(&mut state, "p1", "x", false, T0 + 1);
    assert_eq!(status_of(&state, "c"), NodeStatus::Pending);
    let effects = fail(&mut state, "p2", "y", false, T0 + 2);
    assert_eq!(status_of(&state, "c"), NodeStatus::Skipped);
    assert_eq!(
        reason_of(&state, "c"),
        "no parent completed (trigger oneSuccess)"
    );
    assert_eq!(finished(&effects), Some(FlowStatus::Failed));
}

#[test]
fn none_failed_accepts_skipped_parents_and_skips_on_any_failure() {
    // p1 is skipped by its condition: the join still runs.
    let mut state = new_flow(json!({ "nodes": [
        { "name": "p1", "when": "data.go", "data": { "go": false } },
        { "name": "p2" },
        { "name": "c", "parents": ["p1", "p2"], "trigger": "noneFailed" }
    ]}));
    apply(&mut state, Input::Start, T0);
    assert_eq!(status_of(&state, "p1"), NodeStatus::Skipped);
    assert_eq!(status_of(&state, "c"), NodeStatus::Pending);
    let effects = complete(&mut state, "p2", json!(2), T0 + 1);
    assert_eq!(enqueued_names(&state, &effects), ["c"]);
    let effects = complete(&mut state, "c", json!(3), T0 + 2);
    assert_eq!(finished(&effects), Some(FlowStatus::Completed));

    // Even a failure with continueOnFailure counts as a failure here.
    let mut state = new_flow(json!({ "nodes": [
        { "name": "p1", "continueOnFailure": true },
        { "name": "p2" },
        { "name": "c", "parents": ["p1", "p2"], "trigger": "noneFailed" }
    ]}));
    apply(&mut state, Input::Start, T0);
    fail(&mut state, "p1", "soft", false, T0 + 1);
    assert_eq!(status_of(&state, "c"), NodeStatus::Skipped);
    assert_eq!(
        reason_of(&state, "c"),
        "parent 'p1' failed (trigger noneFailed)"
    );
}

#[test]
fn all_failed_runs_only_when_every_parent_failed() {
    let mut state = rule_flow("allFailed");
    apply(&mut state, Input::Start, T0);
    fail(&mut state, "p1", "x", false, T0 + 1);
    assert_eq!(status_of(&state, "c"), NodeStatus::Pending);
    let effects = fail(&mut state, "p2", "y", false, T0 + 2);
    assert_eq!(enqueued_names(&state, &effects), ["c"]);
    assert_eq!(
        input_of(&state, "c"),
        json!({ "data": null, "parents": { "p1": { "error": "x" }, "p2": { "error": "y" } } })
    );

    let mut state = rule_flow("allFailed");
    apply(&mut state, Input::Start, T0);
    let effects = complete(&mut state, "p2", json!(1), T0 + 1);
    assert!(enqueued(&effects).is_empty());
    assert_eq!(status_of(&state, "c"), NodeStatus::Skipped);
    assert_eq!(
        reason_of(&state, "c"),
        "parent 'p2' completed (trigger allFailed)"
    );
}

fn condition_flow() -> FlowState {
    new_flow(json!({ "nodes": [
        { "name": "a" },
        { "name": "b", "parents": ["a"], "when": "parents.a.v > 3" },
        { "name": "after", "parents": ["b"] }
    ]}))
}

#[test]
fn a_true_condition_runs_the_node() {
    let mut state = condition_flow();
    apply(&mut state, Input::Start, T0);
    let effects = complete(&mut state, "a", json!({ "v": 5 }), T0 + 1);
    assert_eq!(enqueued_names(&state, &effects), ["b"]);
    assert_eq!(state.node(idx(&state, "b")).reason, None);
}

#[test]
fn a_false_condition_skips_the_node_with_its_reason_and_the_flow_completes() {
    let mut state = condition_flow();
    apply(&mut state, Input::Start, T0);
    let effects = complete(&mut state, "a", json!({ "v": 3 }), T0 + 1);
    assert!(enqueued(&effects).is_empty());
    assert_eq!(status_of(&state, "b"), NodeStatus::Skipped);
    let reason = "condition `parents.a.v > 3` is false";
    assert_eq!(reason_of(&state, "b"), reason);
    assert_eq!(
        event_of(&state, &effects, "b").reason.as_deref(),
        Some(reason)
    );
    assert_eq!(attempt_of(&state, "b"), 0);
    assert_eq!(status_of(&state, "after"), NodeStatus::Skipped);
    assert_eq!(
        reason_of(&state, "after"),
        "parent 'b' skipped (trigger allSuccess)"
    );
    // A skip is not a failure.
    assert_eq!(finished(&effects), Some(FlowStatus::Completed));
    assert!(!state.can_retry());

    // `data` is bound too; a root's condition is decided at Start.
    let mut state = new_flow(json!({ "nodes": [
        { "name": "r", "when": "data.go && data.n == 2", "data": { "go": true, "n": 2 } },
        { "name": "s", "when": "data.go", "data": { "go": false } }
    ]}));
    let effects = apply(&mut state, Input::Start, T0);
    assert_eq!(enqueued_names(&state, &effects), ["r"]);
    assert_eq!(status_of(&state, "s"), NodeStatus::Skipped);
}

#[test]
fn a_condition_that_cannot_be_evaluated_fails_the_node() {
    let mut state = condition_flow();
    apply(&mut state, Input::Start, T0);
    let effects = complete(&mut state, "a", json!("no fields"), T0 + 1);
    assert!(enqueued(&effects).is_empty());
    assert_eq!(status_of(&state, "b"), NodeStatus::Failed);
    let error = error_of(&state, "b");
    assert!(
        error.starts_with("condition `parents.a.v > 3` could not be evaluated: "),
        "{error}"
    );
    assert_eq!(
        event_of(&state, &effects, "b").error.as_deref(),
        Some(&*error)
    );
    assert_eq!(status_of(&state, "after"), NodeStatus::Skipped);
    assert_eq!(finished(&effects), Some(FlowStatus::Failed));

    // A condition must give a boolean.
    let mut state = new_flow(json!({ "nodes": [
        { "name": "r", "when": "data.n", "data": { "n": 2 } }
    ]}));
    let effects = apply(&mut state, Input::Start, T0);
    assert!(enqueued(&effects).is_empty());
    assert_eq!(status_of(&state, "r"), NodeStatus::Failed);
    let error = error_of(&state, "r");
    assert!(error.contains("it must give a boolean"), "{error}");
    assert_eq!(finished(&effects), Some(FlowStatus::Failed));
}

fn map_flow(map: Value, on_failure: &str) -> FlowState {
    new_flow(json!({ "nodes": [
        { "name": "src" },
        { "name": "m", "parents": ["src"], "map": map },
        { "name": "after", "parents": ["m"] }
    ], "opts": { "onFailure": on_failure } }))
}

/// Elements of `m` queued or running.
fn running_elements(state: &FlowState, map: &str) -> usize {
    state
        .elements(idx(state, map))
        .filter(|&e| {
            matches!(
                state.node(e).status,
                NodeStatus::Queued | NodeStatus::Active
            )
        })
        .count()
}

#[test]
fn a_map_over_an_empty_array_completes_at_once_with_an_empty_array() {
    let mut state = map_flow(json!({ "from": "src", "path": "/items" }), "failFast");
    apply(&mut state, Input::Start, T0);
    let effects = complete(&mut state, "src", json!({ "items": [] }), T0 + 1);
    let m = idx(&state, "m");
    assert_eq!(status_of(&state, "m"), NodeStatus::Completed);
    assert_eq!(result_of(&state, "m"), json!([]));
    assert_eq!(enqueued_names(&state, &effects), ["after"]);
    assert_eq!(state.elements(m).count(), 0);
    assert_eq!(
        state.map_counts(m),
        Some(MapCounts {
            total: 0,
            done: 0,
            running: 0,
            failed: 0
        })
    );
    assert_eq!(state.nodes().len(), 3, "no element records");
    assert_eq!(
        input_of(&state, "after"),
        json!({ "data": null, "parents": { "m": [] } })
    );
}

#[test]
fn a_map_of_one_element_runs_it_with_its_item_and_index() {
    let mut state = map_flow(json!({ "from": "src", "path": "/items" }), "failFast");
    apply(&mut state, Input::Start, T0);
    let effects = complete(&mut state, "src", json!({ "items": ["x"] }), T0 + 1);
    let m = idx(&state, "m");
    assert!(!state.is_job(m), "a map node is not itself a job");
    assert_eq!(enqueued(&effects).len(), 1);
    let el = enqueued(&effects)[0].node;
    assert_eq!(el.as_usize(), 3, "elements come after the DAG's nodes");
    assert_eq!(state.node_name(el), "m[0]");
    assert_eq!(state.owner(el), Some((m, 0)));
    assert_eq!(state.element(m, 0), Some(el));
    assert_eq!(state.element(m, 1), None);
    assert_eq!(state.job_node(el), m);
    assert!(state.is_job(el));
    assert_eq!(state.lookup("m[0]"), Some(el));
    assert_eq!(state.lookup("m[1]"), None);
    assert_eq!(status_of(&state, "m"), NodeStatus::Active);
    assert_eq!(
        input_of(&state, "m[0]"),
        json!({ "data": null, "parents": {}, "item": "x", "index": 0 })
    );
    let effects = complete(&mut state, "m[0]", json!({ "done": "x" }), T0 + 2);
    assert_eq!(status_of(&state, "m"), NodeStatus::Completed);
    assert_eq!(result_of(&state, "m"), json!([{ "done": "x" }]));
    assert_eq!(enqueued_names(&state, &effects), ["after"]);
    assert_eq!(persisted(&effects), [m, idx(&state, "after"), el]);
}

#[test]
fn a_map_of_five_elements_runs_at_most_two_at_a_time_and_keeps_their_order() {
    let mut state = map_flow(
        json!({ "from": "src", "path": "/items", "maxParallel": 2 }),
        "failFast",
    );
    apply(&mut state, Input::Start, T0);
    let effects = complete(
        &mut state,
        "src",
        json!({ "items": [10, 20, 30, 40, 50] }),
        T0 + 1,
    );
    let m = idx(&state, "m");
    let names: Vec<String> = enqueued(&effects)
        .iter()
        .map(|j| state.node_name(j.node).into_owned())
        .collect();
    assert_eq!(names, ["m[0]", "m[1]"]);
    assert_eq!(state.elements(m).count(), 5);
    assert_eq!(
        state.map_counts(m),
        Some(MapCounts {
            total: 5,
            done: 0,
            running: 2,
            failed: 0
        })
    );
    for i in 2..5 {
        assert_eq!(status_of(&state, &format!("m[{i}]")), NodeStatus::Pending);
    }
    assert_eq!(input_of(&state, "m[1]")["item"], json!(20));

    // Out of order: each completion frees one slot for the next element.
    let mut now = T0 + 2;
    for (done, next) in [(1, Some("m[2]")), (0, Some("m[3]")), (3, Some("m[4]"))] {
        let effects = complete(&mut state, &format!("m[{done}]"), json!({ "r": done }), now);
        let names: Vec<String> = enqueued(&effects)
            .iter()
            .map(|j| state.node_name(j.node).into_owned())
            .collect();
        assert_eq!(names, next.into_iter().collect::<Vec<_>>());
        assert_eq!(running_elements(&state, "m"), 2);
        assert_eq!(status_of(&state, "m"), NodeStatus::Active);
        now += 1;
    }
    assert_eq!(
        state.map_counts(m),
        Some(MapCounts {
            total: 5,
            done: 3,
            running: 2,
            failed: 0
        })
    );
    complete(&mut state, "m[4]", json!({ "r": 4 }), now);
    assert_eq!(running_elements(&state, "m"), 1);
    let effects = complete(&mut state, "m[2]", json!({ "r": 2 }), now + 1);
    assert_eq!(status_of(&state, "m"), NodeStatus::Completed);
    assert_eq!(
        result_of(&state, "m"),
        json!([{ "r": 0 }, { "r": 1 }, { "r": 2 }, { "r": 3 }, { "r": 4 }])
    );
    assert_eq!(enqueued_names(&state, &effects), ["after"]);
    let effects = complete(&mut state, "after", json!(null), now + 2);
    assert_eq!(finished(&effects), Some(FlowStatus::Completed));
}

#[test]
fn a_map_whose_path_is_not_an_array_fails_with_a_clear_message() {
    for (result, message) in [
        (
            json!({ "items": 5 }),
            "path '/items' in the result of 'src' is a number, not an array",
        ),
        (
            json!({ "items": { "a": 1 } }),
            "path '/items' in the result of 'src' is an object, not an array",
        ),
        (
            json!({ "other": [] }),
            "path '/items' is not found in the result of 'src'",
        ),
    ] {
        let mut state = map_flow(json!({ "from": "src", "path": "/items" }), "continue");
        apply(&mut state, Input::Start, T0);
        let effects = complete(&mut state, "src", result, T0 + 1);
        assert!(enqueued(&effects).is_empty());
        assert_eq!(status_of(&state, "m"), NodeStatus::Failed);
        assert_eq!(error_of(&state, "m"), message);
        assert_eq!(state.elements(idx(&state, "m")).count(), 0);
        assert_eq!(status_of(&state, "after"), NodeStatus::Skipped);
        assert_eq!(finished(&effects), Some(FlowStatus::Failed));
    }
}

#[test]
fn a_map_over_more_than_max_items_fails() {
    let mut state = map_flow(json!({ "from": "src", "maxItems": 2 }), "continue");
    apply(&mut state, Input::Start, T0);
    // Path "" is the whole result.
    let effects = complete(&mut state, "src", json!([1, 2, 3]), T0 + 1);
    assert!(enqueued(&effects).is_empty());
    assert_eq!(status_of(&state, "m"), NodeStatus::Failed);
    assert_eq!(
        error_of(&state, "m"),
        "map over 'src' has 3 elements, more than maxItems 2"
    );
    assert_eq!(state.nodes().len(), 3);

    // Exactly maxItems is fine.
    let mut state = map_flow(json!({ "from": "src", "maxItems": 2 }), "continue");
    apply(&mut state, Input::Start, T0);
    let effects = complete(&mut state, "src", json!([1, 2]), T0 + 1);
    assert_eq!(enqueued(&effects).len(), 2);
}

#[test]
fn under_fail_fast_an_element_failing_for_good_fails_the_map_and_cancels_the_rest() {
    let mut state = new_flow(json!({ "nodes": [
        { "name": "src" },
        { "name": "side" },
        { "name": "m", "parents": ["src"], "map": { "from": "src" }, "opts": { "attempts": 2 } }
    ], "opts": { "onFailure": "failFast" } }));
    apply(&mut state, Input::Start, T0);
    complete(&mut state, "src", json!([1, 2, 3]), T0 + 1);
    complete(&mut state, "m[2]", json!("two"), T0 + 2);
    // An element retries with its map's options.
    let effects = fail(&mut state, "m[1]", "flaky", true, T0 + 3);
    assert_eq!(
        enqueued(&effects),
        [EnqueueJob {
            node: idx(&state, "m[1]"),
            attempt: 2,
            delay_ms: 0
        }]
    );
    assert_eq!(status_of(&state, "m"), NodeStatus::Active);
    let e0 = idx(&state, "m[0]");
    let e1 = idx(&state, "m[1]");
    let side = idx(&state, "side");
    let effects = fail(&mut state, "m[1]", "boom", true, T0 + 4);
    assert_eq!(status_of(&state, "m"), NodeStatus::Failed);
    assert_eq!(
        error_of(&state, "m"),
        "1 of 3 elements failed; first m[1]: boom"
    );
    assert_eq!(
        result_of(&state, "m"),
        json!([null, { "error": "boom" }, "two"])
    );
    assert_eq!(cancelled_jobs(&effects), [(side, 1), (e0, 1)]);
    assert_eq!(state.node(e0).status, NodeStatus::Cancelled);
    assert_eq!(state.node(e1).status, NodeStatus::Failed);
    assert_eq!(finished(&effects), Some(FlowStatus::Failed));
    // The cancelled element's late completion changes nothing.
    let before = observable(&state);
    let late = Input::JobCompleted {
        node: e0,
        attempt: 1,
        result: Arc::from("1"),
    };
    assert!(apply(&mut state, late, T0 + 5).is_empty());
    assert_eq!(observable(&state), before);
}

#[test]
fn in_continue_mode_a_map_waits_for_every_element_and_fails_with_their_results() {
    let mut state = map_flow(json!({ "from": "src" }), "continue");
    apply(&mut state, Input::Start, T0);
    complete(&mut state, "src", json!(["a", "b", "c"]), T0 + 1);
    let effects = fail(&mut state, "m[1]", "bad \"b\"", false, T0 + 2);
    assert!(cancelled_jobs(&effects).is_empty());
    assert_eq!(status_of(&state, "m"), NodeStatus::Active);
    complete(&mut state, "m[0]", json!("A"), T0 + 3);
    let effects = complete(&mut state, "m[2]", json!("C"), T0 + 4);
    assert_eq!(status_of(&state, "m"), NodeStatus::Failed);
    assert_eq!(
        result_of(&state, "m"),
        json!(["A", { "error": "bad \"b\"" }, "C"])
    );
    assert_eq!(status_of(&state, "after"), NodeStatus::Skipped);
    assert_eq!(finished(&effects), Some(FlowStatus::Failed));
}

#[test]
fn flow_retry_reruns_only_the_failed_elements_of_a_map() {
    let mut state = map_flow(json!({ "from": "src", "maxParallel": 2 }), "continue");
    apply(&mut state, Input::Start, T0);
    complete(&mut state, "src", json!([1, 2, 3]), T0 + 1);
    complete(&mut state, "m[0]", json!("one"), T0 + 2);
    fail(&mut state, "m[1]", "boom", false, T0 + 3);
    let effects = complete(&mut state, "m[2]", json!("three"), T0 + 4);
    assert_eq!(finished(&effects), Some(FlowStatus::Failed));
    let (e0, e1, e2) = (
        idx(&state, "m[0]"),
        idx(&state, "m[1]"),
        idx(&state, "m[2]"),
    );
    let src_before = state.node(idx(&state, "src")).clone();

    let effects = apply(&mut state, Input::Retry, T0 + 10);
    assert_eq!(
        enqueued(&effects),
        [EnqueueJob {
            node: e1,
            attempt: 2,
            delay_ms: 0
        }]
    );
    assert_eq!(status_of(&state, "m"), NodeStatus::Active);
    assert_eq!(state.node(idx(&state, "m")).result, None);
    assert_eq!(state.node(idx(&state, "src")), &src_before);
    for (el, result) in [(e0, "\"one\""), (e2, "\"three\"")] {
        let n = state.node(el);
        assert_eq!(n.status, NodeStatus::Completed);
        assert_eq!(n.attempt, 1, "a completed element keeps its attempt");
        assert_eq!(n.result.as_deref(), Some(result));
    }
    assert_eq!(state.node(e1).run_first_attempt, 2);
    assert_eq!(
        state.map_counts(idx(&state, "m")),
        Some(MapCounts {
            total: 3,
            done: 2,
            running: 1,
            failed: 0
        })
    );
    // The item is kept for the new attempt.
    assert_eq!(input_of(&state, "m[1]")["item"], json!(2));

    let effects = complete(&mut state, "m[1]", json!("two"), T0 + 11);
    assert_eq!(status_of(&state, "m"), NodeStatus::Completed);
    assert_eq!(result_of(&state, "m"), json!(["one", "two", "three"]));
    assert_eq!(enqueued_names(&state, &effects), ["after"]);
    let effects = complete(&mut state, "after", json!(0), T0 + 12);
    assert_eq!(finished(&effects), Some(FlowStatus::Completed));
}

fn gate_flow(wait: Value) -> FlowState {
    new_flow(json!({ "nodes": [
        { "name": "a" },
        { "name": "gate", "parents": ["a"], "wait": wait },
        { "name": "after", "parents": ["gate"] }
    ]}))
}

#[test]
fn a_signal_completes_a_waiting_node_with_its_payload_and_is_refused_otherwise() {
    let mut state = gate_flow(json!({ "signal": "approve" }));
    let gate = idx(&state, "gate");
    apply(&mut state, Input::Start, T0);
    // Before the node waits.
    assert_eq!(
        state.signal_refusal(gate).as_deref(),
        Some("node 'gate' is pending in a running flow; only a waiting node takes a signal")
    );
    let before = observable(&state);
    assert!(signal(&mut state, "gate", json!(1), T0 + 1).is_empty());
    assert_eq!(observable(&state), before);
    assert_eq!(
        state.signal_refusal(idx(&state, "a")).as_deref(),
        Some("node 'a' does not wait for a signal")
    );
    assert!(signal(&mut state, "a", json!(1), T0 + 1).is_empty());

    let effects = complete(&mut state, "a", json!(0), T0 + 2);
    assert!(enqueued(&effects).is_empty(), "a wait is not a job");
    assert_eq!(
        event_of(&state, &effects, "gate").status,
        EventStatus::Node(NodeStatus::Waiting)
    );
    let n = state.node(gate);
    assert_eq!(n.status, NodeStatus::Waiting);
    assert_eq!((n.attempt, n.started_at, n.due_at), (1, Some(T0 + 2), None));
    assert!(!state.is_job(gate));
    assert_eq!(state.signal_refusal(gate), None);
    assert_eq!(state.next_deadline(), None, "no timeout, no deadline");
    assert!(apply(&mut state, Input::Tick, T0 + 1_000_000).is_empty());
    assert!(state.resume(T0 + 3).is_empty(), "nothing to enqueue");

    let effects = signal(&mut state, "gate", json!({ "ok": true }), T0 + 3);
    assert_eq!(status_of(&state, "gate"), NodeStatus::Completed);
    assert_eq!(result_of(&state, "gate"), json!({ "ok": true }));
    assert_eq!(state.node(gate).finished_at, Some(T0 + 3));
    assert_eq!(enqueued_names(&state, &effects), ["after"]);
    assert_eq!(
        input_of(&state, "after"),
        json!({ "data": null, "parents": { "gate": { "ok": true } } })
    );
    // After it: refused, and nothing changes.
    assert_eq!(
        state.signal_refusal(gate).as_deref(),
        Some("node 'gate' is completed in a running flow; only a waiting node takes a signal")
    );
    let before = observable(&state);
    assert!(signal(&mut state, "gate", json!(2), T0 + 4).is_empty());
    assert_eq!(observable(&state), before);
}

#[test]
fn a_signal_timeout_takes_the_default() {
    let mut state =
        gate_flow(json!({ "signal": "approve", "timeoutMs": 1000, "default": { "ok": false } }));
    apply(&mut state, Input::Start, T0);
    complete(&mut state, "a", json!(0), T0 + 5);
    let gate = idx(&state, "gate");
    assert_eq!(state.node(gate).due_at, Some(T0 + 1005));
    assert_eq!(state.next_deadline(), Some(T0 + 1005));
    assert!(apply(&mut state, Input::Tick, T0 + 1004).is_empty());
    assert_eq!(state.node(gate).status, NodeStatus::Waiting);
    let effects = apply(&mut state, Input::Tick, T0 + 1005);
    assert_eq!(state.node(gate).status, NodeStatus::Completed);
    assert_eq!(result_of(&state, "gate"), json!({ "ok": false }));
    assert_eq!(state.node(gate).due_at, None);
    assert_eq!(enqueued_names(&state, &effects), ["after"]);
    assert_eq!(state.next_deadline(), None);
}

#[test]
fn a_signal_timeout_without_default_fails_the_node() {
    let mut state = gate_flow(json!({ "signal": "approve", "timeoutMs": 1000 }));
    apply(&mut state, Input::Start, T0);
    complete(&mut state, "a", json!(0), T0);
    // A late tick still fires it.
    let effects = apply(&mut state, Input::Tick, T0 + 5000);
    assert_eq!(status_of(&state, "gate"), NodeStatus::Failed);
    assert_eq!(
        error_of(&state, "gate"),
        "no signal 'approve' within 1000 ms"
    );
    assert_eq!(
        event_of(&state, &effects, "gate").error.as_deref(),
        Some("no signal 'approve' within 1000 ms")
    );
    assert_eq!(status_of(&state, "after"), NodeStatus::Skipped);
    assert_eq!(finished(&effects), Some(FlowStatus::Failed));
    // A signal after the timeout is refused.
    assert!(signal(&mut state, "gate", json!(1), T0 + 5001).is_empty());
}

#[test]
fn timers_fire_on_the_first_tick_at_or_after_their_time() {
    let mut state = new_flow(json!({ "nodes": [
        { "name": "sleep", "wait": { "forMs": 500 } },
        { "name": "alarm", "wait": { "until": T0 + 200 } },
        { "name": "after", "parents": ["sleep", "alarm"] }
    ]}));
    assert_eq!(state.next_deadline(), None, "not started");
    apply(&mut state, Input::Start, T0 + 10);
    let (sleep, alarm) = (idx(&state, "sleep"), idx(&state, "alarm"));
    assert_eq!(state.node(sleep).due_at, Some(T0 + 510));
    assert_eq!(state.node(alarm).due_at, Some(T0 + 200));
    assert_eq!(state.next_deadline(), Some(T0 + 200));
    assert!(apply(&mut state, Input::Tick, T0 + 199).is_empty());
    // A timer takes no signal.
    assert_eq!(
        state.signal_refusal(sleep).as_deref(),
        Some("node 'sleep' does not wait for a signal")
    );
    assert!(signal(&mut state, "sleep", json!(1), T0 + 199).is_empty());

    let effects = apply(&mut state, Input::Tick, T0 + 300);
    assert_eq!(persisted(&effects), [alarm]);
    assert_eq!(state.node(alarm).status, NodeStatus::Completed);
    assert_eq!(result_of(&state, "alarm"), json!({ "firedAt": T0 + 300 }));
    assert_eq!(state.node(sleep).status, NodeStatus::Waiting);
    assert_eq!(state.next_deadline(), Some(T0 + 510));

    let effects = apply(&mut state, Input::Tick, T0 + 510);
    assert_eq!(result_of(&state, "sleep"), json!({ "firedAt": T0 + 510 }));
    assert_eq!(enqueued_names(&state, &effects), ["after"]);
    assert_eq!(state.next_deadline(), None);
    let effects = complete(&mut state, "after", json!(1), T0 + 511);
    assert_eq!(finished(&effects), Some(FlowStatus::Completed));
}

#[test]
fn next_deadline_is_the_earliest_wait_and_none_once_the_flow_ended() {
    let mut state = new_flow(json!({ "nodes": [
        { "name": "s", "wait": { "signal": "go" } },
        { "name": "t1", "wait": { "forMs": 300 } },
        { "name": "t2", "wait": { "signal": "x", "timeoutMs": 100 } },
        { "name": "job" }
    ]}));
    apply(&mut state, Input::Start, T0);
    assert_eq!(state.next_deadline(), Some(T0 + 100));
    signal(&mut state, "t2", json!(0), T0 + 1);
    assert_eq!(state.next_deadline(), Some(T0 + 300));
    apply(&mut state, Input::Tick, T0 + 300);
    assert_eq!(state.next_deadline(), None, "only a wait without deadline");
    apply(&mut state, Input::Cancel, T0 + 301);
    assert_eq!(status_of(&state, "s"), NodeStatus::Cancelled);
    assert_eq!(state.next_deadline(), None);

    // A cancelled timer leaves no deadline.
    let mut state =
        new_flow(json!({ "nodes": [{ "name": "t", "wait": { "forMs": 5 } }, { "name": "j" }] }));
    apply(&mut state, Input::Start, T0);
    assert_eq!(state.next_deadline(), Some(T0 + 5));
    apply(&mut state, Input::Cancel, T0 + 1);
    assert_eq!(state.node(idx(&state, "t")).due_at, None);
    assert_eq!(state.next_deadline(), None);
    assert!(apply(&mut state, Input::Tick, T0 + 10).is_empty());
}

#[test]
fn rerun_of_a_middle_node_in_a_finished_flow_reruns_it_and_what_follows_only() {
    let mut state = new_flow(json!({ "nodes": [
        { "name": "a" },
        { "name": "b", "parents": ["a"] },
        { "name": "c", "parents": ["b"] },
        { "name": "e", "parents": ["a"] },
        { "name": "d" }
    ]}));
    apply(&mut state, Input::Start, T0);
    for (k, name) in ["a", "d", "b", "e", "c"].iter().enumerate() {
        complete(&mut state, name, json!({ "from": name }), T0 + 1 + k as u64);
    }
    assert_eq!(state.status(), FlowStatus::Completed);
    let kept: Vec<(String, NodeState)> = ["a", "d", "e"]
        .iter()
        .map(|n| (n.to_string(), state.node(idx(&state, n)).clone()))
        .collect();
    let (b, c) = (idx(&state, "b"), idx(&state, "c"));
    assert_eq!(state.rerun_refusal(b), None);

    let effects = rerun(&mut state, "b", T0 + 100);
    assert_eq!(
        enqueued(&effects),
        [EnqueueJob {
            node: b,
            attempt: 2,
            delay_ms: 0
        }]
    );
    let told: Vec<_> = events(&effects)
        .iter()
        .map(|e| (e.node, e.status))
        .collect();
    assert_eq!(
        told,
        [
            (None, EventStatus::Flow(FlowStatus::Running)),
            (Some(b), EventStatus::Node(NodeStatus::Queued)),
            (Some(c), EventStatus::Node(NodeStatus::Pending)),
        ]
    );
    assert_eq!(persisted(&effects), [b, c]);
    assert_eq!(state.status(), FlowStatus::Running);
    assert_eq!(state.header().finished_at, None);
    assert_eq!(state.node(c).result, None);
    assert_eq!(state.node(c).status, NodeStatus::Pending);
    for (name, node) in &kept {
        assert_eq!(state.node(idx(&state, name)), node, "{name} changed");
    }
    assert_eq!(
        input_of(&state, "b"),
        json!({ "data": null, "parents": { "a": { "from": "a" } } })
    );
    let effects = complete(&mut state, "b", json!("b2"), T0 + 101);
    assert_eq!(
        enqueued(&effects),
        [EnqueueJob {
            node: c,
            attempt: 2,
            delay_ms: 0
        }]
    );
    let effects = complete(&mut state, "c", json!("c2"), T0 + 102);
    assert_eq!(finished(&effects), Some(FlowStatus::Completed));
    for (name, node) in &kept {
        assert_eq!(state.node(idx(&state, name)), node, "{name} changed");
    }
}

#[test]
fn rerun_of_a_failed_node_in_a_running_continue_flow() {
    let mut state = new_flow(json!({ "nodes": [
        { "name": "a" },
        { "name": "b", "parents": ["a"] },
        { "name": "slow" }
    ], "opts": { "onFailure": "continue" } }));
    apply(&mut state, Input::Start, T0);
    started(&mut state, "slow", T0 + 1);
    fail(&mut state, "a", "boom", false, T0 + 2);
    assert_eq!(status_of(&state, "b"), NodeStatus::Skipped);
    assert_eq!(state.status(), FlowStatus::Running);
    let slow = state.node(idx(&state, "slow")).clone();
    // A node still running cannot be re-run.
    assert_eq!(
        state.rerun_refusal(idx(&state, "slow")).as_deref(),
        Some("node 'slow' is active; only a node that ended can be re-run")
    );
    assert!(rerun(&mut state, "slow", T0 + 3).is_empty());

    let effects = rerun(&mut state, "a", T0 + 3);
    assert_eq!(enqueued_names(&state, &effects), ["a"]);
    assert_eq!(attempt_of(&state, "a"), 2);
    assert_eq!(state.node(idx(&state, "a")).error, None);
    assert_eq!(status_of(&state, "b"), NodeStatus::Pending);
    assert_eq!(state.node(idx(&state, "b")).reason, None);
    assert_eq!(
        events(&effects).iter().filter(|e| e.node.is_none()).count(),
        0,
        "the flow was running all along"
    );
    assert_eq!(state.node(idx(&state, "slow")), &slow);
    complete(&mut state, "a", json!(1), T0 + 4);
    complete(&mut state, "b", json!(2), T0 + 5);
    // The failure was re-run away: the flow completes.
    let effects = complete(&mut state, "slow", json!(3), T0 + 6);
    assert_eq!(finished(&effects), Some(FlowStatus::Completed));
}

#[test]
fn rerun_cancels_the_running_jobs_of_descendants() {
    let mut state = new_flow(json!({ "nodes": [
        { "name": "a" },
        { "name": "b", "parents": ["a"] },
        { "name": "m", "parents": ["a"], "map": { "from": "a" } },
        { "name": "other" }
    ], "opts": { "onFailure": "continue" } }));
    apply(&mut state, Input::Start, T0);
    complete(&mut state, "a", json!([1, 2]), T0 + 1);
    started(&mut state, "b", T0 + 2);
    let (b, m) = (idx(&state, "b"), idx(&state, "m"));
    let (e0, e1) = (idx(&state, "m[0]"), idx(&state, "m[1]"));
    complete(&mut state, "m[0]", json!("x"), T0 + 3);
    let effects = rerun(&mut state, "a", T0 + 4);
    assert_eq!(cancelled_jobs(&effects), [(b, 1), (e1, 1)]);
    assert_eq!(enqueued_names(&state, &effects), ["a"]);
    assert_eq!(state.node(b).status, NodeStatus::Pending);
    assert_eq!(state.node(m).status, NodeStatus::Pending);
    assert_eq!(state.node(m).elements, None);
    // The old elements are no longer live: no name, no job.
    assert_eq!(state.owner(e0), None);
    assert!(!state.is_job(e1));
    assert_eq!(state.lookup("m[0]"), None);
    assert_eq!(state.elements(m).count(), 0);
    assert_eq!(status_of(&state, "other"), NodeStatus::Queued);
    // Late reports of the cancelled jobs change nothing.
    let before = observable(&state);
    for (node, attempt) in [(b, 1), (e1, 1)] {
        let late = Input::JobCompleted {
            node,
            attempt,
            result: Arc::from("0"),
        };
        assert!(apply(&mut state, late, T0 + 5).is_empty());
    }
    assert_eq!(observable(&state), before);
    // The map runs again over the new result.
    let effects = complete(&mut state, "a", json!([7]), T0 + 6);
    assert_eq!(enqueued(&effects).len(), 2);
    assert_eq!(input_of(&state, "m[0]")["item"], json!(7));
    assert_eq!(state.elements(m).count(), 1);
}

#[test]
fn rerun_is_refused_in_a_running_fail_fast_flow_and_for_elements() {
    let mut state = new_flow(json!({ "nodes": [
        { "name": "a" },
        { "name": "b" },
        { "name": "m", "parents": ["a"], "map": { "from": "a" } }
    ], "opts": { "onFailure": "failFast" } }));
    let a = idx(&state, "a");
    assert_eq!(
        state.rerun_refusal(a).as_deref(),
        Some("a running flow in failFast mode cannot re-run a node; wait for it to end")
    );
    apply(&mut state, Input::Start, T0);
    complete(&mut state, "a", json!([1]), T0 + 1);
    assert_eq!(
        state.rerun_refusal(a).as_deref(),
        Some("a running flow in failFast mode cannot re-run a node; wait for it to end")
    );
    let before = observable(&state);
    assert!(rerun(&mut state, "a", T0 + 2).is_empty());
    assert_eq!(observable(&state), before);
    let e0 = idx(&state, "m[0]");
    assert_eq!(
        state.rerun_refusal(e0).as_deref(),
        Some("'m[0]' is an element of a map: re-run the map node instead")
    );
    assert!(apply(&mut state, Input::Rerun { node: e0 }, T0 + 2).is_empty());
    // A node that does not exist.
    assert!(apply(
        &mut state,
        Input::Rerun {
            node: NodeIdx::from_usize(99)
        },
        T0 + 2
    )
    .is_empty());

    // Once the flow ended, it may.
    complete(&mut state, "b", json!(0), T0 + 3);
    complete(&mut state, "m[0]", json!(0), T0 + 4);
    assert_eq!(state.status(), FlowStatus::Completed);
    assert_eq!(state.rerun_refusal(a), None);
    assert_eq!(
        state.rerun_refusal(e0).as_deref(),
        Some("'m[0]' is an element of a map: re-run the map node instead")
    );
    let effects = rerun(&mut state, "m", T0 + 5);
    assert_eq!(state.status(), FlowStatus::Running);
    assert_eq!(enqueued(&effects).len(), 1);
    assert_eq!(attempt_of(&state, "m"), 2);
    assert_eq!(status_of(&state, "a"), NodeStatus::Completed);
    assert_eq!(attempt_of(&state, "a"), 1);
}

#[test]
fn rerun_before_start_is_refused_in_continue_mode() {
    let mut state =
        new_flow(json!({ "nodes": [{ "name": "a" }], "opts": { "onFailure": "continue" } }));
    assert_eq!(
        state.rerun_refusal(idx(&state, "a")).as_deref(),
        Some("node 'a' is pending; only a node that ended can be re-run")
    );
    assert!(rerun(&mut state, "a", T0).is_empty());
    assert_eq!(state.seq(), 0);
}

// ---------------------------------------------------------------------------
// Property tests with maps, conditions, trigger rules, waits and re-runs
// ---------------------------------------------------------------------------

/// Cases for a property test: `DAGFLOW_PROPTEST_CASES` overrides the default.
fn proptest_cases(default: u32) -> u32 {
    std::env::var("DAGFLOW_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

const RULES: [&str; 5] = [
    "allSuccess",
    "allDone",
    "oneSuccess",
    "noneFailed",
    "allFailed",
];

/// What a generated node is, before it is tied to its parents.
#[derive(Debug, Clone)]
enum RichKind {
    Job,
    /// Over one of the parents; `path` 0 is the array (`/items` of a job's result,
    /// `""` of a map's), 1 is a number (`/v`), 2 is missing.
    Map {
        from: prop::sample::Index,
        path: u8,
        max_items: Option<u32>,
        max_parallel: Option<u32>,
    },
    Signal {
        timeout_ms: Option<u64>,
        default: bool,
    },
    For(u64),
    /// Offset from `T0`.
    Until(u64),
}

#[derive(Debug, Clone)]
enum RichCondGen {
    Flag,
    NotFlag,
    ParentV(prop::sample::Index, i64),
    ParentVOrFlag(prop::sample::Index, i64),
}

#[derive(Debug, Clone)]
struct RichGenNode {
    parents: Vec<prop::sample::Index>,
    kind: RichKind,
    rule: Option<usize>,
    when: Option<RichCondGen>,
    attempts: u32,
    continue_on_failure: bool,
    backoff: Option<u64>,
    flag: bool,
}

#[derive(Debug, Clone)]
struct RichGenFlow {
    nodes: Vec<RichGenNode>,
    fail_fast: bool,
    /// Without it no job fails and nobody cancels, aborts, retries or re-runs
    /// (nodes may still fail: a condition or a map that cannot be evaluated, a
    /// signal that times out).
    inject_failures: bool,
    fail_percent: u64,
    seed: u64,
}

/// A condition, resolved to parent indices.
#[derive(Debug, Clone, Copy)]
enum Cond {
    Flag,
    NotFlag,
    /// `parents.n{p}.v > k`
    ParentV(usize, i64),
    /// `parents.n{p}.v > k || data.flag`
    ParentVOrFlag(usize, i64),
}

impl Cond {
    fn source(self) -> String {
        match self {
            Cond::Flag => "data.flag".into(),
            Cond::NotFlag => "!data.flag".into(),
            Cond::ParentV(p, k) => format!("parents.{}.v > {k}", node_name(p)),
            Cond::ParentVOrFlag(p, k) => format!("parents.{}.v > {k} || data.flag", node_name(p)),
        }
    }
}

/// What a resolved node is.
#[derive(Debug, Clone)]
enum Kind {
    Job,
    Map {
        from: usize,
        path: &'static str,
        max_items: Option<u32>,
        max_parallel: Option<u32>,
    },
    Signal {
        timeout_ms: Option<u64>,
        default: Option<Value>,
    },
    For(u64),
    Until(u64),
}

/// The model of one node: what the spec says, as the test understands it.
#[derive(Debug, Clone)]
struct Model {
    parents: Vec<usize>,
    kind: Kind,
    rule: usize,
    when: Option<Cond>,
    cof: bool,
    flag: bool,
    attempts: u32,
    backoff: Option<u64>,
}

impl Model {
    fn is_map(&self) -> bool {
        matches!(self.kind, Kind::Map { .. })
    }

    fn is_wait(&self) -> bool {
        matches!(
            self.kind,
            Kind::Signal { .. } | Kind::For(_) | Kind::Until(_)
        )
    }
}

fn rich_kind() -> impl Strategy<Value = RichKind> {
    prop_oneof![
        6 => Just(RichKind::Job),
        4 => (
            any::<prop::sample::Index>(),
            prop_oneof![12 => Just(0u8), 1 => Just(1u8), 1 => Just(2u8)],
            prop::option::weighted(0.2, 1u32..6),
            prop::option::weighted(0.6, 1u32..4),
        )
            .prop_map(|(from, path, max_items, max_parallel)| RichKind::Map {
                from,
                path,
                max_items,
                max_parallel
            }),
        1 => (prop::option::weighted(0.6, 1u64..300), any::<bool>())
            .prop_map(|(timeout_ms, default)| RichKind::Signal { timeout_ms, default }),
        1 => (1u64..300).prop_map(RichKind::For),
        1 => (0u64..2000).prop_map(RichKind::Until),
    ]
}

fn rich_cond() -> impl Strategy<Value = RichCondGen> {
    prop_oneof![
        1 => Just(RichCondGen::Flag),
        1 => Just(RichCondGen::NotFlag),
        2 => (any::<prop::sample::Index>(), 0i64..10).prop_map(|(p, k)| RichCondGen::ParentV(p, k)),
        1 => (any::<prop::sample::Index>(), 0i64..10).prop_map(|(p, k)| RichCondGen::ParentVOrFlag(p, k)),
    ]
}

fn rich_node() -> impl Strategy<Value = RichGenNode> {
    (
        prop::collection::vec(any::<prop::sample::Index>(), 0..4),
        rich_kind(),
        prop::option::weighted(0.5, 0usize..5),
        prop::option::weighted(0.3, rich_cond()),
        1u32..=3,
        prop::bool::weighted(0.15),
        prop::option::weighted(0.2, 1u64..200),
        any::<bool>(),
    )
        .prop_map(
            |(parents, kind, rule, when, attempts, continue_on_failure, backoff, flag)| {
                RichGenNode {
                    parents,
                    kind,
                    rule,
                    when,
                    attempts,
                    continue_on_failure,
                    backoff,
                    flag,
                }
            },
        )
}

fn rich_flow() -> impl Strategy<Value = RichGenFlow> {
    (
        prop::collection::vec(rich_node(), 1..=25),
        any::<bool>(),
        prop::bool::weighted(0.8),
        1u64..25,
        any::<u64>(),
    )
        .prop_map(
            |(nodes, fail_fast, inject_failures, fail_percent, seed)| RichGenFlow {
                nodes,
                fail_fast,
                inject_failures,
                fail_percent,
                seed,
            },
        )
}

impl RichGenFlow {
    /// Ties each node to its parents (lower indices only, so the graph is acyclic).
    fn models(&self) -> Vec<Model> {
        let mut out: Vec<Model> = Vec::with_capacity(self.nodes.len());
        for (i, n) in self.nodes.iter().enumerate() {
            let mut parents: Vec<usize> = if i == 0 {
                Vec::new()
            } else {
                n.parents.iter().map(|p| p.index(i)).collect()
            };
            parents.sort_unstable();
            parents.dedup();
            let pick = |ix: &prop::sample::Index| parents[ix.index(parents.len())];
            let kind = match &n.kind {
                RichKind::Map {
                    from,
                    path,
                    max_items,
                    max_parallel,
                } if !parents.is_empty() => {
                    let from = pick(from);
                    let path = match path {
                        0 if out[from].is_map() => "",
                        0 => "/items",
                        1 => "/v",
                        _ => "/missing",
                    };
                    Kind::Map {
                        from,
                        path,
                        max_items: *max_items,
                        max_parallel: *max_parallel,
                    }
                }
                RichKind::Map { .. } | RichKind::Job => Kind::Job,
                RichKind::Signal {
                    timeout_ms,
                    default,
                } => Kind::Signal {
                    timeout_ms: *timeout_ms,
                    default: (timeout_ms.is_some() && *default)
                        .then(|| json!({ "v": 7, "default": true })),
                },
                RichKind::For(ms) => Kind::For(*ms),
                RichKind::Until(offset) => Kind::Until(T0 + offset),
            };
            let when = n.when.as_ref().map(|c| match c {
                RichCondGen::Flag => Cond::Flag,
                RichCondGen::NotFlag => Cond::NotFlag,
                RichCondGen::ParentV(_, _) | RichCondGen::ParentVOrFlag(_, _)
                    if parents.is_empty() =>
                {
                    Cond::Flag
                }
                RichCondGen::ParentV(p, k) => Cond::ParentV(pick(p), *k),
                RichCondGen::ParentVOrFlag(p, k) => Cond::ParentVOrFlag(pick(p), *k),
            });
            out.push(Model {
                parents,
                kind,
                rule: n.rule.unwrap_or(0),
                when,
                cof: n.continue_on_failure,
                flag: n.flag,
                attempts: n.attempts,
                backoff: n.backoff,
            });
        }
        out
    }

    fn spec_json(&self) -> Value {
        let models = self.models();
        let nodes: Vec<Value> = models
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let mut node = json!({
                    "name": node_name(i),
                    "data": { "i": i, "flag": m.flag },
                    "opts": { "attempts": m.attempts, "continueOnFailure": m.cof },
                });
                if !m.parents.is_empty() {
                    node["parents"] = m.parents.iter().map(|&p| node_name(p)).collect();
                }
                if let Some(delay_ms) = m.backoff {
                    node["opts"]["backoff"] = json!({ "type": "exponential", "delayMs": delay_ms });
                }
                if m.rule != 0 || i % 2 == 1 {
                    // Half of the default rules are written out.
                    node["trigger"] = json!(RULES[m.rule]);
                }
                if let Some(cond) = m.when {
                    node["when"] = json!(cond.source());
                }
                match &m.kind {
                    Kind::Job => {}
                    Kind::Map {
                        from,
                        path,
                        max_items,
                        max_parallel,
                    } => {
                        let mut map = json!({ "from": node_name(*from), "path": path });
                        if let Some(n) = max_items {
                            map["maxItems"] = json!(n);
                        }
                        if let Some(n) = max_parallel {
                            map["maxParallel"] = json!(n);
                        }
                        node["map"] = map;
                    }
                    Kind::Signal {
                        timeout_ms,
                        default,
                    } => {
                        let mut wait = json!({ "signal": format!("s{i}") });
                        if let Some(t) = timeout_ms {
                            wait["timeoutMs"] = json!(t);
                        }
                        if let Some(d) = default {
                            wait["default"] = d.clone();
                        }
                        node["wait"] = wait;
                    }
                    Kind::For(ms) => node["wait"] = json!({ "forMs": ms }),
                    Kind::Until(at) => node["wait"] = json!({ "until": at }),
                }
                node
            })
            .collect();
        json!({
            "name": "generated-rich",
            "nodes": nodes,
            "opts": { "onFailure": if self.fail_fast { "failFast" } else { "continue" } },
        })
    }
}

/// What a trigger rule says over the parents' statuses, per the spec's docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ModelVerdict {
    Wait,
    Run,
    Skip,
}

/// Counts of what the random runs exercised, to show they reach every feature.
#[derive(Debug, Default, Clone, Copy)]
struct Coverage {
    begins_by_rule: [u64; 5],
    trigger_skips: u64,
    condition_true: u64,
    condition_false: u64,
    condition_errors: u64,
    maps_expanded: u64,
    maps_completed: u64,
    maps_failed_with_elements: u64,
    map_expand_failures: u64,
    maps_capped: u64,
    partial_retries: u64,
    signals: u64,
    timers_fired: u64,
    timeouts: u64,
    reruns_running: u64,
    reruns_ended: u64,
    refused_reruns: u64,
    retries: u64,
    crashes: u64,
    late_reports: u64,
}

impl Coverage {
    fn add(&mut self, o: &Coverage) {
        for (a, b) in self.begins_by_rule.iter_mut().zip(o.begins_by_rule) {
            *a += b;
        }
        self.trigger_skips += o.trigger_skips;
        self.condition_true += o.condition_true;
        self.condition_false += o.condition_false;
        self.condition_errors += o.condition_errors;
        self.maps_expanded += o.maps_expanded;
        self.maps_completed += o.maps_completed;
        self.maps_failed_with_elements += o.maps_failed_with_elements;
        self.map_expand_failures += o.map_expand_failures;
        self.maps_capped += o.maps_capped;
        self.partial_retries += o.partial_retries;
        self.signals += o.signals;
        self.timers_fired += o.timers_fired;
        self.timeouts += o.timeouts;
        self.reruns_running += o.reruns_running;
        self.reruns_ended += o.reruns_ended;
        self.refused_reruns += o.refused_reruns;
        self.retries += o.retries;
        self.crashes += o.crashes;
        self.late_reports += o.late_reports;
    }
}

/// Drives one flow with maps, conditions, trigger rules and waits, checking the
/// model after every input.
struct Rich {
    dag: Arc<Dag>,
    model: Vec<Model>,
    fail_fast: bool,
    state: FlowState,
    /// Never restored: must agree with `state` on every effect.
    shadow: FlowState,
    rng: Rng,
    now: u64,
    log: Vec<(Input, u64)>,
    all_effects: Vec<Effect>,
    /// Jobs enqueued and neither answered nor cancelled, by (node, attempt).
    outstanding: BTreeMap<(usize, u32), Outstanding>,
    enqueued: HashSet<(usize, u32)>,
    /// Job reports that were accepted, for duplicate deliveries.
    accepted: Vec<Input>,
    /// Jobs cancelled: a worker may still report them.
    cancelled: Vec<(usize, u32)>,
    /// The result of each accepted completion of a job, by node.
    results: BTreeMap<usize, Arc<str>>,
    last_seq: u64,
    finished_this_run: u32,
    runs: u32,
    cov: Coverage,
}

impl Rich {
    fn new(dag: Arc<Dag>, model: Vec<Model>, fail_fast: bool, seed: u64) -> Self {
        let state = FlowState::new(flow_id(), Arc::clone(&dag), T0);
        Rich {
            shadow: state.clone(),
            dag,
            model,
            fail_fast,
            state,
            rng: Rng(seed),
            now: T0,
            log: Vec::new(),
            all_effects: Vec::new(),
            outstanding: BTreeMap::new(),
            enqueued: HashSet::new(),
            accepted: Vec::new(),
            cancelled: Vec::new(),
            results: BTreeMap::new(),
            last_seq: 0,
            finished_this_run: 0,
            runs: 0,
            cov: Coverage::default(),
        }
    }

    fn n(&self) -> usize {
        self.dag.len()
    }

    /// The trigger rule of `i` over these parent statuses.
    fn verdict(&self, i: usize, status: &[NodeStatus]) -> ModelVerdict {
        let m = &self.model[i];
        if m.parents.is_empty() {
            return ModelVerdict::Run;
        }
        let ps: Vec<(NodeStatus, bool)> = m
            .parents
            .iter()
            .map(|&p| (status[p], self.model[p].cof))
            .collect();
        let all_terminal = ps.iter().all(|(s, _)| s.is_terminal());
        let completed = |s: &NodeStatus| *s == NodeStatus::Completed;
        let failed = |s: &NodeStatus| *s == NodeStatus::Failed;
        let decided = |skip: bool, run: bool| {
            if skip {
                ModelVerdict::Skip
            } else if run {
                ModelVerdict::Run
            } else {
                ModelVerdict::Wait
            }
        };
        match m.rule {
            // allSuccess: a parent failed with continueOnFailure counts as a success.
            0 => decided(
                ps.iter()
                    .any(|(s, cof)| s.is_terminal() && !completed(s) && !(failed(s) && *cof)),
                all_terminal,
            ),
            1 => decided(false, all_terminal),
            2 => {
                if ps.iter().any(|(s, _)| completed(s)) {
                    ModelVerdict::Run
                } else {
                    decided(all_terminal, false)
                }
            }
            3 => decided(ps.iter().any(|(s, _)| failed(s)), all_terminal),
            _ => decided(
                ps.iter().any(|(s, _)| s.is_terminal() && !failed(s)),
                all_terminal,
            ),
        }
    }

    /// A parent's value in a condition, as `job_input` gives it.
    fn parent_value(&self, p: usize, status: NodeStatus) -> Value {
        let n = self.state.node(NodeIdx::from_usize(p));
        match (&n.result, status) {
            (Some(r), NodeStatus::Completed | NodeStatus::Failed) => {
                serde_json::from_str(r).unwrap()
            }
            (_, NodeStatus::Failed) => json!({ "error": n.error.as_deref().unwrap() }),
            _ => Value::Null,
        }
    }

    /// The condition of `i` evaluated as CEL would: `Err` when it cannot be.
    fn condition(&self, i: usize, status: &[NodeStatus]) -> Result<bool, ()> {
        let m = &self.model[i];
        // `parents.p.v` of a value without a field `v` (null, an error, a map's
        // array, a timer's `firedAt`) is an error.
        let greater = |p: usize, k: i64| -> Result<bool, ()> {
            let value = self.parent_value(p, status[p]);
            match value
                .as_object()
                .and_then(|o| o.get("v"))
                .and_then(Value::as_i64)
            {
                Some(v) => Ok(v > k),
                None => Err(()),
            }
        };
        match m.when {
            None => Ok(true),
            Some(Cond::Flag) => Ok(m.flag),
            Some(Cond::NotFlag) => Ok(!m.flag),
            Some(Cond::ParentV(p, k)) => greater(p, k),
            Some(Cond::ParentVOrFlag(p, k)) => match (greater(p, k), m.flag) {
                (Ok(true), _) | (_, true) => Ok(true),
                (Ok(false), false) => Ok(false),
                (Err(()), false) => Err(()),
            },
        }
    }

    /// The DAG nodes downstream of `roots`, themselves included.
    fn downstream(&self, roots: &[usize]) -> Vec<bool> {
        let mut mask = vec![false; self.n()];
        let mut stack = roots.to_vec();
        while let Some(i) = stack.pop() {
            if !std::mem::replace(&mut mask[i], true) {
                stack.extend((0..self.n()).filter(|&c| self.model[c].parents.contains(&i)));
            }
        }
        mask
    }

    fn apply(&mut self, input: Input) -> Vec<Effect> {
        let before = self.state.clone();
        let effects = self.state.apply(input.clone(), self.now);
        if std::env::var_os("DAGFLOW_DEBUG").is_some() {
            eprintln!("@{} {input:?}\n  -> {effects:?}", self.now);
        }
        let shadow_effects = self.shadow.apply(input.clone(), self.now);
        assert_eq!(
            effects, shadow_effects,
            "{input:?}: a restored flow behaves differently from one never restored"
        );
        self.log.push((input.clone(), self.now));
        self.all_effects.extend(effects.iter().cloned());
        self.check(&before, &input, &effects);
        effects
    }

    fn check(&mut self, before: &FlowState, input: &Input, effects: &[Effect]) {
        let n = self.n();
        check_shape(effects, before.seq(), before.status(), &self.state);
        assert!(self.state.nodes().len() >= before.nodes().len());
        if effects.is_empty() {
            assert_eq!(self.state.header(), before.header(), "{input:?}");
            assert_eq!(self.state.nodes(), before.nodes(), "{input:?}");
        } else {
            let persisted = persisted(effects);
            for (i, node) in self.state.nodes().iter().enumerate() {
                if before.nodes().get(i) != Some(node) {
                    assert!(
                        persisted.contains(&NodeIdx::from_usize(i)),
                        "{input:?}: node {i} changed but is not persisted"
                    );
                }
            }
        }

        // What a Retry or Rerun resets, per the model.
        let mut reset = vec![false; n];
        let mut partial = Vec::new();
        if !effects.is_empty() {
            match input {
                Input::Rerun { node } => reset = self.downstream(&[node.as_usize()]),
                Input::Retry => {
                    let roots: Vec<usize> = (0..n)
                        .filter(|&i| {
                            matches!(
                                before.nodes()[i].status,
                                NodeStatus::Failed | NodeStatus::Skipped | NodeStatus::Cancelled
                            )
                        })
                        .collect();
                    reset = self.downstream(&roots);
                    partial = roots
                        .into_iter()
                        .filter(|&m| {
                            before.nodes()[m].elements.is_some()
                                && self.model[m].parents.iter().all(|&p| !reset[p])
                        })
                        .collect();
                }
                _ => {}
            }
        }

        self.check_decisions(before, input, effects, &reset);
        self.check_model_queue(before, input, effects);
        self.check_told(before, effects);

        // 3. A re-run changes only the node and what is downstream of it (a retry
        // likewise only what it re-runs; a map re-run in part keeps its completed
        // elements as they were).
        if matches!(input, Input::Rerun { .. } | Input::Retry) && !effects.is_empty() {
            for (i, old) in before.nodes().iter().enumerate() {
                if i < n && reset[i] {
                    continue;
                }
                let new = &self.state.nodes()[i];
                let kept_element = i >= n
                    && before
                        .owner(NodeIdx::from_usize(i))
                        .is_some_and(|(m, _)| partial.contains(&m.as_usize()))
                    && old.status != NodeStatus::Completed;
                if !kept_element {
                    assert_eq!(new, old, "{input:?} changed node {i}, not downstream");
                }
            }
            for i in (0..n).filter(|&i| reset[i]) {
                let (old, new) = (&before.nodes()[i], &self.state.nodes()[i]);
                assert!(new.attempt >= old.attempt, "attempts never go back");
                if matches!(
                    new.status,
                    NodeStatus::Queued | NodeStatus::Active | NodeStatus::Waiting
                ) && !partial.contains(&i)
                {
                    assert!(
                        new.attempt > old.attempt,
                        "node {i} re-ran on its old attempt"
                    );
                }
            }
            if matches!(input, Input::Retry) {
                self.cov.retries += 1;
                self.cov.partial_retries += partial.len() as u64;
            }
        }

        // 4. A waiting node ends only by its signal or at its deadline.
        for (i, (old, new)) in before.nodes()[..n]
            .iter()
            .zip(&self.state.nodes()[..n])
            .enumerate()
        {
            if old.status != NodeStatus::Waiting || new.status == NodeStatus::Waiting && new == old
            {
                continue;
            }
            let node = NodeIdx::from_usize(i);
            let due = old.due_at.is_some_and(|d| d <= self.now);
            match (new.status, input) {
                (NodeStatus::Completed, Input::Signal { node: s, payload }) if *s == node => {
                    assert_eq!(new.result.as_deref(), Some(&**payload));
                    self.cov.signals += 1;
                }
                (NodeStatus::Completed, Input::Tick) => {
                    assert!(due, "wait {i} completed before its deadline");
                    let expected = match &self.model[i].kind {
                        Kind::Signal { default, .. } => {
                            self.cov.timeouts += 1;
                            default.clone().expect("a timeout without default fails")
                        }
                        _ => {
                            self.cov.timers_fired += 1;
                            json!({ "firedAt": self.now })
                        }
                    };
                    let got: Value = serde_json::from_str(new.result.as_deref().unwrap()).unwrap();
                    assert_eq!(got, expected);
                }
                (NodeStatus::Failed, Input::Tick) => {
                    assert!(due, "wait {i} failed before its deadline");
                    let Kind::Signal {
                        timeout_ms: Some(t),
                        default: None,
                    } = &self.model[i].kind
                    else {
                        panic!("wait {i} failed at a tick, yet it has a default or no timeout");
                    };
                    assert_eq!(
                        new.error.as_deref(),
                        Some(&*format!("no signal 's{i}' within {t} ms"))
                    );
                    self.cov.timeouts += 1;
                }
                (NodeStatus::Cancelled, _) => {
                    assert!(
                        self.state.status().is_terminal(),
                        "cancelled in a running flow"
                    )
                }
                (_, Input::Rerun { .. }) if reset[i] => {}
                (s, _) => panic!("{input:?}: wait {i} went from waiting to {s:?}"),
            }
        }
        match input {
            Input::Tick => {
                let any_due = before.status() == FlowStatus::Running
                    && before.nodes()[..n].iter().any(|x| {
                        x.status == NodeStatus::Waiting && x.due_at.is_some_and(|d| d <= self.now)
                    });
                assert_eq!(
                    !effects.is_empty(),
                    any_due,
                    "a tick acts iff a wait is due"
                );
            }
            Input::Signal { node, .. } => {
                let i = node.as_usize();
                let takes = i < n
                    && matches!(self.model[i].kind, Kind::Signal { .. })
                    && before.status() == FlowStatus::Running
                    && before.nodes()[i].status == NodeStatus::Waiting;
                assert_eq!(before.signal_refusal(*node).is_none(), takes);
                assert_eq!(!effects.is_empty(), takes, "{input:?}");
            }
            Input::Rerun { node } => {
                let i = node.as_usize();
                // In failFast mode a re-run must cover every failure (else the flow
                // would be running with a failure it should have stopped at).
                let uncovered_failure = || {
                    let reset = self.downstream(&[i]);
                    (0..n).any(|f| {
                        before.nodes()[f].status == NodeStatus::Failed
                            && !self.model[f].cof
                            && !reset[f]
                    })
                };
                let refused = i >= n
                    || before.status() == FlowStatus::Running
                        && (self.fail_fast
                            || before.seq() == 0
                            || !before.nodes()[i].status.is_terminal())
                    || self.fail_fast && uncovered_failure();
                assert_eq!(before.rerun_refusal(*node).is_some(), refused);
                assert_eq!(effects.is_empty(), refused, "{input:?}");
                if refused {
                    self.cov.refused_reruns += 1;
                } else if before.status().is_terminal() {
                    self.cov.reruns_ended += 1;
                } else {
                    self.cov.reruns_running += 1;
                }
            }
            _ => {}
        }
        self.check_invariants();
    }

    /// Property 1. Replays the events of one apply in order, so that each decision is
    /// judged on the parents' statuses at that moment: nothing runs unless its
    /// trigger rule holds and its condition is true; nothing is skipped or fails
    /// without a job unless the rule or the condition says so.
    fn check_decisions(
        &mut self,
        before: &FlowState,
        input: &Input,
        effects: &[Effect],
        reset: &[bool],
    ) {
        let n = self.n();
        let mut replay: Vec<NodeStatus> = before.nodes()[..n]
            .iter()
            .enumerate()
            .map(|(i, x)| {
                if reset[i] {
                    NodeStatus::Pending
                } else {
                    x.status
                }
            })
            .collect();
        for event in events(effects) {
            let Some(node) = event.node else { continue };
            let EventStatus::Node(s) = event.status else {
                panic!("a node event with a flow status: {event:?}");
            };
            let i = node.as_usize();
            if i >= n {
                if s == NodeStatus::Queued {
                    let (m, _) = self.state.owner(node).expect("a queued element is live");
                    assert_eq!(
                        replay[m.as_usize()],
                        NodeStatus::Active,
                        "{input:?}: element {i} queued while its map is not active"
                    );
                }
                continue;
            }
            let prev = replay[i];
            let model = &self.model[i];
            let begins = match s {
                NodeStatus::Queued => !matches!(prev, NodeStatus::Queued | NodeStatus::Active),
                NodeStatus::Waiting => true,
                NodeStatus::Active => model.is_map() && prev != NodeStatus::Active,
                _ => false,
            };
            let statuses = |replay: &[NodeStatus]| -> Vec<(usize, NodeStatus)> {
                model.parents.iter().map(|&p| (p, replay[p])).collect()
            };
            if begins {
                assert!(
                    prev == NodeStatus::Pending,
                    "{input:?}: node {i} began from {prev:?}"
                );
                assert_eq!(
                    self.verdict(i, &replay),
                    ModelVerdict::Run,
                    "{input:?}: node {i} began ({s:?}) while trigger {} does not hold over {:?}",
                    RULES[model.rule],
                    statuses(&replay)
                );
                assert_eq!(
                    self.condition(i, &replay),
                    Ok(true),
                    "{input:?}: node {i} began ({s:?}) while its condition {:?} is not true",
                    model.when.map(Cond::source)
                );
                match s {
                    NodeStatus::Queued => assert!(!model.is_map() && !model.is_wait()),
                    NodeStatus::Waiting => assert!(model.is_wait()),
                    _ => {}
                }
                self.cov.begins_by_rule[model.rule] += 1;
                if model.is_map() {
                    self.cov.maps_expanded += 1;
                }
                if model.when.is_some() {
                    self.cov.condition_true += 1;
                }
            }
            match s {
                NodeStatus::Skipped => {
                    assert_eq!(prev, NodeStatus::Pending, "node {i} skipped from {prev:?}");
                    let reason = event.reason.as_deref().expect("a skip event has a reason");
                    if let Some(cond) = model.when.filter(|_| reason.starts_with("condition")) {
                        assert_eq!(self.verdict(i, &replay), ModelVerdict::Run);
                        assert_eq!(self.condition(i, &replay), Ok(false), "{reason}");
                        assert_eq!(reason, format!("condition `{}` is false", cond.source()));
                        self.cov.condition_false += 1;
                    } else if reason.starts_with("map source") {
                        // A map whose rule holds but whose source was skipped or
                        // cancelled has nothing to map over: skipped too.
                        let Kind::Map { from, .. } = &model.kind else {
                            panic!("node {i} is no map: {reason}");
                        };
                        assert_eq!(self.verdict(i, &replay), ModelVerdict::Run);
                        assert!(
                            matches!(replay[*from], NodeStatus::Skipped | NodeStatus::Cancelled),
                            "{reason}"
                        );
                    } else {
                        assert_eq!(
                            self.verdict(i, &replay),
                            ModelVerdict::Skip,
                            "{input:?}: node {i} skipped ({reason}) over {:?}",
                            statuses(&replay)
                        );
                        assert!(
                            reason.ends_with(&format!("(trigger {})", RULES[model.rule])),
                            "{reason}"
                        );
                        self.cov.trigger_skips += 1;
                    }
                }
                NodeStatus::Completed if model.is_map() => self.cov.maps_completed += 1,
                NodeStatus::Failed if prev == NodeStatus::Active && model.is_map() => {
                    self.cov.maps_failed_with_elements += 1;
                }
                NodeStatus::Failed if prev == NodeStatus::Pending => {
                    // Failed without a job: its condition or its map.
                    assert_eq!(self.verdict(i, &replay), ModelVerdict::Run);
                    let error = event.error.as_deref().expect("a failure has an error");
                    match self.condition(i, &replay) {
                        Err(()) => {
                            let source = model.when.map(Cond::source).unwrap();
                            assert!(
                                error.starts_with(&format!(
                                    "condition `{source}` could not be evaluated: "
                                )),
                                "{error}"
                            );
                            self.cov.condition_errors += 1;
                        }
                        Ok(true) => {
                            assert!(model.is_map(), "node {i} failed at once: {error}");
                            self.check_expand_failure(i, error, &replay);
                        }
                        Ok(false) => panic!("node {i} failed although its condition is false"),
                    }
                }
                _ => {}
            }
            replay[i] = s;
        }
    }

    /// A map that could not expand: the message says why, and it is right.
    fn check_expand_failure(&mut self, i: usize, error: &str, replay: &[NodeStatus]) {
        let Kind::Map {
            from,
            path,
            max_items,
            ..
        } = &self.model[i].kind
        else {
            unreachable!()
        };
        let source = node_name(*from);
        self.cov.map_expand_failures += 1;
        if replay[*from] != NodeStatus::Completed {
            // Its trigger rule let it run without its source.
            assert_eq!(
                error,
                format!(
                    "map source '{source}' has no result (it is {})",
                    replay[*from].as_str()
                )
            );
            return;
        }
        let result: Value = serde_json::from_str(
            self.state
                .node(NodeIdx::from_usize(*from))
                .result
                .as_deref()
                .unwrap(),
        )
        .unwrap();
        let expected = match result.pointer(path) {
            None => format!("path '{path}' is not found in the result of '{source}'"),
            Some(Value::Array(items)) => format!(
                "map over '{source}' has {} elements, more than maxItems {}",
                items.len(),
                max_items.expect("an array within the default maxItems expands")
            ),
            Some(Value::Number(_)) => {
                format!("path '{path}' in the result of '{source}' is a number, not an array")
            }
            Some(Value::Object(_)) => {
                format!("path '{path}' in the result of '{source}' is an object, not an array")
            }
            Some(other) => panic!("unexpected source value {other}"),
        };
        assert_eq!(error, expected);
    }

    /// The model queue: jobs enqueued once per attempt, only for jobs, with the
    /// right delay and input; answers and cancellations take them off.
    fn check_model_queue(&mut self, before: &FlowState, input: &Input, effects: &[Effect]) {
        if !effects.is_empty() {
            match input {
                Input::JobCompleted {
                    node,
                    attempt,
                    result,
                } => {
                    assert!(self
                        .outstanding
                        .remove(&(node.as_usize(), *attempt))
                        .is_some());
                    self.results.insert(node.as_usize(), Arc::clone(result));
                    self.accepted.push(input.clone());
                }
                Input::JobFailed { node, attempt, .. }
                | Input::JobCancelled { node, attempt, .. } => {
                    assert!(self
                        .outstanding
                        .remove(&(node.as_usize(), *attempt))
                        .is_some());
                    self.accepted.push(input.clone());
                }
                Input::JobStarted { node, attempt, .. } | Input::Progress { node, attempt, .. } => {
                    self.outstanding
                        .get_mut(&(node.as_usize(), *attempt))
                        .expect("start of a job that is not outstanding")
                        .started = true;
                    if matches!(input, Input::JobStarted { .. }) {
                        self.accepted.push(input.clone());
                    }
                }
                Input::Start | Input::Retry => {
                    if matches!(input, Input::Retry) {
                        assert_eq!(self.finished_this_run, 1);
                    }
                    self.finished_this_run = 0;
                    self.runs += 1;
                }
                Input::Rerun { .. } if before.status().is_terminal() => {
                    assert_eq!(self.finished_this_run, 1);
                    self.finished_this_run = 0;
                    self.runs += 1;
                }
                _ => {}
            }
        }
        for effect in effects {
            match effect {
                Effect::Enqueue(job) => self.check_enqueue(job),
                Effect::CancelJob { node, attempt } => {
                    let key = (node.as_usize(), *attempt);
                    assert!(
                        self.outstanding.remove(&key).is_some(),
                        "CancelJob for a job that is not outstanding: {key:?}"
                    );
                    self.cancelled.push(key);
                }
                Effect::Emit(event) => {
                    assert_eq!(event.seq, self.last_seq + 1, "a gap in seq");
                    self.last_seq = event.seq;
                    assert_eq!(event.ts, self.now);
                }
                Effect::Finished(status) => {
                    self.finished_this_run += 1;
                    assert_eq!(self.finished_this_run, 1, "Finished twice in one run");
                    assert_eq!(*status, self.state.status());
                }
                Effect::Persist(_) => {}
            }
        }
    }

    fn check_enqueue(&mut self, job: &EnqueueJob) {
        let i = job.node.as_usize();
        assert!(
            self.enqueued.insert((i, job.attempt)),
            "({i}, {}) enqueued twice",
            job.attempt
        );
        assert!(
            self.state.is_job(job.node),
            "enqueue of node {i}, not a job"
        );
        let node = self.state.node(job.node);
        let owner = self.state.job_node(job.node).as_usize();
        let model = &self.model[owner];
        assert!(!model.is_wait());
        assert_eq!(
            i >= self.n(),
            model.is_map(),
            "a map's jobs are its elements"
        );
        let retry = job.attempt - node.run_first_attempt;
        assert!(retry < model.attempts);
        let expected_delay = if retry == 0 {
            0
        } else {
            model.backoff.map_or(0, |d| {
                Backoff {
                    kind: BackoffKind::Exponential,
                    delay_ms: d,
                }
                .delay_for(retry)
            })
        };
        assert_eq!(
            job.delay_ms, expected_delay,
            "node {i} attempt {}",
            job.attempt
        );
        let input: Value = serde_json::from_str(&self.state.job_input(job.node)).unwrap();
        assert_eq!(input["data"], json!({ "i": owner, "flag": model.flag }));
        // An element gets its map's parents but the map's source.
        let source = match (&model.kind, self.state.owner(job.node)) {
            (Kind::Map { from, .. }, Some(_)) => Some(*from),
            _ => None,
        };
        assert_eq!(
            input["parents"].as_object().unwrap().len(),
            model.parents.len() - usize::from(source.is_some())
        );
        if let Some(from) = source {
            let name = self
                .state
                .dag()
                .node(NodeIdx::from_usize(from))
                .name
                .to_string();
            assert!(
                input["parents"].get(&name).is_none(),
                "element {i} got its source"
            );
        }
        if let Kind::Map { from, path, .. } = &model.kind {
            let (_, offset) = self.state.owner(job.node).unwrap();
            let source: Value = serde_json::from_str(
                self.state
                    .node(NodeIdx::from_usize(*from))
                    .result
                    .as_deref()
                    .unwrap(),
            )
            .unwrap();
            assert_eq!(input["index"], json!(offset));
            assert_eq!(
                &input["item"],
                &source.pointer(path).unwrap()[offset as usize],
                "element {i} got another item"
            );
        }
        self.outstanding.insert(
            (i, job.attempt),
            Outstanding {
                due: self.now + job.delay_ms,
                started: false,
            },
        );
    }

    /// Every status change of a node that is still live is told, and the last
    /// event of a node in an apply tells its status after it.
    fn check_told(&self, before: &FlowState, effects: &[Effect]) {
        let mut last: BTreeMap<usize, NodeStatus> = BTreeMap::new();
        for event in events(effects) {
            if let (Some(node), EventStatus::Node(s)) = (event.node, event.status) {
                last.insert(node.as_usize(), s);
            }
        }
        for (i, new) in self.state.nodes().iter().enumerate() {
            let live = i < self.n() || self.state.owner(NodeIdx::from_usize(i)).is_some();
            if !live {
                assert!(!last.contains_key(&i), "an event for a stale element slot");
                continue;
            }
            let old = before
                .nodes()
                .get(i)
                .map_or(NodeStatus::Pending, |o| o.status);
            if old != new.status {
                assert!(
                    last.contains_key(&i),
                    "node {i} ({}) went from {old:?} to {:?} without an event",
                    self.state.node_name(NodeIdx::from_usize(i)),
                    new.status
                );
            }
            if let Some(s) = last.get(&i) {
                assert_eq!(*s, new.status, "node {i}: its last event is stale");
            }
        }
    }

    fn check_invariants(&mut self) {
        attempt_history::check_history(&self.state, &self.accepted);
        let n = self.n();
        let state = &self.state;
        let dag_nodes = &state.nodes()[..n];
        let all_terminal = dag_nodes.iter().all(|x| x.status.is_terminal());
        assert_eq!(state.status().is_terminal(), all_terminal);
        assert_eq!(
            state.remaining(),
            dag_nodes.iter().filter(|x| !x.status.is_terminal()).count()
        );
        // The model queue holds exactly the live jobs' current attempts.
        let live: Vec<(usize, u32)> = (0..state.nodes().len())
            .filter(|&i| state.is_job(NodeIdx::from_usize(i)))
            .filter(|&i| {
                matches!(
                    state.nodes()[i].status,
                    NodeStatus::Queued | NodeStatus::Active
                )
            })
            .map(|i| (i, state.nodes()[i].attempt))
            .collect();
        assert_eq!(live, self.outstanding.keys().copied().collect::<Vec<_>>());
        let running = state.status() == FlowStatus::Running && state.seq() > 0;
        let waiting = dag_nodes.iter().any(|x| x.status == NodeStatus::Waiting);
        if running {
            assert!(
                !self.outstanding.is_empty() || waiting,
                "a running flow with no job and no wait: stuck"
            );
        }
        // The earliest deadline.
        let deadline = dag_nodes
            .iter()
            .filter(|x| x.status == NodeStatus::Waiting)
            .filter_map(|x| x.due_at)
            .min()
            .filter(|_| state.status() == FlowStatus::Running);
        assert_eq!(state.next_deadline(), deadline);

        let statuses: Vec<NodeStatus> = dag_nodes.iter().map(|x| x.status).collect();
        let mut maps = Vec::new();
        for (i, x) in dag_nodes.iter().enumerate() {
            let idx = NodeIdx::from_usize(i);
            let model = &self.model[i];
            if running && x.status == NodeStatus::Pending {
                assert_eq!(
                    self.verdict(i, &statuses),
                    ModelVerdict::Wait,
                    "node {i} is pending though its trigger rule is decided"
                );
            }
            if x.status == NodeStatus::Skipped {
                assert!(x.reason.is_some(), "node {i} skipped without a reason");
            }
            match &model.kind {
                Kind::Job => {
                    assert!(x.status != NodeStatus::Waiting);
                    assert!(x.elements.is_none());
                    if x.status == NodeStatus::Completed {
                        assert_eq!(x.result.as_ref(), self.results.get(&i));
                    }
                }
                Kind::Signal { timeout_ms, .. } => {
                    assert!(!matches!(x.status, NodeStatus::Queued | NodeStatus::Active));
                    if x.status == NodeStatus::Waiting {
                        let start = x.started_at.unwrap();
                        assert_eq!(x.due_at, timeout_ms.map(|t| start + t));
                    }
                }
                Kind::For(ms) => {
                    assert!(!matches!(x.status, NodeStatus::Queued | NodeStatus::Active));
                    if x.status == NodeStatus::Waiting {
                        assert_eq!(x.due_at, Some(x.started_at.unwrap() + ms));
                    }
                }
                Kind::Until(at) => {
                    assert!(!matches!(x.status, NodeStatus::Queued | NodeStatus::Active));
                    if x.status == NodeStatus::Waiting {
                        assert_eq!(x.due_at, Some(*at));
                    }
                }
                Kind::Map { max_parallel, .. } => {
                    assert!(!matches!(
                        x.status,
                        NodeStatus::Queued | NodeStatus::Waiting
                    ));
                    maps.push((idx, max_parallel.unwrap_or(u32::MAX)));
                }
            }
        }
        // Completed elements hold the result their worker gave.
        for i in n..state.nodes().len() {
            let el = NodeIdx::from_usize(i);
            if state.owner(el).is_some() && state.node(el).status == NodeStatus::Completed {
                assert_eq!(state.node(el).result.as_ref(), self.results.get(&i));
            }
        }
        for (m, cap) in maps {
            self.check_map(m, cap);
        }
    }

    /// 2. A map's elements, counts and result.
    fn check_map(&mut self, m: NodeIdx, cap: u32) {
        let state = &self.state;
        let x = state.node(m);
        let Some((first, len)) = x.elements else {
            assert!(state.map_counts(m).is_none());
            assert_eq!(state.elements(m).count(), 0);
            assert!(
                matches!(
                    x.status,
                    NodeStatus::Pending
                        | NodeStatus::Skipped
                        | NodeStatus::Failed
                        | NodeStatus::Cancelled
                ),
                "map {m:?} is {:?} without elements",
                x.status
            );
            return;
        };
        let els: Vec<NodeIdx> = state.elements(m).collect();
        assert_eq!(els.len(), len as usize);
        let name = &self.dag.node(m).name;
        for (k, &el) in els.iter().enumerate() {
            assert_eq!(el.get(), first + k as u32);
            assert_eq!(state.owner(el), Some((m, k as u32)));
            assert_eq!(state.element(m, k as u32), Some(el));
            let wire = format!("{name}[{k}]");
            assert_eq!(state.node_name(el), wire);
            assert_eq!(state.lookup(&wire), Some(el));
            assert_eq!(state.job_node(el), m);
        }
        let of = |s: &[NodeStatus]| {
            els.iter()
                .filter(|&&e| s.contains(&state.node(e).status))
                .count() as u32
        };
        let running = of(&[NodeStatus::Queued, NodeStatus::Active]);
        let failed = of(&[NodeStatus::Failed]);
        let done = els
            .iter()
            .filter(|&&e| state.node(e).status.is_terminal())
            .count() as u32;
        let pending = of(&[NodeStatus::Pending]);
        assert_eq!(
            state.map_counts(m),
            Some(MapCounts {
                total: len,
                done,
                running,
                failed
            })
        );
        assert!(
            running <= cap,
            "map {m:?}: {running} running over maxParallel {cap}"
        );
        if running == cap && pending > 0 {
            self.cov.maps_capped += 1;
        }
        match x.status {
            NodeStatus::Active => {
                assert!(done < len, "an active map with every element ended");
                assert!(
                    running == cap || pending == 0,
                    "map {m:?}: {running} running under maxParallel {cap} with {pending} waiting"
                );
                assert_eq!(x.result, None);
            }
            NodeStatus::Completed => {
                let result: Value = serde_json::from_str(x.result.as_deref().unwrap()).unwrap();
                let expected: Vec<Value> = els
                    .iter()
                    .map(|&e| {
                        assert_eq!(state.node(e).status, NodeStatus::Completed);
                        serde_json::from_str(state.node(e).result.as_deref().unwrap()).unwrap()
                    })
                    .collect();
                assert_eq!(
                    result,
                    Value::Array(expected),
                    "map {m:?}: result out of order"
                );
            }
            NodeStatus::Failed => {
                assert_eq!(done, len, "a failed map with elements still running");
                let result: Value = serde_json::from_str(x.result.as_deref().unwrap()).unwrap();
                let slots = result
                    .as_array()
                    .expect("a failed map's result is an array");
                assert_eq!(slots.len(), len as usize);
                let mut first_failed = None;
                for (k, &e) in els.iter().enumerate() {
                    let el = state.node(e);
                    match el.status {
                        NodeStatus::Failed => {
                            first_failed.get_or_insert((k, el.error.clone().unwrap()));
                            assert_eq!(slots[k], json!({ "error": el.error.as_deref().unwrap() }));
                        }
                        NodeStatus::Completed => {
                            let r: Value =
                                serde_json::from_str(el.result.as_deref().unwrap()).unwrap();
                            assert_eq!(slots[k], r);
                        }
                        _ => assert_eq!(slots[k], Value::Null),
                    }
                }
                let (k, error) = first_failed.expect("a failed map with no failed element");
                assert_eq!(
                    x.error.as_deref(),
                    Some(&*format!(
                        "{failed} of {len} elements failed; first {name}[{k}]: {error}"
                    ))
                );
            }
            NodeStatus::Cancelled => {
                assert_eq!(done, len, "a cancelled map with elements still running");
            }
            s => panic!("map {m:?} is {s:?} with elements"),
        }
    }

    /// A crash: rebuild the flow from its records as the store would give them
    /// back, then resume and repair as the engine does.
    fn crash(&mut self) {
        self.cov.crashes += 1;
        let nodes: Vec<NodeState> = self
            .state
            .nodes()
            .iter()
            .map(|x| {
                crate::records::NodeRecord::from_state(x)
                    .into_state()
                    .unwrap()
            })
            .collect();
        let record = crate::records::FlowRecord {
            name: self.dag.name.to_string(),
            status: crate::records::status_code(self.state.status()),
            seq: self.state.seq(),
            created_at: self.state.header().created_at,
            updated_at: self.state.header().updated_at,
            finished_at: self.state.header().finished_at,
            node_count: self.n() as u32,
            done_count: 0,
            idempotency_key: None,
            engine_error: None,
        };
        let mut restored = FlowState::restore(
            self.state.id(),
            Arc::clone(&self.dag),
            record.header().unwrap(),
            nodes,
        );
        assert_eq!(observable(&restored), observable(&self.state));
        assert_eq!(restored.next_deadline(), self.state.next_deadline());
        let mut expected: Vec<EnqueueJob> = self
            .outstanding
            .iter()
            .map(|(&(node, attempt), job)| EnqueueJob {
                node: NodeIdx::from_usize(node),
                attempt,
                delay_ms: if job.started {
                    0
                } else {
                    job.due.saturating_sub(self.now)
                },
            })
            .collect();
        let mut resumed = restored.resume(self.now);
        resumed.sort_by_key(|j| (j.node, j.attempt));
        expected.sort_by_key(|j| (j.node, j.attempt));
        assert_eq!(resumed, expected);
        for i in 0..self.state.nodes().len() {
            let idx = NodeIdx::from_usize(i);
            assert_eq!(restored.owner(idx), self.state.owner(idx));
            assert_eq!(restored.is_job(idx), self.state.is_job(idx));
            if self.state.is_job(idx) {
                assert_eq!(restored.job_input(idx), self.state.job_input(idx));
            }
            if i < self.n() {
                assert_eq!(restored.map_counts(idx), self.state.map_counts(idx));
            }
        }
        // A consistent snapshot needs no repair.
        assert_eq!(restored.repair(self.now), Vec::new());
        self.state = restored;
    }

    /// A report that is not about a live job's current attempt: ignored.
    fn stale_input(&mut self) -> Input {
        let len = self.state.nodes().len() as u64;
        let i = self.rng.below(len) as usize;
        let node = NodeIdx::from_usize(i);
        let x = self.state.node(node);
        let live = self.state.is_job(node)
            && matches!(x.status, NodeStatus::Queued | NodeStatus::Active)
            && self.state.status() == FlowStatus::Running;
        let attempt = match self.rng.below(3) {
            0 => x.attempt + 1,
            1 => x.attempt.saturating_sub(1),
            _ if live => x.attempt + 7,
            // A wait, a map, a stale element slot or an ended job, on its own attempt.
            _ => x.attempt,
        };
        self.report(node, attempt, "stale")
    }

    fn report(&mut self, node: NodeIdx, attempt: u32, what: &str) -> Input {
        match self.rng.below(5) {
            4 => Input::JobCancelled {
                node,
                attempt,
                reason: format!("{what}: cancelled by its concurrency key"),
            },
            0 => Input::JobStarted {
                node,
                attempt,
                worker: None,
            },
            1 => Input::JobCompleted {
                node,
                attempt,
                result: Arc::from(format!("{{\"{what}\":true,\"v\":1,\"items\":[1]}}").as_str()),
            },
            2 => Input::Progress {
                node,
                attempt,
                progress: Arc::from(format!("\"{what}\"").as_str()),
            },
            _ => Input::JobFailed {
                node,
                attempt,
                error: what.into(),
                retryable: false,
                cause: None,
            },
        }
    }

    fn pick_outstanding(&mut self) -> Option<(NodeIdx, u32)> {
        if self.outstanding.is_empty() {
            return None;
        }
        let k = self.rng.below(self.outstanding.len() as u64) as usize;
        let (&(node, attempt), _) = self.outstanding.iter().nth(k).unwrap();
        Some((NodeIdx::from_usize(node), attempt))
    }

    /// A job's result: a number for conditions and an array for maps.
    fn job_result(&mut self, node: NodeIdx, attempt: u32) -> Arc<str> {
        let v = self.rng.below(10);
        let value = if node.as_usize() >= self.n() {
            json!({ "v": v, "el": node.as_usize(), "attempt": attempt })
        } else if self.rng.chance(10) {
            json!({ "v": v, "n": node.as_usize() })
        } else {
            let items: Vec<Value> = (0..self.rng.below(6))
                .map(|k| json!({ "k": k, "of": node.as_usize() }))
                .collect();
            json!({ "v": v, "items": items, "n": node.as_usize(), "attempt": attempt })
        };
        Arc::from(value.to_string().as_str())
    }

    fn waiting_signals(&self) -> Vec<NodeIdx> {
        (0..self.n())
            .filter(|&i| matches!(self.model[i].kind, Kind::Signal { .. }))
            .filter(|&i| self.state.nodes()[i].status == NodeStatus::Waiting)
            .map(NodeIdx::from_usize)
            .collect()
    }

    fn send_signal(&mut self, node: NodeIdx) -> Vec<Effect> {
        let payload = json!({ "v": self.rng.below(10), "sig": self.now });
        self.apply(Input::Signal {
            node,
            payload: Arc::from(payload.to_string().as_str()),
        })
    }

    /// Moves the clock to the next deadline and ticks.
    fn tick_to_deadline(&mut self) -> Vec<Effect> {
        if let Some(d) = self.state.next_deadline() {
            self.now = self.now.max(d + self.rng.below(3));
        }
        self.apply(Input::Tick)
    }

    fn random_node(&mut self) -> NodeIdx {
        if self.rng.chance(10) {
            NodeIdx::from_usize(self.rng.below(self.state.nodes().len() as u64 + 2) as usize)
        } else {
            NodeIdx::from_usize(self.rng.below(self.n() as u64) as usize)
        }
    }

    /// Runs the flow to its end, over several runs when failures are injected.
    fn run(&mut self, inject_failures: bool, fail_percent: u64) {
        assert!(!self.apply(Input::Start).is_empty());
        let mut restarts_left = 3;
        let mut reruns_left = 3;
        let mut steps = 0;
        loop {
            steps += 1;
            assert!(steps < 20_000, "the flow does not end");
            self.now += self.rng.below(20);

            if self.state.status().is_terminal() {
                assert_eq!(self.finished_this_run, 1);
                // Late, duplicate and stale reports to an ended flow do nothing.
                if let Some(&(node, attempt)) = self.cancelled.last() {
                    let input = self.report(NodeIdx::from_usize(node), attempt, "late");
                    assert!(self.apply(input).is_empty());
                    self.cov.late_reports += 1;
                }
                assert!(self.apply(Input::Tick).is_empty());
                if inject_failures && restarts_left > 0 && self.rng.chance(70) {
                    restarts_left -= 1;
                    if self.state.can_retry() && self.rng.chance(60) {
                        assert!(!self.apply(Input::Retry).is_empty());
                    } else {
                        // Refused in failFast mode unless it covers every failure.
                        let node = NodeIdx::from_usize(self.rng.below(self.n() as u64) as usize);
                        self.apply(Input::Rerun { node });
                    }
                    continue;
                }
                break;
            }
            if self.rng.chance(3) {
                self.crash();
            }

            let roll = self.rng.below(1000);
            if roll < 40 && !self.accepted.is_empty() {
                let k = self.rng.below(self.accepted.len() as u64) as usize;
                let input = self.accepted[k].clone();
                let effects = self.apply(input.clone());
                assert!(effects.is_empty(), "duplicate {input:?} gave {effects:?}");
            } else if roll < 70 {
                let input = self.stale_input();
                let effects = self.apply(input.clone());
                assert!(effects.is_empty(), "stale {input:?} gave {effects:?}");
            } else if roll < 90 && !self.cancelled.is_empty() {
                let k = self.rng.below(self.cancelled.len() as u64) as usize;
                let (node, attempt) = self.cancelled[k];
                let input = self.report(NodeIdx::from_usize(node), attempt, "late");
                let effects = self.apply(input.clone());
                assert!(effects.is_empty(), "late {input:?} gave {effects:?}");
                self.cov.late_reports += 1;
            } else if roll < 95 {
                assert!(self.apply(Input::Start).is_empty());
            } else if roll < 130 {
                // A signal to any node: only a waiting signal node takes it.
                let waiting = self.waiting_signals();
                let node = if !waiting.is_empty() && self.rng.chance(60) {
                    waiting[self.rng.below(waiting.len() as u64) as usize]
                } else {
                    self.random_node()
                };
                self.send_signal(node);
            } else if roll < 170 {
                match (self.rng.below(3), self.state.next_deadline()) {
                    // Just before the next deadline: nothing may fire yet.
                    (0, Some(d)) if d > self.now + 1 => {
                        self.now = d - 1 - self.rng.below(2);
                        let due = self.state.nodes()[..self.n()].iter().any(|x| {
                            x.status == NodeStatus::Waiting
                                && x.due_at.is_some_and(|d| d <= self.now)
                        });
                        assert!(!due);
                        assert!(self.apply(Input::Tick).is_empty());
                    }
                    (1, _) => {
                        self.tick_to_deadline();
                    }
                    _ => {
                        self.apply(Input::Tick);
                    }
                }
            } else if inject_failures && roll < 195 && reruns_left > 0 {
                let node = self.random_node();
                if !self.apply(Input::Rerun { node }).is_empty() {
                    reruns_left -= 1;
                }
            } else if roll < 220 && !self.outstanding.is_empty() {
                let (node, attempt) = self.pick_outstanding().unwrap();
                let input = Input::Progress {
                    node,
                    attempt,
                    progress: Arc::from(format!("{}", self.now).as_str()),
                };
                assert!(!self.apply(input).is_empty());
            } else if inject_failures && roll < 223 {
                let effects = self.apply(Input::Cancel);
                assert_eq!(finished(&effects), Some(FlowStatus::Cancelled));
            } else if inject_failures && roll < 224 {
                let effects = self.apply(Input::Abort {
                    reason: "engine gave up".into(),
                });
                assert_eq!(finished(&effects), Some(FlowStatus::Failed));
            } else if let Some((node, attempt)) = self.pick_outstanding() {
                let started = self.outstanding[&(node.as_usize(), attempt)].started;
                let input = if !started && self.rng.chance(50) {
                    Input::JobStarted {
                        node,
                        attempt,
                        worker: Some(Arc::from(format!("w{}", attempt % 3).as_str())),
                    }
                } else if inject_failures && self.rng.chance(fail_percent) {
                    Input::JobFailed {
                        node,
                        attempt,
                        error: format!("boom {}/{attempt}", node.as_usize()),
                        retryable: self.rng.chance(60),
                        cause: match self.rng.below(10) {
                            0 => Some(FailureCause::TimedOut),
                            1 => Some(FailureCause::Stalled),
                            _ => None,
                        },
                    }
                } else {
                    let result = self.job_result(node, attempt);
                    Input::JobCompleted {
                        node,
                        attempt,
                        result,
                    }
                };
                assert!(!self.apply(input).is_empty());
            } else {
                // No job left: only waits. A signal, or time passes.
                let waiting = self.waiting_signals();
                if !waiting.is_empty()
                    && (self.state.next_deadline().is_none() || self.rng.chance(50))
                {
                    let node = waiting[self.rng.below(waiting.len() as u64) as usize];
                    assert!(!self.send_signal(node).is_empty());
                } else {
                    assert!(!self.tick_to_deadline().is_empty());
                }
            }
        }
        assert_eq!(self.finished_this_run, 1);
        assert!(self.outstanding.is_empty());
    }

    fn check_replay(&self) {
        let mut fresh = FlowState::new(flow_id(), Arc::clone(&self.dag), T0);
        let mut effects = Vec::new();
        for (input, now) in &self.log {
            effects.extend(fresh.apply(input.clone(), *now));
        }
        assert_eq!(effects, self.all_effects);
        assert_eq!(observable(&fresh), observable(&self.state));
    }
}

/// Random flows with maps, conditions, trigger rules and waits, driven by a random
/// scheduler with signals and ticks on an advancing clock, re-runs, retries,
/// duplicate, stale and late reports, cancellations and crashes: every invariant
/// holds after every input, and the inputs replay to the same flow.
#[test]
fn random_rich_flows_keep_every_invariant() {
    use proptest::test_runner::{Config, TestRunner};
    let cases = proptest_cases(256);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let total = std::cell::RefCell::new(Coverage::default());
    let result = runner.run(&rich_flow(), |flow| {
        let dag = dag(flow.spec_json());
        if std::env::var_os("DAGFLOW_DEBUG").is_some() {
            eprintln!("=== {}", flow.spec_json());
        }
        let mut sim = Rich::new(Arc::clone(&dag), flow.models(), flow.fail_fast, flow.seed);
        sim.run(flow.inject_failures, flow.fail_percent);
        prop_assert!(sim.state.status().is_terminal());
        let finished_count = sim
            .all_effects
            .iter()
            .filter(|e| matches!(e, Effect::Finished(_)))
            .count();
        prop_assert_eq!(finished_count as u32, sim.runs);
        prop_assert_eq!(sim.state.seq(), sim.last_seq);
        sim.check_replay();
        total.borrow_mut().add(&sim.cov);
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    let cov = total.into_inner();
    eprintln!("coverage over {cases} cases: {cov:?}");
    if cases >= 100 {
        // The runs reach every feature, both ways.
        assert!(cov.begins_by_rule.iter().all(|&b| b > 0), "{cov:?}");
        for (what, count) in [
            ("trigger skips", cov.trigger_skips),
            ("true conditions", cov.condition_true),
            ("false conditions", cov.condition_false),
            ("condition errors", cov.condition_errors),
            ("maps expanded", cov.maps_expanded),
            ("maps completed", cov.maps_completed),
            ("maps failed by an element", cov.maps_failed_with_elements),
            ("maps that could not expand", cov.map_expand_failures),
            ("maps at maxParallel", cov.maps_capped),
            ("partial retries", cov.partial_retries),
            ("signals", cov.signals),
            ("timers", cov.timers_fired),
            ("timeouts", cov.timeouts),
            ("re-runs in running flows", cov.reruns_running),
            ("re-runs of ended flows", cov.reruns_ended),
            ("refused re-runs", cov.refused_reruns),
            ("retries", cov.retries),
            ("crashes", cov.crashes),
            ("late reports", cov.late_reports),
        ] {
            assert!(count > 0, "no {what}: {cov:?}");
        }
    }
}

#[test]
fn an_empty_map_ends_once_so_its_child_still_waits_for_its_other_parent() {
    // Found by the random runs: an empty map told its children twice that it had
    // ended, so a child with another open parent ran early.
    let mut state = new_flow(json!({ "nodes": [
        { "name": "src" },
        { "name": "m", "parents": ["src"], "map": { "from": "src" } },
        { "name": "gate", "wait": { "signal": "go" } },
        { "name": "join", "parents": ["m", "gate"] }
    ]}));
    apply(&mut state, Input::Start, T0);
    let effects = complete(&mut state, "src", json!([]), T0 + 1);
    assert_eq!(status_of(&state, "m"), NodeStatus::Completed);
    assert_eq!(enqueued(&effects), [], "join must wait for gate");
    assert_eq!(status_of(&state, "join"), NodeStatus::Pending);
    let effects = signal(&mut state, "gate", json!(1), T0 + 2);
    assert_eq!(enqueued_names(&state, &effects), ["join"]);
    assert_eq!(
        input_of(&state, "join"),
        json!({ "data": null, "parents": { "m": [], "gate": 1 } })
    );
}

#[test]
fn a_long_chain_of_empty_maps_ends_without_overflowing_the_stack() {
    let n = spec::DEFAULT_MAX_NODES;
    let nodes: Vec<Value> = (0..n)
        .map(|i| {
            if i == 0 {
                json!({ "name": "n0" })
            } else {
                let parent = format!("n{}", i - 1);
                json!({ "name": format!("n{i}"), "parents": [parent], "map": { "from": parent } })
            }
        })
        .collect();
    let mut state = new_flow(json!({ "nodes": nodes }));
    apply(&mut state, Input::Start, T0);
    let (effects, state) = std::thread::Builder::new()
        .stack_size(256 * 1024)
        .spawn(move || {
            let effects = complete(&mut state, "n0", json!([]), T0 + 1);
            (effects, state)
        })
        .unwrap()
        .join()
        .unwrap();
    assert_eq!(finished(&effects), Some(FlowStatus::Completed));
    assert_eq!(persisted(&effects).len(), n, "each node persisted once");
    assert!(state
        .nodes()
        .iter()
        .all(|x| x.status == NodeStatus::Completed));
    assert_eq!(result_of(&state, &format!("n{}", n - 1)), json!([]));
}

#[test]
fn a_fail_fast_rerun_must_cover_every_failure_so_a_restore_does_not_cancel_it() {
    // Found by the random runs: re-running a cancelled node beside a failure left
    // the flow running with that failure, which `repair` (run at every restore)
    // took for a cut-short cancellation and cancelled again.
    let mut state = new_flow(json!({ "nodes": [
        { "name": "a" },
        { "name": "bad", "parents": ["a"] },
        { "name": "side", "parents": ["a"] },
        { "name": "below", "parents": ["bad"] }
    ], "opts": { "onFailure": "failFast" } }));
    apply(&mut state, Input::Start, T0);
    complete(&mut state, "a", json!(1), T0 + 1);
    let effects = fail(&mut state, "bad", "boom", false, T0 + 2);
    assert_eq!(finished(&effects), Some(FlowStatus::Failed));
    assert_eq!(status_of(&state, "side"), NodeStatus::Cancelled);

    let side = idx(&state, "side");
    assert_eq!(
        state.rerun_refusal(side).as_deref(),
        Some(
            "node 'bad' failed and is not downstream of 'side': a failFast flow would stop \
             again at once; re-run from a node it depends on, or retry the flow"
        )
    );
    let before = observable(&state);
    assert!(rerun(&mut state, "side", T0 + 3).is_empty());
    assert_eq!(observable(&state), before);
    assert!(state.rerun_refusal(idx(&state, "below")).is_some());

    // From `bad` or from `a` covers the failure.
    assert_eq!(state.rerun_refusal(idx(&state, "bad")), None);
    let effects = rerun(&mut state, "a", T0 + 4);
    assert_eq!(enqueued_names(&state, &effects), ["a"]);
    // A restore of the re-running flow needs no repair.
    let mut restored = FlowState::restore(
        state.id(),
        Arc::clone(state.dag()),
        state.header().clone(),
        state.nodes().to_vec(),
    );
    assert_eq!(restored.repair(T0 + 5), Vec::new());
    complete(&mut state, "a", json!(2), T0 + 6);
    complete(&mut state, "bad", json!(3), T0 + 7);
    complete(&mut state, "side", json!(4), T0 + 8);
    let effects = complete(&mut state, "below", json!(5), T0 + 9);
    assert_eq!(finished(&effects), Some(FlowStatus::Completed));

    // In continue mode a re-run beside a failure is fine: the failure stays.
    let mut state = new_flow(json!({ "nodes": [
        { "name": "bad" },
        { "name": "ok" }
    ], "opts": { "onFailure": "continue" } }));
    apply(&mut state, Input::Start, T0);
    fail(&mut state, "bad", "boom", false, T0 + 1);
    complete(&mut state, "ok", json!(1), T0 + 2);
    assert_eq!(state.status(), FlowStatus::Failed);
    rerun(&mut state, "ok", T0 + 3);
    let effects = complete(&mut state, "ok", json!(2), T0 + 4);
    assert_eq!(finished(&effects), Some(FlowStatus::Failed));
}

#[test]
fn a_partial_map_retry_tells_the_elements_that_wait_for_a_slot() {
    // Found by the random runs: elements reset by a retry beyond maxParallel went
    // back to pending without an event.
    let mut state = map_flow(json!({ "from": "src", "maxParallel": 1 }), "continue");
    apply(&mut state, Input::Start, T0);
    complete(&mut state, "src", json!([1, 2, 3]), T0 + 1);
    fail(&mut state, "m[0]", "x", false, T0 + 2);
    fail(&mut state, "m[1]", "y", false, T0 + 3);
    complete(&mut state, "m[2]", json!("c"), T0 + 4);
    assert_eq!(state.status(), FlowStatus::Failed);
    let effects = apply(&mut state, Input::Retry, T0 + 5);
    let (e0, e1) = (idx(&state, "m[0]"), idx(&state, "m[1]"));
    assert_eq!(
        enqueued(&effects),
        [EnqueueJob {
            node: e0,
            attempt: 2,
            delay_ms: 0
        }]
    );
    assert_eq!(state.node(e1).status, NodeStatus::Pending);
    assert_eq!(
        event_of(&state, &effects, "m[1]").status,
        EventStatus::Node(NodeStatus::Pending)
    );
    assert_eq!(
        event_of(&state, &effects, "m[0]").status,
        EventStatus::Node(NodeStatus::Queued)
    );
}

#[test]
fn map_counts_after_a_cancel_count_the_cancelled_elements_as_done() {
    // Found by the random runs: the counts kept the cancelled elements as running
    // until the flow was restored.
    let mut state = map_flow(json!({ "from": "src", "maxParallel": 2 }), "continue");
    apply(&mut state, Input::Start, T0);
    complete(&mut state, "src", json!([1, 2, 3]), T0 + 1);
    complete(&mut state, "m[0]", json!(0), T0 + 2);
    apply(&mut state, Input::Cancel, T0 + 3);
    let m = idx(&state, "m");
    let counts = MapCounts {
        total: 3,
        done: 3,
        running: 0,
        failed: 0,
    };
    assert_eq!(state.map_counts(m), Some(counts));
    let restored = FlowState::restore(
        state.id(),
        Arc::clone(state.dag()),
        state.header().clone(),
        state.nodes().to_vec(),
    );
    assert_eq!(restored.map_counts(m), Some(counts));
}

#[test]
fn a_cancelled_flow_says_why_on_every_node_it_stopped() {
    let mut state = new_flow(json!({ "nodes": [
        { "name": "a" },
        { "name": "b", "parents": ["a"] }
    ]}));
    apply(&mut state, Input::Start, T0);
    complete(&mut state, "a", json!(1), T0 + 1);
    apply(&mut state, Input::Cancel, T0 + 2);
    assert_eq!(status_of(&state, "b"), NodeStatus::Cancelled);
    assert_eq!(reason_of(&state, "b"), "the flow was cancelled");
    // A retry runs it again, without the reason.
    apply(&mut state, Input::Retry, T0 + 3);
    assert_eq!(state.node(idx(&state, "b")).reason, None);
    assert_eq!(state.node(idx(&state, "a")).reason, None);
}

mod attempt_history;
