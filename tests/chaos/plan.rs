//! The plan of one seed: which flows (and what each node's result must be), which
//! requests and which faults, at which moment of the window. Everything here
//! follows from the seed.

use serde_json::{json, Value};

use crate::common::rng::Rng;
use crate::{Size, ENGINE_FAILPOINTS};
// ---------------------------------------------------------------------------------
// The plan: flows, requests and faults, all from the seed.
// ---------------------------------------------------------------------------------

/// What a node does, and so what its result must be.
#[derive(Debug, Clone)]
pub(crate) enum Kind {
    /// `echo` with this data: the result is its input.
    Echo(Value),
    /// `sleep` for this many ms: `{"sleptMs": ms}`.
    Sleep(u64),
    /// `fail` while `attempt <= times`, then `{"attempt": attempt}`.
    Fail { times: u64 },
}

#[derive(Debug, Clone)]
pub(crate) struct PlannedNode {
    pub(crate) name: String,
    pub(crate) parents: Vec<String>,
    pub(crate) kind: Kind,
}

/// How a flow is created.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum CreateMode {
    /// One POST without a key; not repeated when it gets no answer.
    NoKey,
    /// With a key, repeated until answered.
    KeyOnce,
    /// With a key, twice in a row.
    KeyTwice,
    /// With a key, twice at the same time.
    KeyTwiceConcurrent,
}

#[derive(Debug, Clone)]
pub(crate) struct PlannedFlow {
    pub(crate) index: usize,
    /// Unique in the run: how the list is counted per key.
    pub(crate) name: String,
    pub(crate) key: Option<String>,
    pub(crate) mode: CreateMode,
    pub(crate) spec: Value,
    pub(crate) nodes: Vec<PlannedNode>,
}

/// A fault, done by the test's main task.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Fault {
    KillServer,
    KillWorker,
    FlushAll,
    /// `SAVE` now, keep the RDB for a later rollback.
    Snapshot,
    /// Restart Redis from the snapshot.
    Rollback,
}

/// A request about an existing flow.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum OpKind {
    Cancel,
    Retry,
    Delete,
    DeleteRetryRace,
}

pub(crate) struct Plan {
    /// Every flow: those created in the window, then the tail.
    pub(crate) flows: Vec<PlannedFlow>,
    /// (ms into the window, flow index) of the flows created in the window.
    pub(crate) creates: Vec<(u64, usize)>,
    pub(crate) faults: Vec<(u64, Fault)>,
    pub(crate) ops: Vec<(u64, OpKind)>,
    /// Drives the choices made while the plan runs (targets, pauses, failpoints).
    pub(crate) fault_rng: Rng,
    pub(crate) op_rng: Rng,
}

pub(crate) fn gen_node(
    rng: &mut Rng,
    flow: &str,
    name: String,
    parents: Vec<String>,
) -> (Value, PlannedNode) {
    let roll = rng.next() % 100;
    let (spec, kind) = if roll < 18 {
        let ms = rng.range(500, 4000);
        (
            json!({"name": name, "handler": "sleep", "queue": "remote", "data": {"ms": ms}}),
            Kind::Sleep(ms),
        )
    } else if roll < 30 {
        let times = rng.range(1, 3);
        let attempts = rng.range(1, 3);
        let backoff = if rng.chance(50) {
            "fixed"
        } else {
            "exponential"
        };
        let queue = if rng.chance(50) { "remote" } else { "default" };
        (
            json!({"name": name, "handler": "fail", "queue": queue,
                   "data": {"times": times, "message": "failing on purpose"},
                   "opts": {"attempts": attempts,
                            "backoff": {"type": backoff, "delayMs": rng.range(20, 150)}}}),
            Kind::Fail { times },
        )
    } else {
        let data = json!({"flow": flow, "node": name, "x": rng.next() % 1_000_000});
        let queue = if rng.chance(35) { "remote" } else { "default" };
        (
            json!({"name": name, "handler": "echo", "queue": queue, "data": data}),
            Kind::Echo(data),
        )
    };
    let mut spec = spec;
    spec["parents"] = json!(parents);
    (
        spec,
        PlannedNode {
            name,
            parents,
            kind,
        },
    )
}

