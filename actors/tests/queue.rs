//! The Redis queue against a real Redis (one server per test process, a unique key
//! prefix per test).

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use dagflow_actors::queue::{
    job_id, CancelListener, CompletionReader, Delivery, JobEnvelope, Keys, Lane, LocalAck, NewJob,
    Outcome, Queue, QueueReader, ENVELOPE_VERSION,
};
use dagflow_actors::testing::{keys_matching, redis, unique_prefix, TestRedis};
use serde_json::value::RawValue;

/// A fresh prefix, its keys, and a connected client.
async fn setup() -> (String, Keys, Queue) {
    let url = redis().url.clone();
    let keys = Keys::new(&unique_prefix());
    let queue = Queue::connect(&url, keys.clone()).await.unwrap();
    (url, keys, queue)
}

/// A plain connection for poking at Redis directly.
async fn raw_conn(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

use dagflow_actors::clock::now_ms;

fn envelope(flow: &str, node: &str, attempt: u32, queue: &str, max_stalled: u32) -> JobEnvelope {
    JobEnvelope {
        v: ENVELOPE_VERSION,
        id: job_id(flow, node, attempt),
        flow_id: flow.to_owned(),
        node: node.to_owned(),
        attempt,
        handler: "echo".to_owned(),
        queue: queue.to_owned(),
        priority: 5,
        input: RawValue::from_string(r#"{"data":{"n":1},"parents":{}}"#.to_owned()).unwrap(),
        timeout_ms: Some(1000),
        max_stalled,
        enqueued_at_ms: now_ms(),
        traceparent: None,
    }
}

/// The lane stream the jobs of these tests go to: default priority, not fresh.
fn stream(keys: &Keys, queue: &str) -> String {
    keys.lane(queue, Lane::default())
}

fn job(flow: &str, node: &str, queue: &str) -> NewJob {
    NewJob {
        envelope: envelope(flow, node, 1, queue, 1),
        delay_ms: 0,
        fresh: false,
        limits: None,
    }
}

/// A polling deadline: call `tick` between attempts; it panics once time is up.
struct Deadline {
    /// When to give up.
    at: Instant,
    /// What is being waited for, for the panic message.
    what: &'static str,
}

impl Deadline {
    fn new(timeout: Duration, what: &'static str) -> Self {
        Deadline {
            at: Instant::now() + timeout,
            what,
        }
    }

    async fn tick(&self) {
        assert!(
            Instant::now() < self.at,
            "timed out waiting for {}",
            self.what
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Number of pending entries of `group` on `stream`.
async fn pending_count(url: &str, stream: &str, group: &str) -> i64 {
    let mut conn = raw_conn(url).await;
    let reply: redis::Value = redis::cmd("XPENDING")
        .arg(stream)
        .arg(group)
        .query_async(&mut conn)
        .await
        .unwrap();
    match reply {
        redis::Value::Array(items) => match &items[0] {
            redis::Value::Int(n) => *n,
            other => panic!("unexpected xpending reply {other:?}"),
        },
        other => panic!("unexpected xpending reply {other:?}"),
    }
}

#[tokio::test]
async fn enqueue_is_idempotent() {
    let (url, keys, queue) = setup().await;
    let jobs = [job("f1", "a", "default"), job("f1", "b", "default")];
    queue.enqueue("f1", &jobs).await.unwrap();
    queue.enqueue("f1", &jobs).await.unwrap();
    queue.enqueue("f1", &jobs[..1]).await.unwrap();
    assert_eq!(queue.depth("default").await.unwrap(), (2, 0));

    let states = queue.job_states("f1").await.unwrap();
    assert_eq!(states.len(), 2);
    let a: serde_json::Value = serde_json::from_str(&states["a:1"]).unwrap();
    assert_eq!(a["s"], "queued");
    assert_eq!(a["q"], "default");

    // A finished job is not enqueued again either.
    let mut reader = QueueReader::connect(&url, keys.clone(), "default", "c1")
        .await
        .unwrap();
    let got = reader.read(10, 100).await.unwrap();
    assert_eq!(got.len(), 2);
    queue.ack_local(&[local_ack(&got[0])]).await.unwrap();
    queue.enqueue("f1", &jobs).await.unwrap();
    assert_eq!(queue.depth("default").await.unwrap(), (1, 0));
}

#[tokio::test]
async fn enqueue_rejects_a_job_of_another_flow() {
    let (_url, _keys, queue) = setup().await;
    let err = queue
        .enqueue("f1", &[job("f2", "a", "default")])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("belongs to flow f2"), "{err}");
}

fn local_ack(delivery: &Delivery) -> LocalAck {
    LocalAck {
        stream: delivery.stream.clone(),
        entry_id: delivery.entry_id.clone(),
        flow_id: delivery.envelope.flow_id.clone(),
        job_field: delivery.envelope.job_field(),
    }
}

#[tokio::test]
async fn delayed_job_is_readable_only_after_promotion() {
    let (url, keys, queue) = setup().await;
    let mut retry = job("f1", "a", "default");
    retry.envelope.attempt = 2;
    retry.envelope.id = job_id("f1", "a", 2);
    retry.delay_ms = 60_000;
    queue.enqueue("f1", &[retry]).await.unwrap();
    assert_eq!(queue.depth("default").await.unwrap(), (0, 1));

    let mut reader = QueueReader::connect(&url, keys.clone(), "default", "c1")
        .await
        .unwrap();
    assert!(reader.read(10, 0).await.unwrap().is_empty());
    assert_eq!(queue.promote_all_due(now_ms()).await.unwrap(), 0);
    assert!(reader.read(10, 0).await.unwrap().is_empty());

    assert_eq!(queue.promote_all_due(now_ms() + 120_000).await.unwrap(), 1);
    assert_eq!(queue.depth("default").await.unwrap(), (1, 0));
    let got = reader.read(10, 100).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].envelope.id, "f1:a:2");
    let states = queue.job_states("f1").await.unwrap();
    let state: serde_json::Value = serde_json::from_str(&states["a:2"]).unwrap();
    assert_eq!(state["s"], "queued");
    assert_eq!(state["e"], got[0].entry_id.as_str());

    // Promoting again moves nothing.
    assert_eq!(
        queue
            .promote_due("default", now_ms() + 120_000)
            .await
            .unwrap(),
        0
    );
}

#[tokio::test]
async fn own_pending_entries_come_first_after_reconnect() {
    let (url, keys, queue) = setup().await;
    queue
        .enqueue(
            "f1",
            &[job("f1", "a", "default"), job("f1", "b", "default")],
        )
        .await
        .unwrap();
    let first = {
        let mut reader = QueueReader::connect(&url, keys.clone(), "default", "engine-1")
            .await
            .unwrap();
        reader.read(10, 100).await.unwrap()
    };
    assert_eq!(first.len(), 2);
    queue
        .enqueue("f1", &[job("f1", "c", "default")])
        .await
        .unwrap();

    // Same consumer name: the two unacknowledged jobs come back first, at once.
    let mut reader = QueueReader::connect(&url, keys.clone(), "default", "engine-1")
        .await
        .unwrap();
    let again = reader.read(1, 100).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].entry_id, first[0].entry_id);
    let again = reader.read(10, 100).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].entry_id, first[1].entry_id);
    let new = reader.read(10, 100).await.unwrap();
    assert_eq!(new.len(), 1);
    assert_eq!(new[0].envelope.node, "c");
    assert!(reader.read(10, 0).await.unwrap().is_empty());
}

