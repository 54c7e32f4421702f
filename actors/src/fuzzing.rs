//! Checks shared by the cargo-fuzz targets in `fuzz/` and by the tests that replay
//! their corpora (`actors/tests/fuzz_corpus.rs`). Not part of the engine's API.
//!
//! Each check takes raw bytes, runs them through the same code a client's input
//! reaches, and panics when that code panics or when its answer contradicts itself.
//! A panic is what libFuzzer reports as a crash, and what fails the corpus test.

use std::collections::HashSet;

use crate::ids::NodeIdx;
use crate::spec::{self, Dag, FlowSpec, Limits, SpecError};

/// What [`fuzz_check`] made of one input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// `spec::parse` refused it: not JSON, or not the shape of a flow spec.
    Unparsed,
    /// Parsed, then refused by `spec::validate` with problems of these codes.
    Invalid(Vec<&'static str>),
    /// Parsed and validated into a DAG of this many nodes.
    Valid(usize),
}

/// Limits the engine uses when it reloads a stored flow: none.
fn unlimited() -> Limits {
    Limits {
        max_nodes: usize::MAX,
        max_name_len: usize::MAX,
        max_data_bytes: usize::MAX,
    }
}

/// The flow-spec target: `spec::parse`, then `spec::validate` with default [`Limits`],
/// as `POST /flows` does. Panics if either panics or if the result is inconsistent:
///
/// * a parse error has a message;
/// * `Err` from validate has at least one problem and at most
///   [`spec::MAX_PROBLEMS`]` + 1`, each with a code and a message;
/// * `Ok` is a DAG with one node per spec node, names unique and found by `lookup`,
///   parent and child lists mirroring each other, every edge written in the spec
///   and every written edge present, no cycle, and retry delays computable;
/// * a valid spec survives what the engine does to it: serialized to JSON for the
///   store, parsed back and validated without limits (as on recovery), it gives the
///   same DAG shape.
pub fn fuzz_check(data: &[u8]) -> Outcome {
    let spec = match spec::parse(data) {
        Ok(spec) => spec,
        Err(e) => {
            assert!(!e.to_string().is_empty(), "parse error without a message");
            return Outcome::Unparsed;
        }
    };
    match spec::validate(&spec, &Limits::default()) {
        Err(e) => {
            check_error(&e);
            Outcome::Invalid(e.problems.iter().map(|p| p.code).collect())
        }
        Ok(dag) => {
            check_dag(&spec, &dag);
            check_round_trip(&spec, &dag);
            Outcome::Valid(dag.len())
        }
    }
}

fn check_error(e: &SpecError) {
    assert!(
        !e.problems.is_empty(),
        "validate refused a spec with no problem"
    );
    assert!(
        e.problems.len() <= spec::MAX_PROBLEMS + 1,
        "{} problems listed, more than the cap",
        e.problems.len()
    );
    for p in &e.problems {
        assert!(!p.code.is_empty(), "problem without a code: {p:?}");
        assert!(!p.message.is_empty(), "problem without a message: {p:?}");
    }
    assert!(!e.to_string().is_empty());
}