pub(crate) fn gen_flow(rng: &mut Rng, seed: u64, index: usize) -> PlannedFlow {
    let shape = ["chain", "diamond", "fan", "random"][rng.index(4)];
    let name = format!("chaos-{seed}-{index}-{shape}");
    let mut layout: Vec<(String, Vec<String>)> = Vec::new();
    match shape {
        "chain" => {
            for i in 0..rng.range(3, 6) {
                let parents = if i == 0 {
                    vec![]
                } else {
                    vec![format!("c{}", i - 1)]
                };
                layout.push((format!("c{i}"), parents));
            }
        }
        "diamond" => {
            layout.push(("top".into(), vec![]));
            let mids: Vec<String> = (0..rng.range(2, 4)).map(|i| format!("mid{i}")).collect();
            for m in &mids {
                layout.push((m.clone(), vec!["top".into()]));
            }
            layout.push(("bottom".into(), mids));
        }
        "fan" => {
            layout.push(("root".into(), vec![]));
            let leaves: Vec<String> = (0..rng.range(4, 10)).map(|i| format!("leaf{i}")).collect();
            for l in &leaves {
                layout.push((l.clone(), vec!["root".into()]));
            }
            layout.push(("sink".into(), leaves));
        }
        _ => {
            for i in 0..rng.range(4, 8) as usize {
                let mut parents: Vec<String> = Vec::new();
                if i > 0 {
                    for _ in 0..rng.range(1, 2) {
                        let p = format!("r{}", rng.index(i));
                        if !parents.contains(&p) {
                            parents.push(p);
                        }
                    }
                }
                layout.push((format!("r{i}"), parents));
            }
        }
    }
    let mut specs = Vec::new();
    let mut nodes = Vec::new();
    for (node, parents) in layout {
        let (spec, planned) = gen_node(rng, &name, node, parents);
        specs.push(spec);
        nodes.push(planned);
    }
    let mode = match rng.next() % 100 {
        0..=34 => CreateMode::NoKey,
        35..=59 => CreateMode::KeyOnce,
        60..=79 => CreateMode::KeyTwice,
        _ => CreateMode::KeyTwiceConcurrent,
    };
    let key = (mode != CreateMode::NoKey).then(|| format!("chaos-{seed}-{index}-key"));
    PlannedFlow {
        index,
        spec: json!({"name": name, "nodes": specs}),
        name,
        key,
        mode,
        nodes,
    }
}

/// A flow whose first job sleeps 3 to 5 s on `remote` (in a worker process), for
/// the last requests: `wait` → `after`.
pub(crate) fn gen_late_flow(rng: &mut Rng, seed: u64, index: usize) -> PlannedFlow {
    let name = format!("chaos-{seed}-{index}-late");
    let ms = rng.range(3_000, 5_000);
    let data = json!({"flow": name, "node": "after"});
    let nodes = vec![
        PlannedNode {
            name: "wait".into(),
            parents: vec![],
            kind: Kind::Sleep(ms),
        },
        PlannedNode {
            name: "after".into(),
            parents: vec!["wait".into()],
            kind: Kind::Echo(data.clone()),
        },
    ];
    // With a key, so that it is created for sure (retried through the 503s of the
    // moments after the last rollback).
    PlannedFlow {
        index,
        spec: json!({"name": name, "nodes": [
            {"name": "wait", "handler": "sleep", "queue": "remote", "data": {"ms": ms}},
            {"name": "after", "handler": "echo", "parents": ["wait"], "data": data},
        ]}),
        name,
        mode: CreateMode::KeyOnce,
        key: Some(format!("chaos-{seed}-{index}-key")),
        nodes,
    }
}

pub(crate) fn make_plan(seed: u64, size: &Size) -> Plan {
    let mut rng = Rng(seed);
    let mut flow_rng = rng.fork(0xF10E);
    let mut flows: Vec<PlannedFlow> = (0..size.flows + size.tail_flows)
        .map(|i| gen_flow(&mut flow_rng, seed, i))
        .collect();
    let first_late = flows.len();
    flows.extend((0..size.late_flows).map(|i| gen_late_flow(&mut flow_rng, seed, first_late + i)));
    let window = size.window.as_millis() as u64;
    // Creates over the first 80% of the window, in order.
    let mut creates: Vec<(u64, usize)> = (0..size.flows)
        .map(|i| (rng.range(0, window * 8 / 10), i))
        .collect();
    creates.sort();
    let mut faults: Vec<(u64, Fault)> = Vec::new();
    for (count, fault) in [
        (size.kill_server, Fault::KillServer),
        (size.kill_worker, Fault::KillWorker),
        (size.flushall, Fault::FlushAll),
    ] {
        for _ in 0..count {
            faults.push((rng.range(1_000, window), fault));
        }
    }
    // Each rollback returns to a snapshot taken 2 to 6 s before it. (The flows
    // after `size.flows` are created at the end, by `Run::last_faults`.)
    for _ in 0..size.rollback {
        let at = rng.range(window / 3, window);
        faults.push((
            at.saturating_sub(rng.range(2_000, 6_000)).max(500),
            Fault::Snapshot,
        ));
        faults.push((at, Fault::Rollback));
    }
    faults.sort_by_key(|(at, _)| *at);
    let mut ops: Vec<(u64, OpKind)> = Vec::new();
    for (count, kind) in [
        (size.cancel, OpKind::Cancel),
        (size.retry, OpKind::Retry),
        (size.delete, OpKind::Delete),
        (size.race, OpKind::DeleteRetryRace),
    ] {
        for _ in 0..count {
            ops.push((rng.range(1_500, window), kind));
        }
    }
    ops.sort_by_key(|(at, _)| *at);
    Plan {
        flows,
        creates,
        faults,
        ops,
        fault_rng: rng.fork(0xFA17),
        op_rng: rng.fork(0x0B5),
    }
}

/// A random `FAILPOINTS` value: one to three engine failpoints.
pub(crate) fn pick_failpoints(rng: &mut Rng) -> String {
    let mut names: Vec<usize> = (0..ENGINE_FAILPOINTS.len()).collect();
    rng.shuffle(&mut names);
    let count = rng.range(1, 3) as usize;
    let mut chosen: Vec<String> = names[..count]
        .iter()
        .map(|&i| {
            let (name, actions) = ENGINE_FAILPOINTS[i];
            format!("{name}={}", rng.pick(actions))
        })
        .collect();
    chosen.sort();
    chosen.join(";")
}