#[tokio::test]
async fn reclaim_takes_over_idle_jobs_and_reports_stalled_ones() {
    let (url, keys, queue) = setup().await;
    let mut stalling = job("f1", "a", "default");
    stalling.envelope.max_stalled = 1;
    queue.enqueue("f1", &[stalling]).await.unwrap();

    // A consumer reads the job and vanishes.
    let taken = {
        let mut dead = QueueReader::connect(&url, keys.clone(), "default", "dead")
            .await
            .unwrap();
        dead.read(10, 100).await.unwrap()
    };
    assert_eq!(taken.len(), 1);

    let mut second = QueueReader::connect(&url, keys.clone(), "default", "second")
        .await
        .unwrap();
    // Not idle long enough yet.
    assert!(second.reclaim(60_000, 10).await.unwrap().claimed.is_empty());
    let deadline = Deadline::new(Duration::from_secs(5), "reclaim");
    let reclaimed = loop {
        let r = second.reclaim(50, 10).await.unwrap();
        if !r.claimed.is_empty() || !r.stalled.is_empty() {
            break r;
        }
        deadline.tick().await;
    };
    assert_eq!(reclaimed.claimed.len(), 1);
    assert!(reclaimed.stalled.is_empty());
    assert_eq!(reclaimed.claimed[0].entry_id, taken[0].entry_id);

    // A renewed lease is not taken away.
    second
        .renew(&[(
            reclaimed.claimed[0].stream.clone(),
            reclaimed.claimed[0].entry_id.clone(),
        )])
        .await
        .unwrap();
    let mut third = QueueReader::connect(&url, keys.clone(), "default", "third")
        .await
        .unwrap();
    let r = third.reclaim(2_000, 10).await.unwrap();
    assert!(r.claimed.is_empty() && r.stalled.is_empty());

    // The second consumer vanishes too: one claim more than max_stalled = 1.
    let deadline = Deadline::new(Duration::from_secs(5), "stalled");
    let stalled = loop {
        let r = third.reclaim(50, 10).await.unwrap();
        assert!(r.claimed.is_empty());
        if !r.stalled.is_empty() {
            break r.stalled;
        }
        deadline.tick().await;
    };
    assert_eq!(stalled.len(), 1);
    assert_eq!(stalled[0].envelope.id, "f1:a:1");
    // It stays pending on the reclaimer until the caller fails it.
    assert_eq!(
        pending_count(&url, &stream(&keys, "default"), "workers").await,
        1
    );
    queue.ack_local(&[local_ack(&stalled[0])]).await.unwrap();
    assert_eq!(
        pending_count(&url, &stream(&keys, "default"), "workers").await,
        0
    );
}