fn check_dag(spec: &FlowSpec, dag: &Dag) {
    let n = dag.len();
    assert_eq!(n, spec.nodes.len(), "DAG and spec node counts differ");
    assert!(!dag.is_empty(), "an empty flow validated");
    assert_eq!(dag.indices().count(), n);

    // Everything below is linear in the size of the spec, so that a large input that
    // validates slowly is the validator's fault and not this check's.
    let mut names = HashSet::with_capacity(n);
    let mut dag_edges = HashSet::new();
    let mut child_entries = 0;
    for (i, idx) in dag.indices().enumerate() {
        let node = dag.node(idx);
        assert_eq!(&*node.name, spec.nodes[i].name, "node #{i} renamed");
        assert!(names.insert(&*node.name), "duplicate name '{}'", node.name);
        assert_eq!(
            dag.lookup(&node.name),
            Some(idx),
            "lookup of '{}'",
            node.name
        );
        assert!(!node.handler.is_empty() && !node.queue.is_empty());
        assert!((1..=spec::MAX_ATTEMPTS).contains(&node.opts.attempts));
        if let Some(backoff) = node.opts.backoff {
            for retry in [0, 1, 2, 40, 41, 64, u32::MAX] {
                let _ = backoff.delay_for(retry);
            }
        }
        for &p in &node.parents {
            assert!(p.as_usize() < n, "parent index out of range");
            assert!(
                dag_edges.insert((p, idx)),
                "parent '{}' of '{}' listed twice",
                dag.node(p).name,
                node.name
            );
        }
        for &c in &node.children {
            assert!(c.as_usize() < n, "child index out of range");
            child_entries += 1;
        }
    }
    // Parent and child lists mirror each other: the same edges, none repeated.
    assert_eq!(
        child_entries,
        dag_edges.len(),
        "child and parent lists differ"
    );
    for idx in dag.indices() {
        for &c in &dag.node(idx).children {
            assert!(
                dag_edges.contains(&(idx, c)),
                "edge {} -> {} only on the parent's side",
                dag.node(idx).name,
                dag.node(c).name
            );
        }
    }
    // The DAG's edges are exactly the edges written in the spec, on either side.
    let mut written = HashSet::new();
    for (i, node) in spec.nodes.iter().enumerate() {
        let me = NodeIdx::from_usize(i);
        for p in &node.parents {
            let pi = dag
                .lookup(p)
                .unwrap_or_else(|| panic!("unknown parent '{p}' accepted"));
            written.insert((pi, me));
        }
        for c in &node.children {
            let ci = dag
                .lookup(c)
                .unwrap_or_else(|| panic!("unknown child '{c}' accepted"));
            written.insert((me, ci));
        }
    }
    assert!(
        written == dag_edges,
        "the DAG's edges differ from the spec's: {} written, {} in the DAG",
        written.len(),
        dag_edges.len()
    );
    assert_acyclic(dag);
}

/// Kahn's algorithm, independent of the DFS that `validate` uses: every node must be
/// removable in some topological order.
fn assert_acyclic(dag: &Dag) {
    let mut waiting: Vec<usize> = dag.nodes.iter().map(|node| node.parents.len()).collect();
    let mut ready: Vec<NodeIdx> = dag
        .indices()
        .filter(|i| waiting[i.as_usize()] == 0)
        .collect();
    let mut done = 0;
    while let Some(i) = ready.pop() {
        done += 1;
        for &c in &dag.node(i).children {
            let w = &mut waiting[c.as_usize()];
            *w -= 1;
            if *w == 0 {
                ready.push(c);
            }
        }
    }
    assert_eq!(done, dag.len(), "validate accepted a cycle");
}

/// What the engine does with an accepted spec: store it as JSON, and on recovery
/// parse and validate it again without limits. That must give the same DAG.
/// `data` is compared too: serde_json's `float_roundtrip` feature is on, so a float
/// such as `6.446139363221326e-176` reads back exactly after recovery.
fn check_round_trip(spec: &FlowSpec, dag: &Dag) {
    let stored = serde_json::to_string(spec)
        .unwrap_or_else(|e| panic!("a valid spec does not serialize: {e}"));
    let again = spec::parse(stored.as_bytes())
        .unwrap_or_else(|e| panic!("a stored spec does not parse back: {e}\n{stored}"));
    let reloaded = spec::validate(&again, &unlimited())
        .unwrap_or_else(|e| panic!("a stored spec does not validate again: {e}\n{stored}"));
    assert_eq!(reloaded.len(), dag.len());
    for (a, b) in dag.nodes.iter().zip(&reloaded.nodes) {
        assert_eq!(
            (
                &a.name,
                &a.handler,
                &a.queue,
                &a.parents,
                &a.children,
                &a.opts,
                &a.data
            ),
            (
                &b.name,
                &b.handler,
                &b.queue,
                &b.parents,
                &b.children,
                &b.opts,
                &b.data
            ),
            "node '{}' changed through the store",
            a.name
        );
    }
}
