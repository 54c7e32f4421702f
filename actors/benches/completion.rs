//! What one job completion costs, in a 10-node flow and in a 10,000-node flow
//! (issue 5).
//!
//! Both flows are a fan-out/fan-in: one root, `n - 2` middle nodes, one sink whose
//! parents are all the middle nodes. The root has completed, so every middle node is
//! queued (attempt 1) and the sink waits for all of them.
//!
//! Groups:
//! - `apply/complete_middle/{10,10000}`: `FlowState::apply(JobCompleted)` of one middle
//!   node (not the last one). A queued node may complete without a `JobStarted` first,
//!   so none is needed; `apply/start_and_complete_middle` times the pair a local worker
//!   actually sends (`JobStarted`, then `JobCompleted`) as one operation.
//!   Successive iterations complete different middle nodes, in a shuffled order, on
//!   one state; when the middle nodes run out the state is cloned afresh with the clock
//!   stopped. The clock runs over chunks of [`CHUNK`] completions for both sizes, so
//!   both pay the same timer overhead. The `Vec<Effect>` returned is dropped inside the
//!   timed part (the engine drops it too).
//! - `apply/complete_last_middle/{10,10000}`: completing the last middle node, which
//!   makes the sink ready. `apply` itself only counts down the sink's `waiting`
//!   counter, but `…+sink_input` adds what the flow actor does next for the sink's
//!   job: `FlowState::job_input` (the results of all `n - 2` parents) and the
//!   `RawValue` check of it. That one grows with the number of parents, by design.
//!   Each iteration gets its own clone of the state (`BatchSize::PerIteration`), made
//!   and dropped outside the timed part.
//! - `store/{write,write+flush,group_write+flush}/{10,1000,10000}`: `Store::apply` of
//!   the records one middle completion produces (the node record and the flow record,
//!   as `FlowActor::commit` builds them), in a sled directory on disk (a tempdir) that
//!   already holds the flow (spec and every node record). The ops are built outside
//!   the timed part. A 1,000-node flow is added here to tell growth with the flow from
//!   a step between a tiny tree and a big one. The 10-node flow has only 7 such
//!   completions, so its write sets are cycled (the same keys rewritten); the larger
//!   flows cycle through `n - 3` distinct keys.
//!   - `write`: the write alone. It flushes after every [`GROUP`] writes with the clock
//!     stopped: sled keeps unflushed work in memory, and letting hundreds of thousands
//!     of writes pile up made the next flush take over a minute, a cost `write` would
//!     hide and the engine never meets (its writer flushes every batch). sled's
//!     background threads also write the log while the clock runs, so this is the
//!     caller's share of the work, not all of it.
//!   - `write+flush`: a write, then `Store::flush` (fsync): a group commit of one.
//!   - `group_write+flush`: [`GROUP`] writes and one flush, reported per write: group
//!     commit under load.
//!
//! Run: `cargo bench -p dagflow-actors --bench completion`.
#![allow(clippy::unwrap_used, missing_docs)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion};
use dagflow_actors::ids::{FlowId, NodeIdx};
use dagflow_actors::spec::{self, Limits};
use dagflow_actors::state::{Effect, EventStatus, FlowState, Input, NodeStatus};
use dagflow_actors::store::{
    status_code, FlowRecord, NodeRecord, Store, WriteOp, DEFAULT_CACHE_BYTES,
};
use serde_json::value::RawValue;

/// Flow sizes compared: 1 root + (n - 2) middle + 1 sink.
const SIZES: [usize; 2] = [10, 10_000];
/// Sizes of the store benches: a middle size too, to tell growth with the flow from a
/// step between a tiny tree and a big one.
const STORE_SIZES: [usize; 3] = [10, 1_000, 10_000];
/// A fixed clock: `apply` takes the time as an argument.
const NOW: u64 = 1_700_000_000_000;
/// Completions per timed chunk in the `apply` middle benches: the 10-node flow has 7
/// middle completions before the last one, so both sizes time chunks of 7.
const CHUNK: usize = 7;
/// Transitions per flush in `store/write` (flushes untimed) and
/// `store/group_write+flush` (flush timed, its cost shared by the group).
const GROUP: usize = 64;

/// One flow, ready for middle completions.
struct Fixture {
    /// The spec as JSON text, as the store keeps it.
    spec_json: String,
    /// Started and root completed: every middle node queued, attempt 1.
    ready: FlowState,
    /// Middle nodes completed in the benches, shuffled; the last middle node is not in it.
    order: Vec<NodeIdx>,
    /// The middle node held back: its completion makes the sink ready.
    last: NodeIdx,
    /// The sink.
    sink: NodeIdx,
    /// The result every completion reports.
    result: Arc<str>,
}