#[tokio::test]
async fn report_remote_adds_a_completion_record_and_removes_the_job() {
    let (url, keys, queue) = setup().await;
    queue.enqueue("f1", &[job("f1", "a", "gpu")]).await.unwrap();
    let mut worker = QueueReader::connect(&url, keys.clone(), "gpu", "remote-1")
        .await
        .unwrap();
    let got = worker.read(1, 100).await.unwrap();
    assert_eq!(got.len(), 1);

    queue
        .report_remote(&got[0], &Outcome::Started { worker: None })
        .await
        .unwrap();
    let progress = Outcome::Progress {
        progress: RawValue::from_string("50".into()).unwrap(),
    };
    queue.report_remote(&got[0], &progress).await.unwrap();
    // Not final: the job is still there and pending.
    assert_eq!(queue.depth("gpu").await.unwrap(), (1, 0));
    let completed = Outcome::Completed {
        result: RawValue::from_string(r#"{"ok":true}"#.into()).unwrap(),
    };
    queue.report_remote(&got[0], &completed).await.unwrap();
    assert_eq!(queue.depth("gpu").await.unwrap(), (0, 0));
    assert_eq!(
        pending_count(&url, &stream(&keys, "gpu"), "workers").await,
        0
    );
    assert_eq!(queue.job_states("f1").await.unwrap()["a:1"], "done");

    let mut router = CompletionReader::connect(&url, keys.clone(), "router")
        .await
        .unwrap();
    let records = router.read(10, 100).await.unwrap();
    assert_eq!(records.len(), 3);
    assert!(matches!(records[0].outcome, Outcome::Started { .. }));
    assert!(matches!(records[1].outcome, Outcome::Progress { .. }));
    let last = &records[2];
    assert_eq!(last.flow_id, "f1");
    assert_eq!(last.node, "a");
    assert_eq!(last.attempt, 1);
    assert_eq!(last.job_id, "f1:a:1");
    match &last.outcome {
        Outcome::Completed { result } => assert_eq!(result.get(), r#"{"ok":true}"#),
        other => panic!("unexpected outcome {other:?}"),
    }

    // Unacknowledged records come back to a restarted router, acknowledged ones do not.
    queue
        .ack_completions(&[records[0].entry_id.clone(), records[1].entry_id.clone()])
        .await
        .unwrap();
    let mut router = CompletionReader::connect(&url, keys.clone(), "router")
        .await
        .unwrap();
    let again = router.read(10, 100).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].entry_id, last.entry_id);
    queue
        .ack_completions(std::slice::from_ref(&last.entry_id))
        .await
        .unwrap();
    assert!(router.read(10, 0).await.unwrap().is_empty());
    assert_eq!(pending_count(&url, &keys.completions(), "engine").await, 0);
}

#[tokio::test]
async fn failed_outcome_round_trips() {
    let (url, keys, queue) = setup().await;
    queue
        .enqueue("f1", &[job("f1", "a", "default")])
        .await
        .unwrap();
    let mut worker = QueueReader::connect(&url, keys.clone(), "default", "w")
        .await
        .unwrap();
    let got = worker.read(1, 100).await.unwrap();
    let failed = Outcome::Failed {
        message: "boom".into(),
        retryable: true,
        cause: None,
    };
    queue.report_remote(&got[0], &failed).await.unwrap();
    let mut router = CompletionReader::connect(&url, keys, "router")
        .await
        .unwrap();
    let records = router.read(10, 100).await.unwrap();
    match &records[0].outcome {
        Outcome::Failed {
            message, retryable, ..
        } => {
            assert_eq!(message, "boom");
            assert!(*retryable);
        }
        other => panic!("unexpected outcome {other:?}"),
    }
}

#[tokio::test]
async fn ack_local_removes_the_entry() {
    let (url, keys, queue) = setup().await;
    queue
        .enqueue(
            "f1",
            &[job("f1", "a", "default"), job("f1", "b", "default")],
        )
        .await
        .unwrap();
    let mut reader = QueueReader::connect(&url, keys.clone(), "default", "local")
        .await
        .unwrap();
    let got = reader.read(10, 100).await.unwrap();
    assert_eq!(got.len(), 2);
    let acks: Vec<LocalAck> = got.iter().map(local_ack).collect();
    queue.ack_local(&acks).await.unwrap();
    queue.ack_local(&acks).await.unwrap();
    assert_eq!(queue.depth("default").await.unwrap(), (0, 0));
    assert_eq!(
        pending_count(&url, &stream(&keys, "default"), "workers").await,
        0
    );
    let states = queue.job_states("f1").await.unwrap();
    assert_eq!(states["a:1"], "done");
    assert_eq!(states["b:1"], "done");
    // A restarted reader finds nothing of them.
    let mut reader = QueueReader::connect(&url, keys.clone(), "default", "local")
        .await
        .unwrap();
    assert!(reader.read(10, 0).await.unwrap().is_empty());
}

