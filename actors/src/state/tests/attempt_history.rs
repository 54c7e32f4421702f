//! Tests of the attempt history: each attempt keeps its times, worker, outcome and
//! error; at most `MAX_ATTEMPTS_KEPT` are kept, in order; a retry, a flow retry and
//! a re-run keep the earlier ones. `check_history` also runs after every input of
//! the random-flow simulations in `tests.rs`.

use super::*;

/// The history's invariants on every node of `state`, and that every failure the
/// simulation delivered (`accepted`) is still told with its error while it is
/// among the last attempts kept.
pub(super) fn check_history(state: &FlowState, accepted: &[Input]) {
    for (i, n) in state.nodes().iter().enumerate() {
        assert!(
            n.history.len() < MAX_ATTEMPTS_KEPT,
            "node {i}: {} earlier attempts kept",
            n.history.len()
        );
        let all: Vec<Attempt> = n.attempts().collect();
        assert!(all.len() <= MAX_ATTEMPTS_KEPT);
        for pair in all.windows(2) {
            assert!(
                pair[0].attempt < pair[1].attempt,
                "node {i}: attempts out of order: {all:?}"
            );
        }
        for a in &n.history {
            assert!(a.outcome.is_over(), "node {i}: {a:?} is kept but not over");
            assert!(
                a.attempt <= n.attempt,
                "node {i}: {a:?} after {}",
                n.attempt
            );
        }
        for a in &all {
            let times: Vec<u64> = [a.queued_at, a.started_at, a.finished_at]
                .into_iter()
                .flatten()
                .collect();
            assert!(
                times.windows(2).all(|t| t[0] <= t[1]),
                "node {i}: times out of order in {a:?}"
            );
            assert!(a.queued_at.is_some(), "node {i}: {a:?} was never queued");
            if a.outcome.is_over() && a.outcome != AttemptOutcome::Cancelled {
                assert!(
                    a.finished_at.is_some(),
                    "node {i}: {a:?} over without an end"
                );
            }
        }
    }
    for input in accepted {
        let Input::JobFailed {
            node,
            attempt,
            error,
            cause,
            ..
        } = input
        else {
            continue;
        };
        let n = state.node(*node);
        if attempt + (MAX_ATTEMPTS_KEPT as u32) <= n.attempt + 1 {
            continue; // Dropped by the cap, as it should be.
        }
        let kept = n
            .attempts()
            .find(|a| a.attempt == *attempt)
            .unwrap_or_else(|| panic!("failed attempt {attempt} of node {node:?} is gone"));
        let outcome = cause.map_or(AttemptOutcome::Failed, FailureCause::outcome);
        assert_eq!(kept.outcome, outcome, "{kept:?}");
        assert_eq!(kept.error.as_deref(), Some(error.as_str()), "{kept:?}");
    }
}

fn attempts_of(state: &FlowState, name: &str) -> Vec<Attempt> {
    state.node(idx(state, name)).attempts().collect()
}

#[test]
fn a_retry_keeps_the_first_attempts_error_worker_and_times() {
    let mut state = new_flow(json!({ "nodes": [
        { "name": "a", "opts": { "attempts": 3, "backoff": { "type": "fixed", "delayMs": 100 } } }
    ]}));
    apply(&mut state, Input::Start, T0);
    started(&mut state, "a", T0 + 1);
    fail(&mut state, "a", "first boom", true, T0 + 2);
    started(&mut state, "a", T0 + 110);
    fail(&mut state, "a", "second boom", true, T0 + 111);
    // The third attempt is queued: the two before it are kept with their errors.
    let all = attempts_of(&state, "a");
    assert_eq!(all.len(), 3);
    assert_eq!(
        all[0],
        Attempt {
            attempt: 1,
            queued_at: Some(T0),
            started_at: Some(T0 + 1),
            finished_at: Some(T0 + 2),
            worker: Some(Arc::from("test-worker")),
            outcome: AttemptOutcome::Failed,
            error: Some("first boom".into()),
        }
    );
    assert_eq!(all[1].error.as_deref(), Some("second boom"));
    assert_eq!(all[1].queued_at, Some(T0 + 2));
    assert_eq!(all[2].outcome, AttemptOutcome::Queued);
    assert_eq!(
        all[2].error, None,
        "the error of the attempt before is not its own"
    );
    assert_eq!(all[2].worker, None);
    started(&mut state, "a", T0 + 300);
    complete(&mut state, "a", json!(1), T0 + 301);
    let all = attempts_of(&state, "a");
    assert_eq!(all.len(), 3);
    assert_eq!(all[2].outcome, AttemptOutcome::Completed);
    assert_eq!(all[2].finished_at, Some(T0 + 301));
    // The node's own error is cleared by the success; the history keeps it.
    assert_eq!(state.node(idx(&state, "a")).error, None);
    assert_eq!(all[0].error.as_deref(), Some("first boom"));
}