fn fan_in_spec(n: usize) -> String {
    let mut nodes = Vec::with_capacity(n);
    nodes.push(serde_json::json!({"name": "root", "data": {"n": 0}}));
    let middles: Vec<String> = (1..n - 1).map(|i| format!("m{i}")).collect();
    for m in &middles {
        nodes.push(serde_json::json!({"name": m, "parents": ["root"], "data": {"n": 1}}));
    }
    nodes.push(serde_json::json!({"name": "sink", "parents": middles, "data": {"n": 2}}));
    serde_json::json!({"name": format!("fan-{n}"), "nodes": nodes}).to_string()
}

fn completed(node: NodeIdx, result: &Arc<str>) -> Input {
    Input::JobCompleted {
        node,
        attempt: 1,
        result: Arc::clone(result),
    }
}

fn fixture(n: usize) -> Fixture {
    let spec_json = fan_in_spec(n);
    let parsed = spec::parse(spec_json.as_bytes()).unwrap();
    let dag = Arc::new(spec::validate(&parsed, &Limits::default()).unwrap());
    assert_eq!(dag.len(), n);
    let root = dag.lookup("root").unwrap();
    let sink = dag.lookup("sink").unwrap();
    let result: Arc<str> = Arc::from(r#"{"ok":true,"value":12345,"tag":"middle"}"#);

    let mut ready = FlowState::new(FlowId::new(), dag, NOW);
    assert!(!ready.apply(Input::Start, NOW).is_empty());
    assert!(!ready.apply(completed(root, &result), NOW).is_empty());

    // A fixed shuffle (xorshift, Fisher-Yates): completions do not arrive in index order.
    let mut order: Vec<NodeIdx> = (1..n - 1).map(NodeIdx::from_usize).collect();
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for i in (1..order.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        order.swap(i, (x % (i as u64 + 1)) as usize);
    }
    let last = order.pop().unwrap();
    assert_eq!(order.len(), n - 3);

    let fx = Fixture {
        spec_json,
        ready,
        order,
        last,
        sink,
        result,
    };
    check(&fx);
    fx
}

/// The benches must time real transitions, not ignored (stale) inputs.
fn check(fx: &Fixture) {
    let mut s = fx.ready.clone();
    for &node in &fx.order {
        assert_eq!(s.node(node).status, NodeStatus::Queued);
        let effects = s.apply(completed(node, &fx.result), NOW);
        assert!(
            matches!(effects.first(), Some(Effect::Persist(c)) if c.nodes == vec![node]),
            "a middle completion persists its own node only: {effects:?}"
        );
        assert!(effects.iter().any(|e| matches!(
            e,
            Effect::Emit(ev) if ev.status == EventStatus::Node(NodeStatus::Completed)
        )));
        assert!(!effects.iter().any(|e| matches!(e, Effect::Enqueue(_))));
    }
    let effects = s.apply(completed(fx.last, &fx.result), NOW);
    assert!(
        effects
            .iter()
            .any(|e| matches!(e, Effect::Enqueue(j) if j.node == fx.sink)),
        "the last middle completion enqueues the sink: {effects:?}"
    );
    let mut s = fx.ready.clone();
    let effects = s.apply(
        Input::JobStarted {
            node: fx.last,
            attempt: 1,
            worker: Some(Arc::from("bench-worker")),
        },
        NOW,
    );
    assert!(matches!(effects.first(), Some(Effect::Persist(_))));
}

/// The flow record as `FlowActor::header_record` builds it.
fn header_record(s: &FlowState) -> FlowRecord {
    let h = s.header();
    FlowRecord {
        name: s.dag().name.clone(),
        status: status_code(h.status),
        seq: h.seq,
        created_at: h.created_at,
        updated_at: h.updated_at,
        finished_at: h.finished_at,
        node_count: s.dag().len() as u32,
        done_count: (s.dag().len() - s.remaining()) as u32,
        idempotency_key: None,
        engine_error: None,
    }
}

/// The write ops of one transition, as `FlowActor::commit` builds them.
fn ops_of(s: &FlowState, effects: &[Effect]) -> Vec<WriteOp> {
    let id = s.id();
    let mut ops = Vec::new();
    for e in effects {
        if let Effect::Persist(changes) = e {
            for &n in &changes.nodes {
                ops.push(WriteOp::Node(id, n, NodeRecord::from_state(s.node(n))));
            }
        }
    }
    ops.push(WriteOp::Flow(id, header_record(s)));
    ops
}

/// Middle completions on one state, clock stopped while a fresh state is cloned.
fn run_middles(fx: &Fixture, iters: u64, with_start: bool) -> Duration {
    let worker: Arc<str> = Arc::from("bench-worker");
    let mut total = Duration::ZERO;
    let mut state = fx.ready.clone();
    let mut next = 0;
    let mut done = 0u64;
    while done < iters {
        let k = CHUNK.min((iters - done) as usize);
        if next + k > fx.order.len() {
            state = fx.ready.clone();
            next = 0;
        }
        let chunk = &fx.order[next..next + k];
        let start = Instant::now();
        for &node in chunk {
            if with_start {
                black_box(state.apply(
                    Input::JobStarted {
                        node,
                        attempt: 1,
                        worker: Some(Arc::clone(&worker)),
                    },
                    NOW,
                ));
            }
            black_box(state.apply(completed(node, &fx.result), NOW));
        }
        total += start.elapsed();
        next += k;
        done += k as u64;
    }
    total
}

fn bench_apply(c: &mut Criterion) {
    let fixtures: Vec<(usize, Fixture)> = SIZES.iter().map(|&n| (n, fixture(n))).collect();

    let mut g = c.benchmark_group("apply");
    for (n, fx) in &fixtures {
        g.bench_with_input(BenchmarkId::new("complete_middle", n), fx, |b, fx| {
            b.iter_custom(|iters| run_middles(fx, iters, false))
        });
    }
    for (n, fx) in &fixtures {
        g.bench_with_input(
            BenchmarkId::new("start_and_complete_middle", n),
            fx,
            |b, fx| b.iter_custom(|iters| run_middles(fx, iters, true)),
        );
    }
    for (n, fx) in &fixtures {
        let mut before_last = fx.ready.clone();
        for &node in &fx.order {
            before_last.apply(completed(node, &fx.result), NOW);
        }
        g.bench_with_input(
            BenchmarkId::new("complete_last_middle", n),
            &before_last,
            |b, before_last| {
                b.iter_batched_ref(
                    || before_last.clone(),
                    |s| s.apply(completed(fx.last, &fx.result), NOW),
                    BatchSize::PerIteration,
                )
            },
        );
        g.bench_with_input(
            BenchmarkId::new("complete_last_middle+sink_input", n),
            &before_last,
            |b, before_last| {
                b.iter_batched_ref(
                    || before_last.clone(),
                    |s| {
                        let effects = s.apply(completed(fx.last, &fx.result), NOW);
                        let input = RawValue::from_string(s.job_input(fx.sink)).unwrap();
                        (effects, input)
                    },
                    BatchSize::PerIteration,
                )
            },
        );
    }
    g.finish();
}

/// A store in a fresh directory on disk holding the flow as the engine leaves it once
/// the root completed, and the write sets of the middle completions.
fn store_fixture(fx: &Fixture) -> (tempfile::TempDir, Store, Vec<Vec<WriteOp>>) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), DEFAULT_CACHE_BYTES).unwrap();
    let s = &fx.ready;
    let id = s.id();
    // What creation writes: the spec, every node, the header (and the root's
    // completion rewrote the root and the middles; the latest records stand for both).
    let mut ops = vec![WriteOp::Spec(id, fx.spec_json.clone())];
    for i in s.dag().indices() {
        ops.push(WriteOp::Node(id, i, NodeRecord::from_state(s.node(i))));
    }
    ops.push(WriteOp::Flow(id, header_record(s)));
    store.apply(&ops).unwrap();
    let rt = runtime();
    rt.block_on(store.flush()).unwrap();

    let mut state = s.clone();
    let sets = fx
        .order
        .iter()
        .map(|&node| {
            let effects = state.apply(completed(node, &fx.result), NOW);
            let ops = ops_of(&state, &effects);
            assert_eq!(ops.len(), 2, "one node record and the flow record");
            ops
        })
        .collect();
    (dir, store, sets)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Writes `iters` transitions from `sets`, starting at `*next`, flushing after every