#[tokio::test]
async fn cleanup_flow_leaves_nothing_behind() {
    let (url, keys, queue) = setup().await;
    let flow = "0197a3c2-dead-7000-8000-00000000beef";
    let mut delayed = job(flow, "retry", "default");
    delayed.delay_ms = 60_000;
    queue
        .enqueue(
            flow,
            &[
                job(flow, "a", "default"),
                job(flow, "b", "default"),
                job(flow, "c", "gpu"),
                delayed,
            ],
        )
        .await
        .unwrap();
    queue
        .enqueue("other", &[job("other", "a", "default")])
        .await
        .unwrap();
    // One job is running (pending on a consumer), one is done.
    let mut reader = QueueReader::connect(&url, keys.clone(), "default", "c1")
        .await
        .unwrap();
    let got = reader.read(2, 100).await.unwrap();
    assert_eq!(got.len(), 2);
    let mine: Vec<&Delivery> = got.iter().filter(|d| d.envelope.flow_id == flow).collect();
    queue.ack_local(&[local_ack(mine[0])]).await.unwrap();

    queue.cleanup_flow(flow).await.unwrap();

    assert!(keys_matching(&url, &format!("*{flow}*")).await.is_empty());
    let (default_len, default_delayed) = queue.depth("default").await.unwrap();
    assert_eq!(default_delayed, 0);
    assert_eq!(queue.depth("gpu").await.unwrap(), (0, 0));
    // Only the other flow's job is left, and nothing of this flow is pending.
    let mut conn = raw_conn(&url).await;
    let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg(stream(&keys, "default"))
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(default_len as usize, entries.len());
    for (_, fields) in &entries {
        assert!(!fields[0].1.contains(flow));
    }
    let pending = pending_count(&url, &stream(&keys, "default"), "workers").await;
    let others_pending = got.iter().filter(|d| d.envelope.flow_id != flow).count() as i64;
    assert_eq!(pending, others_pending);
    assert_eq!(queue.job_states("other").await.unwrap().len(), 1);

    // Late acknowledgements and reports must not bring the flow back.
    queue.ack_local(&[local_ack(mine[0])]).await.unwrap();
    if mine.len() > 1 {
        queue
            .report_remote(mine[1], &Outcome::Started { worker: None })
            .await
            .unwrap();
    }
    assert!(keys_matching(&url, &format!("*{flow}*")).await.is_empty());
    // Idempotent.
    queue.cleanup_flow(flow).await.unwrap();
}

#[tokio::test]
async fn cleanup_flow_removes_promoted_jobs_too() {
    let (url, keys, queue) = setup().await;
    let mut delayed = job("f1", "a", "default");
    delayed.delay_ms = 1;
    queue.enqueue("f1", &[delayed]).await.unwrap();
    // The group exists, as it does once a worker serves the queue.
    let _reader = QueueReader::connect(&url, keys.clone(), "default", "c1")
        .await
        .unwrap();
    assert_eq!(
        queue.promote_due("default", now_ms() + 1000).await.unwrap(),
        1
    );
    queue.cleanup_flow("f1").await.unwrap();
    assert_eq!(queue.depth("default").await.unwrap(), (0, 0));
    assert!(keys_matching(&url, &format!("{}*f1*", keys.prefix()))
        .await
        .is_empty());
}

#[tokio::test]
async fn promotion_skips_jobs_of_deleted_flows() {
    let (url, keys, queue) = setup().await;
    let mut delayed = job("f1", "a", "default");
    delayed.delay_ms = 1;
    queue.enqueue("f1", &[delayed]).await.unwrap();
    // Simulate a flow deleted by hand, leaving the delayed member behind.
    let mut conn = raw_conn(&url).await;
    redis::cmd("DEL")
        .arg(keys.flow_jobs("f1"))
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
    // The group exists, as it does once a worker serves the queue.
    let _reader = QueueReader::connect(&url, keys.clone(), "default", "c1")
        .await
        .unwrap();
    assert_eq!(
        queue.promote_due("default", now_ms() + 1000).await.unwrap(),
        0
    );
    assert_eq!(queue.depth("default").await.unwrap(), (0, 0));
    assert!(keys_matching(&url, &format!("{}*f1*", keys.prefix()))
        .await
        .is_empty());
}

#[tokio::test]
async fn cancel_is_delivered_over_pub_sub() {
    let (url, keys, queue) = setup().await;
    let mut listener = CancelListener::connect(&url, keys.clone()).await.unwrap();
    queue
        .publish_cancel(&["f1:a:1".to_owned(), "f1:b:2".to_owned()])
        .await
        .unwrap();
    let first = tokio::time::timeout(Duration::from_secs(5), listener.next())
        .await
        .unwrap();
    let second = tokio::time::timeout(Duration::from_secs(5), listener.next())
        .await
        .unwrap();
    assert_eq!(first.as_deref(), Some("f1:a:1"));
    assert_eq!(second.as_deref(), Some("f1:b:2"));
}

