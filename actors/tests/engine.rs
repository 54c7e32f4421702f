//! End-to-end tests of the engine as a library: real Redis, real sled, real actors.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use dagflow_actors::testing;
use dagflow_actors::{FlowStatus, NodeStatus};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diamond_passes_both_results() {
    let prefix = testing::unique_prefix();
    let engine = builder(&prefix)
        .queue("default", 4)
        .handler("sum", sum_handler())
        .build()
        .await
        .unwrap();
    let flow = spec(json!({
        "name": "diamond",
        "nodes": [
            {"name": "a", "handler": "sum", "data": {"n": 1}},
            {"name": "b", "handler": "sum", "parents": ["a"], "data": {"n": 10}},
            {"name": "c", "handler": "sum", "parents": ["a"], "data": {"n": 100}},
            {"name": "d", "handler": "sum", "parents": ["b", "c"], "data": {"n": 1000}}
        ]
    }));
    let id = engine.create(&flow, None).await.unwrap();
    let view = engine.wait(id, WAIT).await.unwrap();
    assert_eq!(view.status, FlowStatus::Completed, "{view:?}");
    let d = view.node("d").unwrap();
    assert_eq!(d.status, NodeStatus::Completed);
    assert_eq!(
        d.result,
        Some(json!({"sum": 1000 + 10 + 1 + 100 + 1, "parents": ["b", "c"]}))
    );
    let node = engine.node(id, "d").await.unwrap();
    let input = node.input.unwrap();
    assert_eq!(input["data"], json!({"n": 1000}));
    assert_eq!(input["parents"]["b"]["sum"], json!(11));
    assert_eq!(input["parents"]["c"]["sum"], json!(101));
    // A finished flow leaves nothing in Redis but the engine-wide keys.
    eventually("flow keys to vanish", || async {
        !keys(&prefix)
            .await
            .iter()
            .any(|k| k.contains(&id.to_string()))
    })
    .await;
    engine.shutdown(Duration::from_secs(5)).await;
}