/// `batch` of them; times the writes, and the flushes too when `time_flush`.
fn run_writes(
    store: &Store,
    rt: &tokio::runtime::Runtime,
    sets: &[Vec<WriteOp>],
    next: &mut usize,
    iters: u64,
    batch: usize,
    time_flush: bool,
) -> Duration {
    let mut total = Duration::ZERO;
    let mut done = 0u64;
    while done < iters {
        let k = batch.min((iters - done) as usize);
        let start = Instant::now();
        for _ in 0..k {
            store.apply(&sets[*next % sets.len()]).unwrap();
            *next += 1;
        }
        if time_flush {
            rt.block_on(store.flush()).unwrap();
            total += start.elapsed();
        } else {
            total += start.elapsed();
            rt.block_on(store.flush()).unwrap();
        }
        done += k as u64;
    }
    total
}

fn bench_store(c: &mut Criterion) {
    let rt = runtime();
    let mut g = c.benchmark_group("store");
    for &n in &STORE_SIZES {
        let fx = fixture(n);
        let (_dir, store, sets) = store_fixture(&fx);
        let mut next = 0;
        g.bench_function(BenchmarkId::new("write", n), |b| {
            b.iter_custom(|iters| run_writes(&store, &rt, &sets, &mut next, iters, GROUP, false))
        });
        g.bench_function(BenchmarkId::new("write+flush", n), |b| {
            b.iter_custom(|iters| run_writes(&store, &rt, &sets, &mut next, iters, 1, true))
        });
        g.bench_function(BenchmarkId::new("group_write+flush", n), |b| {
            b.iter_custom(|iters| run_writes(&store, &rt, &sets, &mut next, iters, GROUP, true))
        });
    }
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30)
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench_apply, bench_store
}
criterion_main!(benches);