#[tokio::test]
async fn marker_reports_lost_data() {
    let (url, keys, queue) = setup().await;
    assert!(queue.ensure_marker("engine-1").await.unwrap());
    assert!(!queue.ensure_marker("engine-1").await.unwrap());
    // What a Redis restart without persistence does to it.
    let mut conn = raw_conn(&url).await;
    redis::cmd("DEL")
        .arg(keys.marker())
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
    assert!(queue.ensure_marker("engine-1").await.unwrap());
}

#[tokio::test]
async fn blocking_read_outlasts_the_default_response_timeout() {
    let (url, keys, queue) = setup().await;
    let mut reader = QueueReader::connect(&url, keys.clone(), "default", "c1")
        .await
        .unwrap();
    let started = Instant::now();
    let got = reader.read(10, 2000).await.unwrap();
    assert!(got.is_empty());
    assert!(started.elapsed() >= Duration::from_millis(1900));

    // A job that arrives during the block is returned at once.
    let producer = queue.clone();
    let enqueue = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(700)).await;
        producer
            .enqueue("f1", &[job("f1", "a", "default")])
            .await
            .unwrap();
    });
    let started = Instant::now();
    let got = reader.read(10, 2000).await.unwrap();
    enqueue.await.unwrap();
    assert_eq!(got.len(), 1);
    assert!(started.elapsed() < Duration::from_millis(1900));

    let mut router = CompletionReader::connect(&url, keys, "router")
        .await
        .unwrap();
    assert!(router.read(10, 1500).await.unwrap().is_empty());
}

#[tokio::test]
async fn malformed_entries_are_dropped_without_error() {
    let (url, keys, queue) = setup().await;
    let stream = stream(&keys, "default");
    let mut conn = raw_conn(&url).await;
    let mut reader = QueueReader::connect(&url, keys.clone(), "default", "c1")
        .await
        .unwrap();
    for (field, value) in [
        ("envelope", "not json"),
        ("something", "else"),
        ("envelope", r#"{"v":99,"id":"x"}"#),
    ] {
        redis::cmd("XADD")
            .arg(&stream)
            .arg("*")
            .arg(field)
            .arg(value)
            .query_async::<String>(&mut conn)
            .await
            .unwrap();
    }
    queue
        .enqueue("f1", &[job("f1", "a", "default")])
        .await
        .unwrap();
    let got = reader.read(10, 100).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].envelope.id, "f1:a:1");
    assert_eq!(queue.depth("default").await.unwrap(), (1, 0));
    assert_eq!(pending_count(&url, &stream, "workers").await, 1);

    // The same for completion records.
    let completions = keys.completions();
    let mut router = CompletionReader::connect(&url, keys.clone(), "router")
        .await
        .unwrap();
    for outcome in ["nope", r#"{"kind":"exploded"}"#] {
        redis::cmd("XADD")
            .arg(&completions)
            .arg("*")
            .arg("flow")
            .arg("f1")
            .arg("node")
            .arg("a")
            .arg("attempt")
            .arg("1")
            .arg("job")
            .arg("f1:a:1")
            .arg("outcome")
            .arg(outcome)
            .query_async::<String>(&mut conn)
            .await
            .unwrap();
    }
    queue
        .report_remote(&got[0], &Outcome::Started { worker: None })
        .await
        .unwrap();
    let records = router.read(10, 100).await.unwrap();
    assert_eq!(records.len(), 1);
    assert!(matches!(records[0].outcome, Outcome::Started { .. }));
    assert_eq!(pending_count(&url, &completions, "engine").await, 1);
}

#[tokio::test]
async fn pending_entries_deleted_meanwhile_are_skipped() {
    let (url, keys, queue) = setup().await;
    queue
        .enqueue(
            "f1",
            &[job("f1", "a", "default"), job("f1", "b", "default")],
        )
        .await
        .unwrap();
    let first = {
        let mut reader = QueueReader::connect(&url, keys.clone(), "default", "c1")
            .await
            .unwrap();
        reader.read(10, 100).await.unwrap()
    };
    // Deleted without acknowledgement: the pending record outlives the entry.
    let mut conn = raw_conn(&url).await;
    redis::cmd("XDEL")
        .arg(stream(&keys, "default"))
        .arg(&first[0].entry_id)
        .query_async::<i64>(&mut conn)
        .await
        .unwrap();
    let mut reader = QueueReader::connect(&url, keys.clone(), "default", "c1")
        .await
        .unwrap();
    let again = reader.read(10, 100).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].entry_id, first[1].entry_id);
    assert_eq!(
        pending_count(&url, &stream(&keys, "default"), "workers").await,
        1
    );
}

#[tokio::test]
async fn readers_recreate_a_lost_group() {
    let (url, keys, queue) = setup().await;
    let mut reader = QueueReader::connect(&url, keys.clone(), "default", "c1")
        .await
        .unwrap();
    let mut router = CompletionReader::connect(&url, keys.clone(), "router")
        .await
        .unwrap();
    // What a Redis restart without persistence does to the streams.
    let mut conn = raw_conn(&url).await;
    redis::cmd("DEL")
        .arg(stream(&keys, "default"))
        .arg(keys.completions())
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
    assert!(reader.read(10, 100).await.unwrap().is_empty());
    assert!(router.read(10, 100).await.unwrap().is_empty());
    queue
        .enqueue("f1", &[job("f1", "a", "default")])
        .await
        .unwrap();
    let got = reader.read(10, 100).await.unwrap();
    assert_eq!(got.len(), 1);
    queue
        .report_remote(&got[0], &Outcome::Started { worker: None })
        .await
        .unwrap();
    assert_eq!(router.read(10, 100).await.unwrap().len(), 1);
}