/// Builds `{"name": "...", "nodes": [...]}` for a fan-out/fan-in of `width` nodes.
fn fan(width: usize) -> serde_json::Value {
    let mut nodes = vec![json!({"name": "src", "handler": "sum", "data": {"n": 1}})];
    let mut mids = Vec::new();
    for i in 0..width {
        let name = format!("m{i}");
        nodes.push(json!({"name": name, "handler": "sum", "parents": ["src"], "data": {"n": 1}}));
        mids.push(name);
    }
    nodes.push(json!({"name": "sink", "handler": "sum", "parents": mids}));
    json!({"name": "fan", "nodes": nodes})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_fan_in_of_1000() {
    let prefix = testing::unique_prefix();
    let engine = builder(&prefix)
        .queue("default", 16)
        .handler("sum", sum_handler())
        .build()
        .await
        .unwrap();
    let id = engine.create(&spec(fan(1000)), None).await.unwrap();
    let view = engine.wait(id, WAIT).await.unwrap();
    assert_eq!(view.status, FlowStatus::Completed);
    let sink = view.node("sink").unwrap();
    // Every middle node adds its own 1 to src's 1.
    assert_eq!(sink.result.as_ref().unwrap()["sum"], json!(2000));
    assert_eq!(
        sink.result.as_ref().unwrap()["parents"]
            .as_array()
            .unwrap()
            .len(),
        1000
    );
    engine.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chain_of_100() {
    let prefix = testing::unique_prefix();
    let engine = builder(&prefix)
        .queue("default", 2)
        .handler("sum", sum_handler())
        .build()
        .await
        .unwrap();
    let nodes: Vec<_> = (0..100)
        .map(|i| {
            if i == 0 {
                json!({"name": "n0", "handler": "sum", "data": {"n": 1}})
            } else {
                json!({"name": format!("n{i}"), "handler": "sum", "parents": [format!("n{}", i - 1)], "data": {"n": 1}})
            }
        })
        .collect();
    let id = engine
        .create(&spec(json!({"name": "chain", "nodes": nodes})), None)
        .await
        .unwrap();
    let view = engine.wait(id, WAIT).await.unwrap();
    assert_eq!(view.status, FlowStatus::Completed);
    assert_eq!(
        view.node("n99").unwrap().result.as_ref().unwrap()["sum"],
        json!(100)
    );
    engine.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_see_every_change_in_seq_order_after_the_snapshot() {
    let prefix = testing::unique_prefix();
    let engine = builder(&prefix)
        .queue("default", 2)
        .handler("sum", sum_handler())
        .build()
        .await
        .unwrap();
    let mut all = engine.subscribe(None).await.unwrap();
    let id = engine.create(&spec(fan(20)), None).await.unwrap();
    let mut one = engine.subscribe(Some(id)).await.unwrap();
    let snapshot = one.snapshot.clone().unwrap();
    let mut seqs = Vec::new();
    loop {
        let event = tokio::time::timeout(WAIT, one.receiver.recv())
            .await
            .unwrap()
            .unwrap();
        if !one.wants(&event) {
            continue;
        }
        seqs.push(event.seq);
        if event.is_flow_end() {
            break;
        }
    }
    let expected: Vec<u64> = (snapshot.seq + 1..=snapshot.seq + seqs.len() as u64).collect();
    assert_eq!(seqs, expected, "no gap, no duplicate after the snapshot");
    let view = engine.get(id).await.unwrap();
    assert_eq!(view.seq, *seqs.last().unwrap());
    // The "*" subscriber saw the same flow from its first event.
    let mut from_all = Vec::new();
    while let Ok(event) = all.receiver.try_recv() {
        if event.flow_id == id {
            from_all.push(event.seq);
        }
    }
    assert_eq!(from_all, (1..=view.seq).collect::<Vec<_>>());
    engine.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flows_that_started_finish_before_new_ones_start() {
    let prefix = testing::unique_prefix();
    let order = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
    let handler = {
        let order = std::sync::Arc::clone(&order);
        let gate = std::sync::Arc::clone(&gate);
        dagflow_actors::handler_fn(move |ctx| {
            let order = std::sync::Arc::clone(&order);
            let gate = std::sync::Arc::clone(&gate);
            async move {
                // The first job waits until every flow exists, so that all their
                // roots are queued behind it.
                gate.acquire().await.unwrap().forget();
                gate.add_permits(1);
                order
                    .lock()
                    .unwrap()
                    .push(format!("{}{}", ctx.node, ctx.data["flow"]));
                // Long enough for the finished job's child to be queued (after its
                // flush) before this one ends and frees the slot.
                tokio::time::sleep(Duration::from_millis(40)).await;
                Ok(json!(null))
            }
        })
    };
    let engine = builder(&prefix)
        .queue("default", 1)
        .handler("rec", handler)
        .build()
        .await
        .unwrap();
    let mut ids = Vec::new();
    for i in 0..5 {
        let flow = spec(json!({
            "nodes": [
                {"name": "a", "handler": "rec", "data": {"flow": i}},
                {"name": "b", "handler": "rec", "parents": ["a"], "data": {"flow": i}},
                {"name": "c", "handler": "rec", "parents": ["b"], "data": {"flow": i}}
            ]
        }));
        ids.push(engine.create(&flow, None).await.unwrap());
    }
    gate.add_permits(1);
    for id in ids {
        let view = engine.wait(id, WAIT).await.unwrap();
        assert_eq!(view.status, FlowStatus::Completed, "{view:?}");
    }
    // One worker slot. A finished job's child is queued a moment after the slot
    // frees (after the flush), so the slot may take one more new root meanwhile:
    // at most two flows are ever open at once, each runs to its end before a third
    // starts. (One queue read in FIFO order would run every root first, a0 a1 a2
    // a3 a4 b0 ..., with all five flows open.)
    let order = order.lock().unwrap().clone();
    assert_eq!(order.len(), 15, "{order:?}");
    let mut open = std::collections::HashSet::new();
    for job in &order {
        let flow = &job[1..];
        match &job[..1] {
            "a" => {
                open.insert(flow.to_owned());
            }
            "c" => {
                open.remove(flow);
            }
            _ => {}
        }
        assert!(open.len() <= 2, "{job}: {open:?} open at once in {order:?}");
    }
    engine.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flow_of_higher_priority_goes_first() {
    let prefix = testing::unique_prefix();
    let order = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
    let handler = {
        let order = std::sync::Arc::clone(&order);
        let gate = std::sync::Arc::clone(&gate);
        dagflow_actors::handler_fn(move |ctx| {
            let order = std::sync::Arc::clone(&order);
            let gate = std::sync::Arc::clone(&gate);
            async move {
                gate.acquire().await.unwrap().forget();
                gate.add_permits(1);
                order
                    .lock()
                    .unwrap()
                    .push(ctx.data["tag"].as_str().unwrap_or("?").to_owned());
                Ok(json!(null))
            }
        })
    };
    let engine = builder(&prefix)
        .queue("default", 1)
        .handler("rec", handler)
        .build()
        .await
        .unwrap();
    let mut ids = Vec::new();
    // The blocker takes the only slot; the others queue behind it.
    ids.push(
        engine
            .create(
                &spec(
                    json!({"nodes": [{"name": "x", "handler": "rec", "data": {"tag": "first"}}]}),
                ),
                None,
            )
            .await
            .unwrap(),
    );
    let blocker = ids[0];
    eventually("the blocker to take the only slot", || {
        let engine = engine.clone();
        async move {
            engine.get(blocker).await.unwrap().node("x").unwrap().status == NodeStatus::Active
        }
    })
    .await;
    for (tag, opts, node_priority) in [
        ("low", json!({"priority": 1}), None),
        ("default", json!({}), None),
        ("high-flow", json!({"priority": 8}), None),
        ("high-node", json!({"priority": 1}), Some(9)),
    ] {
        let mut node = json!({"name": "x", "handler": "rec", "data": {"tag": tag}});
        if let Some(p) = node_priority {
            node["priority"] = json!(p);
        }
        let flow = spec(json!({"nodes": [node], "opts": opts}));
        ids.push(engine.create(&flow, None).await.unwrap());
    }
    // Every job is on its lane before the slot frees (a create answers once the
    // flow is on disk; its jobs are enqueued just after).
    eventually("the four jobs to be queued", || {
        let engine = engine.clone();
        async move { engine.queue().depth("default").await.unwrap().0 == 5 }
    })
    .await;
    gate.add_permits(1);
    for id in ids {
        engine.wait(id, WAIT).await.unwrap();
    }
    let order = order.lock().unwrap().clone();
    assert_eq!(order, ["first", "high-node", "high-flow", "default", "low"]);
    engine.shutdown(Duration::from_secs(5)).await;
}