#[test]
fn a_flow_retry_and_a_rerun_keep_the_earlier_attempts() {
    let mut state = new_flow(json!({ "nodes": [
        { "name": "a" },
        { "name": "b", "parents": ["a"] }
    ], "opts": { "onFailure": "continue" } }));
    apply(&mut state, Input::Start, T0);
    fail(&mut state, "a", "down", false, T0 + 1);
    assert_eq!(status_of(&state, "b"), NodeStatus::Skipped);
    assert!(
        attempts_of(&state, "b").is_empty(),
        "a skipped node has no attempt"
    );
    apply(&mut state, Input::Retry, T0 + 2);
    complete(&mut state, "a", json!(1), T0 + 3);
    started(&mut state, "b", T0 + 4);
    complete(&mut state, "b", json!(2), T0 + 5);
    let a = attempts_of(&state, "a");
    assert_eq!(
        a.iter().map(|x| (x.attempt, x.outcome)).collect::<Vec<_>>(),
        [(1, AttemptOutcome::Failed), (2, AttemptOutcome::Completed)]
    );
    assert_eq!(a[0].error.as_deref(), Some("down"));
    // A re-run from `a` adds a third attempt to `a` and a second to `b`.
    rerun(&mut state, "a", T0 + 10);
    complete(&mut state, "a", json!(3), T0 + 11);
    let a = attempts_of(&state, "a");
    assert_eq!(a.len(), 3);
    assert_eq!(a[0].error.as_deref(), Some("down"));
    assert_eq!(a[1].outcome, AttemptOutcome::Completed);
    let b = attempts_of(&state, "b");
    assert_eq!(
        b.iter().map(|x| (x.attempt, x.outcome)).collect::<Vec<_>>(),
        [(1, AttemptOutcome::Completed), (2, AttemptOutcome::Queued)]
    );
    // It all survives a restore from the records.
    let restored = FlowState::restore(
        state.id(),
        Arc::clone(state.dag()),
        state.header().clone(),
        state
            .nodes()
            .iter()
            .map(|n| {
                crate::records::NodeRecord::from_state(n)
                    .into_state()
                    .unwrap()
            })
            .collect(),
    );
    assert_eq!(attempts_of(&restored, "a"), a);
    assert_eq!(attempts_of(&restored, "b"), b);
}

#[test]
fn a_running_attempt_a_cancel_stops_is_kept_as_cancelled_with_the_reason() {
    let mut state = new_flow(json!({ "nodes": [{ "name": "a" }] }));
    apply(&mut state, Input::Start, T0);
    started(&mut state, "a", T0 + 1);
    apply(&mut state, Input::Cancel, T0 + 2);
    apply(&mut state, Input::Retry, T0 + 3);
    let a = attempts_of(&state, "a");
    assert_eq!(a.len(), 2);
    assert_eq!(a[0].outcome, AttemptOutcome::Cancelled);
    assert_eq!(a[0].error.as_deref(), Some("the flow was cancelled"));
    assert_eq!(a[0].finished_at, Some(T0 + 2));
    assert_eq!(a[1].outcome, AttemptOutcome::Queued);
}

#[test]
fn a_rerun_that_replaces_a_running_job_keeps_it_as_cancelled() {
    let mut state = new_flow(json!({ "nodes": [
        { "name": "a" },
        { "name": "b", "parents": ["a"] }
    ], "opts": { "onFailure": "continue" } }));
    apply(&mut state, Input::Start, T0);
    complete(&mut state, "a", json!(1), T0 + 1);
    started(&mut state, "b", T0 + 2);
    rerun(&mut state, "a", T0 + 3);
    let b = attempts_of(&state, "b");
    assert_eq!(b.len(), 1);
    assert_eq!(b[0].outcome, AttemptOutcome::Cancelled);
    assert_eq!(b[0].error.as_deref(), Some(attempts::REPLACED_BY_RETRY));
    assert_eq!(b[0].finished_at, Some(T0 + 3));
}

#[test]
fn a_map_retried_in_part_keeps_its_failed_run_and_its_elements_keep_theirs() {
    let mut state = map_flow(json!({ "from": "src" }), "continue");
    apply(&mut state, Input::Start, T0);
    complete(&mut state, "src", json!([1, 2]), T0 + 1);
    complete(&mut state, "m[0]", json!("one"), T0 + 2);
    fail(&mut state, "m[1]", "element boom", false, T0 + 3);
    assert_eq!(status_of(&state, "m"), NodeStatus::Failed);
    apply(&mut state, Input::Retry, T0 + 10);
    let m = attempts_of(&state, "m");
    assert_eq!(m.len(), 2);
    assert_eq!(m[0].outcome, AttemptOutcome::Failed);
    assert!(m[0].error.as_deref().unwrap().contains("element boom"));
    assert_eq!(m[1].outcome, AttemptOutcome::Running);
    let el = attempts_of(&state, "m[1]");
    assert_eq!(el.len(), 2);
    assert_eq!(el[0].error.as_deref(), Some("element boom"));
    complete(&mut state, "m[1]", json!("two"), T0 + 11);
    assert_eq!(
        attempts_of(&state, "m")[1].outcome,
        AttemptOutcome::Completed
    );
}