#[tokio::test]
async fn heartbeats_list_live_workers_and_forget_dead_ones() {
    let (url, keys, queue) = setup().await;
    let mut conn = raw_conn(&url).await;
    redis::cmd("HSET")
        .arg(keys.workers())
        .arg("dead")
        .arg(r#"{"ts":1,"queues":["default"]}"#)
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
    let info =
        serde_json::json!({"queues": ["default", "gpu"], "handlers": [], "intervalMs": 60000});
    queue.heartbeat("w1", &info).await.unwrap();
    let workers = queue.workers().await.unwrap();
    assert_eq!(workers.len(), 1);
    let (id, beat) = &workers[0];
    assert_eq!(id, "w1");
    assert_eq!(beat["queues"], serde_json::json!(["default", "gpu"]));
    assert_eq!(beat["handlers"], serde_json::json!([]));
    let ts = beat["ts"].as_u64().unwrap();
    assert!(ts.abs_diff(now_ms()) < 60_000, "ts {ts}");
}

#[tokio::test]
async fn ping_answers() {
    let (_url, _keys, queue) = setup().await;
    queue.ping().await.unwrap();
}

#[tokio::test]
async fn connection_errors_are_recognised() {
    // Nothing listens on port 1.
    let err = Queue::connect("redis://127.0.0.1:1", Keys::default())
        .await
        .unwrap_err();
    assert!(err.is_connection(), "{err:?}");
}

#[tokio::test]
async fn clients_survive_a_redis_restart() {
    let server = TestRedis::dedicated();
    let keys = Keys::new(&unique_prefix());
    let queue = Queue::connect(&server.url, keys.clone()).await.unwrap();
    assert!(queue.ensure_marker("engine-1").await.unwrap());
    let mut reader = QueueReader::connect(&server.url, keys.clone(), "default", "c1")
        .await
        .unwrap();
    let mut router = CompletionReader::connect(&server.url, keys.clone(), "router")
        .await
        .unwrap();
    queue
        .enqueue("f1", &[job("f1", "a", "default")])
        .await
        .unwrap();
    assert_eq!(reader.read(10, 100).await.unwrap().len(), 1);

    server.stop();
    let err = queue.ping().await.unwrap_err();
    assert!(err.is_connection(), "{err:?}");
    let err = reader.read(10, 100).await.unwrap_err();
    assert!(err.is_connection(), "{err:?}");
    let err = router.read(10, 100).await.unwrap_err();
    assert!(err.is_connection(), "{err:?}");

    // Redis comes back empty, as it does without persistence.
    server.start();
    let deadline = Deadline::new(Duration::from_secs(10), "shared client to reconnect");
    while queue.ping().await.is_err() {
        deadline.tick().await;
    }
    assert!(queue.ensure_marker("engine-1").await.unwrap());
    let deadline = Deadline::new(Duration::from_secs(10), "reader to reconnect");
    while reader.read(10, 100).await.is_err() {
        deadline.tick().await;
    }
    // The lost job is enqueued again from the engine's snapshots: not a no-op any more.
    queue
        .enqueue("f1", &[job("f1", "a", "default")])
        .await
        .unwrap();
    let got = reader.read(10, 100).await.unwrap();
    assert_eq!(got.len(), 1);
    queue
        .report_remote(&got[0], &Outcome::Started { worker: None })
        .await
        .unwrap();
    let deadline = Deadline::new(Duration::from_secs(10), "router to reconnect");
    let records = loop {
        match router.read(10, 100).await {
            Ok(records) if !records.is_empty() => break records,
            _ => deadline.tick().await,
        }
    };
    assert_eq!(records[0].job_id, "f1:a:1");
}

#[tokio::test]
async fn a_report_of_a_delivery_from_before_a_wipe_does_not_mark_the_new_one_done() {
    let (url, keys, queue) = setup().await;
    queue
        .enqueue("f1", &[job("f1", "a", "default")])
        .await
        .unwrap();
    let mut reader = QueueReader::connect(&url, keys.clone(), "default", "c1")
        .await
        .unwrap();
    let old = reader.read(1, 100).await.unwrap().pop().unwrap();
    // Redis loses the job (its stream entry and its field) and the engine puts it
    // back: the same job, a new delivery.
    let mut conn = raw_conn(&url).await;
    redis::cmd("HDEL")
        .arg(keys.flow_jobs("f1"))
        .arg("a:1")
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
    queue
        .enqueue("f1", &[job("f1", "a", "default")])
        .await
        .unwrap();
    let states = queue.job_states("f1").await.unwrap();
    let new_state: serde_json::Value = serde_json::from_str(&states["a:1"]).unwrap();
    assert_ne!(new_state["e"], old.entry_id.as_str());
    // The worker that ran the old delivery reports, and a local ack of it comes too.
    let done = Outcome::Completed {
        result: RawValue::from_string("1".to_owned()).unwrap(),
    };
    queue.report_remote(&old, &done).await.unwrap();
    queue.ack_local(&[local_ack(&old)]).await.unwrap();
    // The new delivery is still queued: it runs, and the flow's cleanup removes it.
    let states = queue.job_states("f1").await.unwrap();
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&states["a:1"]).unwrap(),
        new_state
    );
    let again = reader.read(1, 100).await.unwrap();
    assert_eq!(again.len(), 1);
    queue.cleanup_flow("f1").await.unwrap();
    assert_eq!(queue.depth("default").await.unwrap(), (0, 0));
}

#[tokio::test]
async fn idle_consumers_without_pending_jobs_are_removed() {
    let (url, keys, queue) = setup().await;
    queue
        .enqueue("f1", &[job("f1", "a", "default")])
        .await
        .unwrap();
    let mut busy = QueueReader::connect(&url, keys.clone(), "default", "busy")
        .await
        .unwrap();
    assert_eq!(busy.read(1, 100).await.unwrap().len(), 1);
    let mut gone = QueueReader::connect(&url, keys.clone(), "default", "gone")
        .await
        .unwrap();
    assert!(gone.read(1, 10).await.unwrap().is_empty());
    let mut me = QueueReader::connect(&url, keys.clone(), "default", "me")
        .await
        .unwrap();
    assert!(me.read(1, 10).await.unwrap().is_empty());
    tokio::time::sleep(Duration::from_millis(50)).await;
    // `gone` holds nothing and is idle; `busy` holds a job; `me` is the caller.
    assert_eq!(me.remove_idle_consumers(10).await.unwrap(), 1);
    let mut conn = raw_conn(&url).await;
    let consumers: Vec<redis::Value> = redis::cmd("XINFO")
        .arg("CONSUMERS")
        .arg(stream(&keys, "default"))
        .arg("workers")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(consumers.len(), 2);
}

/// A job of flow `flow` with this priority, fresh (a root's first attempt) or not.
fn lane_job(flow: &str, node: &str, priority: u8, fresh: bool) -> NewJob {
    let mut job = job(flow, node, "default");
    job.envelope.priority = priority;
    job.fresh = fresh;
    job
}

#[tokio::test]
async fn take_serves_priorities_then_started_flows_then_new_ones() {
    let (url, keys, queue) = setup().await;
    // Enqueued in an order that is none of the expected ones.
    for (flow, node, priority, fresh) in [
        ("f1", "a", 5, true),
        ("f2", "b", 5, false),
        ("f3", "c", 9, true),
        ("f4", "d", 0, false),
        ("f5", "e", 5, false),
        ("f6", "f", 9, false),
    ] {
        queue
            .enqueue(flow, &[lane_job(flow, node, priority, fresh)])
            .await
            .unwrap();
    }
    let states = queue.job_states("f3").await.unwrap();
    let c: serde_json::Value = serde_json::from_str(&states["c:1"]).unwrap();
    assert_eq!(c["l"], Lane::new(9, true).index());
    let mut reader = QueueReader::connect(&url, keys.clone(), "default", "c1")
        .await
        .unwrap();
    let mut order = Vec::new();
    loop {
        let got = reader.read(1, 0).await.unwrap();
        if got.is_empty() {
            break;
        }
        assert_eq!(got.len(), 1);
        assert_eq!(
            got[0].stream,
            keys.lane(
                "default",
                Lane::new(
                    got[0].envelope.priority,
                    got[0].envelope.flow_id == "f1" || got[0].envelope.flow_id == "f3"
                )
            )
        );
        order.push(got[0].envelope.node.clone());
    }
    // Priority 9 (started, then new), priority 5 (started in FIFO order, then new),
    // priority 0.
    assert_eq!(order, ["f", "c", "b", "e", "a", "d"]);
}

#[tokio::test]
async fn lower_priorities_get_their_share_turns() {
    let (url, keys, queue) = setup().await;
    let high: Vec<NewJob> = (0..300)
        .map(|i| lane_job("hi", &format!("h{i}"), 9, false))
        .collect();
    queue.enqueue("hi", &high).await.unwrap();
    let low: Vec<NewJob> = (0..5)
        .map(|i| lane_job("lo", &format!("l{i}"), 0, false))
        .collect();
    queue.enqueue("lo", &low).await.unwrap();
    let mid = [lane_job("mid", "m0", 4, false)];
    queue.enqueue("mid", &mid).await.unwrap();
    let mut reader = QueueReader::connect(&url, keys.clone(), "default", "c1")
        .await
        .unwrap();
    // In batches, as a worker with free slots takes them: share turns count per job.
    let mut order = Vec::new();
    for _ in 0..10 {
        for d in reader.read(20, 0).await.unwrap() {
            order.push(d.envelope.node);
        }
    }
    assert_eq!(order.len(), 200);
    // Turn 10k goes first to priority k mod 10: priority 4 at turn 40, priority 0 at
    // turns 100 and 200; every other turn to the highest priority.
    let at = |name: &str| order.iter().position(|n| n == name).map(|p| p + 1);
    assert_eq!(at("m0"), Some(40), "{order:?}");
    assert_eq!(at("l0"), Some(100), "{order:?}");
    assert_eq!(at("l1"), Some(200), "{order:?}");
    assert_eq!(
        order.iter().filter(|n| n.starts_with('h')).count(),
        197,
        "{order:?}"
    );
    // The high jobs went in FIFO order.
    let highs: Vec<&String> = order.iter().filter(|n| n.starts_with('h')).collect();
    let expected: Vec<String> = (0..197).map(|i| format!("h{i}")).collect();
    assert!(highs.iter().zip(&expected).all(|(a, b)| *a == b));
}