#[test]
fn a_timeout_and_a_stall_are_outcomes_of_their_own() {
    let mut state = new_flow(json!({ "nodes": [{ "name": "a", "opts": { "attempts": 3 } }] }));
    apply(&mut state, Input::Start, T0);
    let a = idx(&state, "a");
    apply(
        &mut state,
        Input::JobFailed {
            node: a,
            attempt: 1,
            error: "timed out after 5 ms".into(),
            retryable: true,
            cause: Some(FailureCause::TimedOut),
        },
        T0 + 5,
    );
    apply(
        &mut state,
        Input::JobFailed {
            node: a,
            attempt: 2,
            error: "job stalled: ...".into(),
            retryable: false,
            cause: Some(FailureCause::Stalled),
        },
        T0 + 9,
    );
    let all = attempts_of(&state, "a");
    assert_eq!(
        all.iter().map(|x| x.outcome).collect::<Vec<_>>(),
        [AttemptOutcome::TimedOut, AttemptOutcome::Stalled]
    );
    assert_eq!(status_of(&state, "a"), NodeStatus::Failed);
    // The cause survives the record, and a flow retry archives it as it was.
    let n = crate::records::NodeRecord::from_state(state.node(a))
        .into_state()
        .unwrap();
    assert_eq!(&n, state.node(a));
    apply(&mut state, Input::Retry, T0 + 20);
    let all = attempts_of(&state, "a");
    assert_eq!(all[1].outcome, AttemptOutcome::Stalled);
    assert_eq!(all[2].outcome, AttemptOutcome::Queued);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: proptest_cases(128), ..ProptestConfig::default() })]

    /// A node that fails `failures` times (retried by its own policy and by flow
    /// retries) then completes keeps its last `MAX_ATTEMPTS_KEPT` attempts, in order,
    /// each failure with its own error, the first attempt's while it is among them.
    #[test]
    fn the_history_is_capped_ordered_and_keeps_each_error(
        failures in 0u32..60,
        per_run in 1u32..6,
        start_some in any::<bool>(),
    ) {
        let mut state = new_flow(json!({ "nodes": [
            { "name": "a", "opts": { "attempts": per_run } }
        ]}));
        let mut now = T0;
        apply(&mut state, Input::Start, now);
        for k in 1..=failures {
            now += 1;
            if state.status() == FlowStatus::Failed {
                apply(&mut state, Input::Retry, now);
            }
            prop_assert_eq!(attempt_of(&state, "a"), k);
            if start_some && k % 2 == 0 {
                started(&mut state, "a", now);
            }
            now += 1;
            fail(&mut state, "a", &format!("boom {k}"), true, now);
            let kept = state.node(idx(&state, "a")).attempts().count();
            prop_assert!(kept <= MAX_ATTEMPTS_KEPT);
        }
        now += 1;
        if state.status() == FlowStatus::Failed {
            apply(&mut state, Input::Retry, now);
        }
        complete(&mut state, "a", json!("ok"), now + 1);
        prop_assert_eq!(state.status(), FlowStatus::Completed);
        let all = attempts_of(&state, "a");
        let total = failures + 1;
        prop_assert_eq!(all.len(), (total as usize).min(MAX_ATTEMPTS_KEPT));
        let first = total + 1 - all.len() as u32;
        for (a, number) in all.iter().zip(first..) {
            prop_assert_eq!(a.attempt, number);
            if number == total {
                prop_assert_eq!(a.outcome, AttemptOutcome::Completed);
                prop_assert_eq!(a.error.as_deref(), None);
            } else {
                prop_assert_eq!(a.outcome, AttemptOutcome::Failed);
                let expected = format!("boom {number}");
                prop_assert_eq!(a.error.as_deref(), Some(expected.as_str()));
                let worker = (start_some && number % 2 == 0).then(|| Arc::from("test-worker"));
                prop_assert_eq!(&a.worker, &worker);
            }
        }
        if total as usize <= MAX_ATTEMPTS_KEPT && failures > 0 {
            prop_assert_eq!(all[0].error.as_deref(), Some("boom 1"));
        }
        check_history(&state, &[]);
    }
}