#[tokio::test]
async fn a_blocked_read_wakes_up_for_a_job_on_any_lane() {
    let (url, keys, queue) = setup().await;
    // A running job on the lane: the wait must start after it, not return it.
    queue
        .enqueue("f0", &[lane_job("f0", "running", 3, false)])
        .await
        .unwrap();
    let mut other = QueueReader::connect(&url, keys.clone(), "default", "other")
        .await
        .unwrap();
    assert_eq!(other.read(1, 0).await.unwrap().len(), 1);
    let mut reader = QueueReader::connect(&url, keys.clone(), "default", "c1")
        .await
        .unwrap();
    let waiting = tokio::spawn(async move {
        let started = Instant::now();
        let got = reader.read(4, 5_000).await.unwrap();
        (got, started.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    queue
        .enqueue("f1", &[lane_job("f1", "late", 3, false)])
        .await
        .unwrap();
    let (got, waited) = waiting.await.unwrap();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].envelope.node, "late");
    assert!(waited < Duration::from_millis(3_000), "{waited:?}");
}

#[tokio::test]
async fn the_backlog_limit_holds_new_flows_back_but_not_started_ones() {
    let (url, keys, queue) = setup().await;
    let started: Vec<NewJob> = (0..4)
        .map(|i| lane_job("s", &format!("s{i}"), 5, false))
        .collect();
    queue.enqueue("s", &started).await.unwrap();
    let fresh: Vec<NewJob> = (0..4)
        .map(|i| lane_job(&format!("n{i}"), "root", 5, true))
        .collect();
    for job in &fresh {
        let flow = job.envelope.flow_id.clone();
        queue
            .enqueue(&flow, std::slice::from_ref(job))
            .await
            .unwrap();
    }
    let mut reader = QueueReader::connect(&url, keys.clone(), "default", "c1")
        .await
        .unwrap();
    reader.limit_backlog(3, &keys);
    let fresh_lane = keys.lane("default", Lane::new(5, true));

    // Three started jobs taken and finished (no longer running) but not acknowledged:
    // a backlog of 3, the limit. The fourth started job is still taken; no new one.
    let got = reader.read_running(3, 0, 0).await.unwrap();
    assert_eq!(got.len(), 3);
    let got = reader.read_running(4, 0, 0).await.unwrap();
    let streams: Vec<&str> = got.iter().map(|d| d.stream.as_str()).collect();
    assert_eq!(got.len(), 1, "{streams:?}");
    assert_ne!(got[0].stream, fresh_lane);
    assert!(reader.read_running(4, 0, 0).await.unwrap().is_empty());

    // A blocking read while held comes back within milliseconds, not after `block`.
    let t = std::time::Instant::now();
    assert!(reader.read_running(4, 0, 5_000).await.unwrap().is_empty());
    assert!(
        t.elapsed() < std::time::Duration::from_secs(1),
        "{:?}",
        t.elapsed()
    );

    // The same four jobs still running are no backlog: new jobs are taken up to the
    // limit (4 pending, 2 running: a backlog of 2, room for 1).
    let got = reader.read_running(4, 2, 0).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].stream, fresh_lane);

    // Acknowledged jobs leave the backlog: every remaining new job is taken.
    let mut conn = raw_conn(&url).await;
    let pending: Vec<(String, String, u64, u64)> = redis::cmd("XPENDING")
        .arg(keys.lane("default", Lane::new(5, false)))
        .arg("workers")
        .arg("-")
        .arg("+")
        .arg(10)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(pending.len(), 4);
    for (id, ..) in &pending {
        let _: i64 = redis::cmd("XACK")
            .arg(keys.lane("default", Lane::new(5, false)))
            .arg("workers")
            .arg(id)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    let got = reader.read_running(4, 1, 0).await.unwrap();
    assert_eq!(got.len(), 3, "{got:?}");
    assert!(got.iter().all(|d| d.stream == fresh_lane));

    // Without a limit (the protocol's plain call), nothing is held back.
    let mut plain = QueueReader::connect(&url, keys.clone(), "default", "c2")
        .await
        .unwrap();
    queue
        .enqueue("n9", &[lane_job("n9", "root", 5, true)])
        .await
        .unwrap();
    assert_eq!(plain.read(4, 0).await.unwrap().len(), 1);
}
