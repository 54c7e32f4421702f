// The worker against a real redis-server, with jobs put on their lanes as the
// engine's enqueue.lua does and outcomes read back from P:completions: every step of
// docs/PROTOCOL.md that needs no engine (taking in lane order, waking from the
// blocking XREAD, reporting, progress, timeout, cancel, malformed entries,
// pending-first, jobs of a lost take, reclaim, maxStalled, leases, heartbeats, idle
// consumers, FLUSHALL, a Redis restart, OOM, graceful close).
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { Redis } from "ioredis";

import { FatalError, RetryableError, Worker } from "../../dist/index.js";
import { blockedInXread, clientNamed, completions, enqueue, envelope, laneKey, recordsOf, startRedis, uniquePrefix, waitFor } from "../helpers.mjs";

let redisServer;
let redis;
const workers = [];

before(async () => {
  redisServer = await startRedis();
  redis = new Redis(redisServer.url, { maxRetriesPerRequest: null });
  redis.on("error", () => {});
});

after(async () => {
  await Promise.all(workers.map((w) => w.close(1000)));
  redis?.disconnect();
  await redisServer?.stop();
});

/** A worker on queue `q` that the test closes at the end. */
function worker(prefix, options) {
  const w = new Worker({ redis: redisServer.url, prefix, queues: { q: 4 }, blockMs: 200, ...options });
  w.on("error", () => {});
  workers.push(w);
  return w;
}

async function finalRecord(prefix, jobId) {
  return waitFor(async () => (await recordsOf(redis, prefix, jobId)).find((r) => ["completed", "failed"].includes(r.outcome.kind)), {
    what: `final record of ${jobId}`,
  });
}

describe("worker over a real Redis", () => {
  it("runs a job with its data and parents, reports started then completed, and removes the entry", async () => {
    const prefix = uniquePrefix("run");
    let seen;
    const w = worker(prefix, {
      handlers: {
        resize: async (job) => {
          seen = { id: job.id, flowId: job.flowId, node: job.node, attempt: job.attempt, data: job.data, parents: job.parents, name: job.name, queue: job.queue };
          return { width: job.data.width / 2, from: job.parents.download.path };
        },
      },
    });
    const completed = new Promise((r) => w.once("completed", (job, result) => r({ job, result })));
    await w.waitUntilReady();
    const [env] = await enqueue(redis, prefix, [{ node: "resize", attempt: 2, data: { width: 800 }, parents: { download: { path: "/a.png" } } }]);
    const event = await completed;
    assert.deepEqual(event.result, { width: 400, from: "/a.png" });
    assert.deepEqual(seen, {
      id: env.id, flowId: env.flowId, node: "resize", attempt: 2, data: { width: 800 },
      parents: { download: { path: "/a.png" } }, name: "resize", queue: "q",
    });
    const records = await recordsOf(redis, prefix, env.id);
    assert.deepEqual(records.map((r) => r.outcome.kind), ["started", "completed"]);
    const rec = records[1];
    assert.equal(rec.v, "1");
    assert.equal(rec.flow, env.flowId);
    assert.equal(rec.node, "resize");
    assert.equal(rec.attempt, "2");
    assert.deepEqual(rec.outcome.result, { width: 400, from: "/a.png" });
    assert.equal(await redis.xlen(laneKey(prefix, "q")), 0, "entry deleted");
    assert.equal((await redis.xpending(laneKey(prefix, "q"), "workers"))[0], 0, "nothing pending");
    assert.equal(await redis.hget(`${prefix}:flow:${env.flowId}:jobs`, "resize:2"), "done");
  });

  it("reports each kind of failure with the right retryable flag", async () => {
    const prefix = uniquePrefix("fail");
    const w = worker(prefix, {
      handlers: {
        plain: async () => {
          throw new Error("plain boom");
        },
        retry: async () => {
          throw new RetryableError("try later");
        },
        fatal: async () => {
          throw new FatalError("never");
        },
        syncThrow: () => {
          throw new TypeError("sync");
        },
        bigint: async () => 1n,
        undef: async () => undefined,
      },
    });
    await w.waitUntilReady();
    const envs = await enqueue(redis, prefix, ["plain", "retry", "fatal", "syncThrow", "bigint", "undef", "nobody"].map((node) => ({ node })));
    const outcome = async (i) => (await finalRecord(prefix, envs[i].id)).outcome;
    assert.deepEqual(await outcome(0), { kind: "failed", message: "plain boom", retryable: true });
    assert.deepEqual(await outcome(1), { kind: "failed", message: "try later", retryable: true });
    assert.deepEqual(await outcome(2), { kind: "failed", message: "never", retryable: false });
    assert.deepEqual(await outcome(3), { kind: "failed", message: "sync", retryable: true });
    const big = await outcome(4);
    assert.equal(big.retryable, false);
    assert.match(big.message, /^result is not JSON-serializable/);
    assert.deepEqual(await outcome(5), { kind: "completed", result: null });
    const none = await outcome(6);
    assert.equal(none.retryable, false);
    assert.match(none.message, /no handler named 'nobody'/);
  });

  it("hands a map element's item and index to the handler (null items included), and fails one without an index", async () => {
    const prefix = uniquePrefix("item");
    const seen = new Map();
    const w = worker(prefix, {
      handlers: {
        el: async (job) => {
          seen.set(job.node, { item: job.item, index: job.index, data: job.data, parents: job.parents });
          return job.index === undefined ? "plain" : { item: job.item, index: job.index };
        },
      },
    });
    await w.waitUntilReady();
    const flowId = "f-item";
    const envs = await enqueue(redis, prefix, [
      { flowId, node: "el[0]", handler: "el", input: { data: { k: 1 }, parents: { src: [7, null] }, item: 7, index: 0 } },
      { flowId, node: "el[1]", handler: "el", input: { data: { k: 1 }, parents: { src: [7, null] }, item: null, index: 1 } },
      { flowId, node: "plain", handler: "el", input: { data: null, parents: {} } },
      { flowId, node: "el[2]", handler: "el", input: { data: null, parents: {}, item: "x" } },
    ]);
    assert.deepEqual((await finalRecord(prefix, envs[0].id)).outcome, { kind: "completed", result: { item: 7, index: 0 } });
    assert.deepEqual((await finalRecord(prefix, envs[1].id)).outcome, { kind: "completed", result: { item: null, index: 1 } });
    assert.deepEqual((await finalRecord(prefix, envs[2].id)).outcome, { kind: "completed", result: "plain" });
    assert.deepEqual((await finalRecord(prefix, envs[3].id)).outcome, {
      kind: "failed", message: "job input has an item but its index is not an integer >= 0", retryable: false,
    });
    assert.deepEqual(seen.get("el[0]"), { item: 7, index: 0, data: { k: 1 }, parents: { src: [7, null] } });
    assert.deepEqual(seen.get("el[1]"), { item: null, index: 1, data: { k: 1 }, parents: { src: [7, null] } });
    assert.deepEqual(seen.get("plain"), { item: undefined, index: undefined, data: null, parents: {} });
    // Strict deepEqual tells null from undefined: the null item arrived as null, the plain job's as undefined.
    assert.strictEqual(seen.get("el[1]").item, null);
    assert.strictEqual(seen.get("plain").item, undefined);
    assert.ok(!seen.has("el[2]"), "the handler never ran for the malformed element");
  });

  it("runs handlers without an entry with the processor", async () => {
    const prefix = uniquePrefix("proc");
    const w = worker(prefix, { processor: async (job) => `processed ${job.name}` });
    await w.waitUntilReady();
    const [env] = await enqueue(redis, prefix, [{ node: "anything" }]);
    assert.deepEqual((await finalRecord(prefix, env.id)).outcome, { kind: "completed", result: "processed anything" });
  });

  it("writes progress records in order before the result", async () => {
    const prefix = uniquePrefix("progress");
    const progressEvents = [];
    const w = worker(prefix, {
      handlers: {
        steps: async (job) => {
          await job.progress(10);
          await job.progress({ done: 2, total: 3 });
          return "ok";
        },
      },
    });
    w.on("progress", (job, value) => progressEvents.push(value));
    await w.waitUntilReady();
    const [env] = await enqueue(redis, prefix, [{ node: "steps" }]);
    await finalRecord(prefix, env.id);
    const kinds = (await recordsOf(redis, prefix, env.id)).map((r) => r.outcome);
    assert.deepEqual(kinds, [
      { kind: "started", worker: w.consumer },
      { kind: "progress", progress: 10 },
      { kind: "progress", progress: { done: 2, total: 3 } },
      { kind: "completed", result: "ok" },
    ]);
    assert.deepEqual(progressEvents, [10, { done: 2, total: 3 }]);
  });

  it("aborts the signal and fails the job (retryable) after timeoutMs", async () => {
    const prefix = uniquePrefix("timeout");
    let reason;
    const w = worker(prefix, {
      handlers: {
        hang: (job) =>
          new Promise((_, reject) => {
            job.signal.addEventListener("abort", () => {
              reason = job.signal.reason;
              reject(job.signal.reason);
            });
          }),
      },
    });
    await w.waitUntilReady();
    const [env] = await enqueue(redis, prefix, [{ node: "hang", timeoutMs: 150 }]);
    const rec = await finalRecord(prefix, env.id);
    assert.deepEqual(rec.outcome, { kind: "failed", message: "timed out after 150 ms", retryable: true, cause: "timedOut" });
    assert.equal(reason.why, "timeout");
    assert.equal(reason.name, "AbortError");
  });

  it("stops a job cancelled over P:cancel and reports it cancelled, not retryable", async () => {
    const prefix = uniquePrefix("cancel");
    let reason;
    const w = worker(prefix, {
      handlers: {
        hang: (job) =>
          new Promise((_, reject) => {
            job.signal.addEventListener("abort", () => {
              reason = job.signal.reason;
              reject(new Error("stopped"));
            });
          }),
      },
    });
    const failed = new Promise((r) => w.once("failed", (job, err) => r({ job, err })));
    await w.waitUntilReady();
    const [env] = await enqueue(redis, prefix, [{ node: "hang" }]);
    await waitFor(async () => (await recordsOf(redis, prefix, env.id)).length > 0, { what: "started" });
    await redis.publish(`${prefix}:cancel`, env.id);
    const rec = await finalRecord(prefix, env.id);
    assert.deepEqual(rec.outcome, { kind: "failed", message: "cancelled", retryable: false });
    assert.equal(reason.why, "cancelled");
    const event = await failed;
    assert.equal(event.job.id, env.id);
    assert.equal(event.err.why, "cancelled");
    assert.equal(await redis.xlen(laneKey(prefix, "q")), 0);
  });

  it("removes malformed entries (bad JSON, unknown version, bad priority, no envelope) from their lane so they are not delivered forever", async () => {
    const prefix = uniquePrefix("malformed");
    const errors = [];
    const w = new Worker({ redis: redisServer.url, prefix, queues: { q: 2 }, blockMs: 200, handlers: { ok: async () => 1 } });
    workers.push(w);
    w.on("error", (err) => errors.push(err.message));
    await w.waitUntilReady();
    // A lane other than the default one, and a stream without its group (take.lua creates it).
    const stream = laneKey(prefix, "q", 7, true);
    await redis.xadd(stream, "*", "envelope", "{not json");
    await redis.xadd(stream, "*", "envelope", JSON.stringify({ v: 99, id: "x" }));
    await redis.xadd(stream, "*", "other", "field");
    const [valid] = await enqueue(redis, prefix, [{ node: "ok" }]);
    await redis.xadd(stream, "*", "envelope", JSON.stringify({ ...valid, priority: "high" }));
    const [env] = await enqueue(redis, prefix, [{ node: "ok", priority: 1 }]);
    await finalRecord(prefix, valid.id);
    await finalRecord(prefix, env.id);
    await waitFor(async () => (await redis.xlen(stream)) === 0, { what: "malformed entries deleted" });
    assert.equal((await redis.xpending(stream, "workers"))[0], 0);
    assert.equal(errors.filter((m) => m.includes("dropping malformed entry")).length, 4, errors.join("\n"));
    assert.ok(errors.some((m) => m.includes("unsupported version 99")));
    assert.ok(errors.some((m) => m.includes(`of ${stream}: field priority is not an integer`)), errors.join("\n"));
  });

  it("runs at most `concurrency` jobs of a queue at once", async () => {
    const prefix = uniquePrefix("conc");
    let now = 0;
    let peak = 0;
    const w = worker(prefix, {
      queues: { q: 2 },
      handlers: {
        busy: async () => {
          peak = Math.max(peak, ++now);
          await sleep(60);
          now--;
        },
      },
    });
    await w.waitUntilReady();
    const envs = await enqueue(redis, prefix, Array.from({ length: 8 }, (_, i) => ({ node: `busy`, flowId: `f${i}-${prefix}` })));
    for (const env of envs) await finalRecord(prefix, env.id);
    assert.equal(peak, 2);
  });

  it("resumes its own pending jobs at once when restarted under the same consumer name, lane by lane, before new ones", async () => {
    const prefix = uniquePrefix("pending");
    const envs = await enqueue(redis, prefix, [{ node: "a", priority: 9 }, { node: "b", priority: 2, fresh: true }]);
    // A previous run of consumer "slot-1" took both and died: they are pending on it,
    // each on its own lane.
    for (const lane of [laneKey(prefix, "q", 9), laneKey(prefix, "q", 2, true)]) {
      await redis.xreadgroup("GROUP", "workers", "slot-1", "COUNT", 10, "STREAMS", lane, ">");
    }
    // A ready job on a better lane than b's: a worker that took before reading its
    // own pending jobs would start it before b.
    const [c] = await enqueue(redis, prefix, [{ node: "c", priority: 5 }]);
    const ran = [];
    // A lease of a minute: only pending-first can run a and b within this test.
    const w = worker(prefix, { consumer: "slot-1", leaseMs: 60_000, processor: async (job) => ran.push(job.node) });
    await w.waitUntilReady();
    for (const env of [...envs, c]) await finalRecord(prefix, env.id);
    assert.deepEqual(ran, ["a", "b", "c"]);
  });

  it("reclaims jobs of a dead worker after the lease from any lane, and fails as stalled those claimed too often", async () => {
    const prefix = uniquePrefix("reclaim");
    const lanes = [laneKey(prefix, "q", 3, true), laneKey(prefix, "q", 8)];
    const [fresh, stalled] = await enqueue(redis, prefix, [
      { node: "fresh", maxStalled: 1, priority: 3, fresh: true },
      { node: "stale", maxStalled: 0, priority: 8 },
    ]);
    for (const lane of lanes) await redis.xreadgroup("GROUP", "workers", "dead-1", "COUNT", 10, "STREAMS", lane, ">");
    const ran = [];
    const stalledEvents = [];
    const w = worker(prefix, { leaseMs: 300, reclaimEveryMs: 50, processor: async (job) => ran.push(job.node) });
    w.on("stalled", (id, message) => stalledEvents.push({ id, message }));
    const started = Date.now();
    await w.waitUntilReady();
    const done = await finalRecord(prefix, fresh.id);
    assert.ok(Date.now() - started >= 250, "not before the lease");
    assert.equal(done.outcome.kind, "completed");
    const failed = await finalRecord(prefix, stalled.id);
    assert.equal(failed.outcome.kind, "failed");
    assert.equal(failed.outcome.retryable, false);
    assert.match(failed.outcome.message, /^job stalled: claimed 1 times .*more than maxStalled 0 allows/);
    assert.equal(failed.outcome.cause, "stalled", "the engine shows the attempt as stalled");
    assert.deepEqual(ran, ["fresh"], "a stalled job is not run");
    await waitFor(() => stalledEvents.length === 1, { what: "stalled event" });
    assert.equal(stalledEvents[0].id, stalled.id);
    for (const lane of lanes) assert.equal(await redis.xlen(lane), 0, `${lane} emptied`);
  });

  it("renews the lease of a running job so that no other worker reclaims it", async () => {
    const prefix = uniquePrefix("lease");
    let runs = 0;
    const options = { leaseMs: 300, reclaimEveryMs: 50 };
    const a = worker(prefix, {
      ...options,
      handlers: {
        long: async () => {
          runs++;
          await sleep(1500);
          return "done";
        },
      },
    });
    await a.waitUntilReady();
    const [env] = await enqueue(redis, prefix, [{ node: "long" }]);
    await waitFor(() => runs === 1, { what: "job started" });
    // Another worker that would reclaim anything idle longer than the lease.
    const b = worker(prefix, { ...options, handlers: { long: async () => runs++ } });
    await b.waitUntilReady();
    const rec = await finalRecord(prefix, env.id);
    assert.equal(rec.outcome.result, "done");
    assert.equal(runs, 1);
  });

  it("reads the lease from P:config, falling back to 30000", async () => {
    const prefix = uniquePrefix("config");
    await redis.hset(`${prefix}:config`, "leaseMs", "1234", "maxStalled", "3");
    const w = worker(prefix, { handlers: { x: async () => 1 } });
    await w.waitUntilReady();
    assert.equal(w.leaseMs, 1234);
    const w2 = worker(uniquePrefix("noconfig"), { handlers: { x: async () => 1 } });
    await w2.waitUntilReady();
    assert.equal(w2.leaseMs, 30_000);
  });

  it("follows a lease the engine publishes later, at the next heartbeat", async () => {
    const prefix = uniquePrefix("relase");
    const w = worker(prefix, { heartbeatMs: 100, handlers: { x: async () => 1 } });
    await w.waitUntilReady();
    assert.equal(w.leaseMs, 30_000);
    await redis.hset(`${prefix}:config`, "leaseMs", "4000");
    await waitFor(() => w.leaseMs === 4000, { what: "new lease" });
    // A vanished P:config (Redis lost its data) keeps the last value.
    await redis.del(`${prefix}:config`);
    await sleep(300);
    assert.equal(w.leaseMs, 4000);
  });

  it("announces itself in P:workers with the Redis clock, and leaves on close", async () => {
    const prefix = uniquePrefix("hb");
    const w = worker(prefix, { consumer: "hb-1", queues: { q: 3, r: 1 }, heartbeatMs: 100, handlers: { a: async () => 1, b: async () => 2 } });
    await w.waitUntilReady();
    const [sec] = await redis.time();
    const entry = JSON.parse(await redis.hget(`${prefix}:workers`, "hb-1"));
    assert.ok(Math.abs(entry.ts - Number(sec) * 1000) < 5000);
    assert.deepEqual(entry.queues, [{ name: "q", concurrency: 3 }, { name: "r", concurrency: 1 }]);
    assert.deepEqual(entry.handlers, ["a", "b"]);
    assert.equal(entry.intervalMs, 100);
    const first = entry.ts;
    await waitFor(async () => JSON.parse(await redis.hget(`${prefix}:workers`, "hb-1")).ts > first, { what: "second heartbeat" });
    await w.close(1000);
    assert.equal(await redis.hget(`${prefix}:workers`, "hb-1"), null);
  });

  it("goes on serving after FLUSHALL: a running job's renewals meet NOGROUP quietly, its report is written, new jobs wake the blocked read", async () => {
    const prefix = uniquePrefix("flush");
    const errors = [];
    let release;
    const gate = new Promise((r) => (release = r));
    const w = new Worker({
      redis: redisServer.url, prefix, queues: { q: 2 }, blockMs: 5000, leaseMs: 300, reclaimEveryMs: 50,
      handlers: { gated: () => gate, a: async () => "after" },
    });
    workers.push(w);
    w.on("error", (err) => errors.push(err.message));
    await w.waitUntilReady();
    const [running] = await enqueue(redis, prefix, [{ node: "gated", priority: 8 }]);
    await waitFor(async () => (await recordsOf(redis, prefix, running.id)).length === 1, { what: "started" });
    await sleep(100); // the reader is now blocked in XREAD
    await redis.flushall();
    await sleep(400); // renewals (every 100 ms) and reclaims of lanes without groups
    release("before the flush");
    assert.equal((await finalRecord(prefix, running.id)).outcome.result, "before the flush");
    const t0 = Date.now();
    const [env] = await enqueue(redis, prefix, [{ node: "a" }]);
    const rec = await finalRecord(prefix, env.id);
    assert.equal(rec.outcome.result, "after");
    assert.ok(Date.now() - t0 < 2000, "woken by the new entry, not by the end of the 5 s block");
    assert.deepEqual(errors, []);
  });

  it("survives its connections being killed, without starting a running job twice", async () => {
    const prefix = uniquePrefix("killconn");
    let runs = 0;
    let release;
    const gate = new Promise((r) => (release = r));
    const w = worker(prefix, {
      queues: { q: 2 },
      handlers: {
        gated: async () => {
          runs++;
          await gate;
          return "once";
        },
        after: async () => "served",
      },
    });
    await w.waitUntilReady();
    const [env] = await enqueue(redis, prefix, [{ node: "gated" }]);
    await waitFor(() => runs === 1, { what: "started" });
    // Every other client's connection, the blocked reader and the subscriber included.
    await redis.client("KILL", "TYPE", "normal", "SKIPME", "yes");
    await redis.client("KILL", "TYPE", "pubsub", "SKIPME", "yes");
    await sleep(500); // reconnected; entries of a lost take looked for (it holds the running job)
    release();
    assert.equal((await finalRecord(prefix, env.id)).outcome.result, "once");
    assert.equal(runs, 1);
    const [next] = await enqueue(redis, prefix, [{ node: "after" }]);
    assert.equal((await finalRecord(prefix, next.id)).outcome.result, "served");
    // The cancel subscription came back too.
    let reason;
    const hang = new Worker({
      redis: redisServer.url, prefix, queues: { q2: 1 }, blockMs: 200,
      handlers: { hang: (job) => new Promise((_, reject) => job.signal.addEventListener("abort", () => reject((reason = job.signal.reason)))) },
    });
    workers.push(hang);
    hang.on("error", () => {});
    await hang.waitUntilReady();
    const [h] = await enqueue(redis, prefix, [{ node: "hang", queue: "q2" }]);
    await waitFor(async () => (await recordsOf(redis, prefix, h.id)).length === 1, { what: "hang started" });
    await redis.client("KILL", "TYPE", "pubsub", "SKIPME", "yes");
    await waitFor(async () => (await redis.pubsub("NUMSUB", `${prefix}:cancel`))[1] >= 2, { what: "resubscribed" });
    await redis.publish(`${prefix}:cancel`, h.id);
    await waitFor(() => reason?.why === "cancelled", { what: "cancel after resubscribe" });
  });

  it("never loses a report: a result finished while Redis is down is written once it is back", async () => {
    if (redisServer.external) throw new Error("this test restarts Redis: run it without REDIS_URL");
    const prefix = uniquePrefix("outage");
    let release;
    const gate = new Promise((r) => (release = r));
    const w = worker(prefix, {
      handlers: {
        gated: async () => {
          await gate;
          return "survived";
        },
        later: async () => "also",
      },
    });
    await w.waitUntilReady();
    const [env] = await enqueue(redis, prefix, [{ node: "gated" }]);
    await waitFor(async () => (await recordsOf(redis, prefix, env.id)).length === 1, { what: "started" });
    await redisServer.stop();
    release(); // the handler finishes while Redis is unreachable
    await sleep(500);
    await redisServer.restart(); // empty: Redis lost everything
    const rec = await finalRecord(prefix, env.id);
    assert.deepEqual(rec.outcome, { kind: "completed", result: "survived" });
    // And the worker serves new jobs on the fresh Redis.
    const [next] = await enqueue(redis, prefix, [{ node: "later" }]);
    assert.equal((await finalRecord(prefix, next.id)).outcome.result, "also");
  });

  it("retries a report Redis refuses (OOM) and keeps renewing the job's lease meanwhile", async () => {
    if (redisServer.external) throw new Error("this test changes maxmemory: run it without REDIS_URL");
    const prefix = uniquePrefix("oom");
    const stream = laneKey(prefix, "q");
    const runs = { x: 0, orphan: 0 };
    let release;
    const gate = new Promise((r) => (release = r));
    const options = { leaseMs: 300, reclaimEveryMs: 50 };
    const handlers = {
      x: async () => {
        runs.x++;
        await gate;
        return "written at last";
      },
      orphan: async () => {
        runs.orphan++;
        return "reclaimed";
      },
    };
    const a = worker(prefix, { ...options, handlers });
    await a.waitUntilReady();
    const [env] = await enqueue(redis, prefix, [{ node: "x" }]);
    await waitFor(async () => (await recordsOf(redis, prefix, env.id)).length === 1, { what: "started" });
    // A job of a dead consumer, for B to reclaim while Redis refuses writes: proof
    // that B's reclaim runs during the test.
    const [orphan] = await enqueue(redis, prefix, [{ node: "orphan" }]);
    await redis.xreadgroup("GROUP", "workers", "dead", "COUNT", 1, "STREAMS", stream, ">");
    const b = worker(prefix, { ...options, handlers });
    await b.waitUntilReady();
    // Every script that writes is now refused with OOM; XCLAIM and XAUTOCLAIM are not.
    await redis.config("SET", "maxmemory", "1");
    try {
      release();
      await waitFor(() => runs.orphan === 1, { what: "B reclaimed the orphan" });
      await sleep(1200); // four leases
      assert.deepEqual((await recordsOf(redis, prefix, env.id)).map((r) => r.outcome.kind), ["started"]);
      assert.equal(runs.x, 1, "nobody reclaimed the job whose report waits");
    } finally {
      await redis.config("SET", "maxmemory", "0");
    }
    const rec = await finalRecord(prefix, env.id);
    assert.deepEqual(rec.outcome, { kind: "completed", result: "written at last" });
    assert.equal((await finalRecord(prefix, orphan.id)).outcome.result, "reclaimed");
    assert.equal(runs.x, 1);
  });

  it("keeps trying to start while Redis refuses writes, and serves once it accepts them", async () => {
    if (redisServer.external) throw new Error("this test changes maxmemory: run it without REDIS_URL");
    const prefix = uniquePrefix("oomstart");
    const errors = [];
    await redis.config("SET", "maxmemory", "1");
    let w;
    try {
      w = new Worker({ redis: redisServer.url, prefix, queues: { q: 1 }, blockMs: 200, handlers: { x: async () => "up" } });
      workers.push(w);
      w.on("error", (err) => errors.push(err.message));
      let ready = false;
      w.waitUntilReady().then(() => (ready = true));
      await waitFor(() => errors.some((m) => /failed, retrying: OOM/.test(m)), { what: "a refused start step" });
      assert.equal(ready, false);
    } finally {
      await redis.config("SET", "maxmemory", "0");
    }
    await w.waitUntilReady();
    const [env] = await enqueue(redis, prefix, [{ node: "x" }]);
    assert.equal((await finalRecord(prefix, env.id)).outcome.result, "up");
  });

  it("reports through a Redis with a password, on the database the URL names", async () => {
    const guarded = await startRedis({ password: "pa ss" });
    try {
      const url = `${guarded.url}/3`;
      const prefix = uniquePrefix("auth");
      const r = new Redis(url);
      const w = new Worker({ redis: url, prefix, queues: { q: 1 }, blockMs: 200, handlers: { x: async () => "db3" } });
      w.on("error", () => {});
      await w.waitUntilReady();
      const [env] = await enqueue(r, prefix, [{ node: "x" }]);
      const rec = await waitFor(async () => (await recordsOf(r, prefix, env.id)).find((x) => x.outcome.kind === "completed"), { what: "report in db 3" });
      assert.equal(rec.outcome.result, "db3");
      await w.close(1000);
      r.disconnect();
    } finally {
      await guarded.stop();
    }
  });

  it("close() lets running jobs finish until the deadline, then abandons the rest unreported", async () => {
    const prefix = uniquePrefix("close");
    const stream = laneKey(prefix, "q");
    let abandonedReason;
    const w = worker(prefix, {
      handlers: {
        quick: async () => {
          await sleep(200);
          return "finished";
        },
        stuck: (job) =>
          new Promise((resolve) => {
            job.signal.addEventListener("abort", () => {
              abandonedReason = job.signal.reason;
              resolve("too late");
            });
          }),
      },
    });
    const events = [];
    w.on("closing", () => events.push("closing"));
    w.on("closed", () => events.push("closed"));
    await w.waitUntilReady();
    const [quick, stuck] = await enqueue(redis, prefix, [{ node: "quick" }, { node: "stuck" }]);
    await waitFor(async () => (await completions(redis, prefix)).length === 2, { what: "both started" });
    const t0 = Date.now();
    await w.close(700);
    const took = Date.now() - t0;
    assert.ok(took >= 600 && took < 3000, `close took ${took} ms`);
    assert.deepEqual(events, ["closing", "closed"]);
    assert.equal((await finalRecord(prefix, quick.id)).outcome.result, "finished");
    assert.equal(abandonedReason.why, "closing");
    await sleep(100);
    const stuckRecords = await recordsOf(redis, prefix, stuck.id);
    assert.deepEqual(stuckRecords.map((r) => r.outcome.kind), ["started"], "abandoned job is not reported");
    const [count] = await redis.xpending(stream, "workers");
    assert.equal(count, 1, "the abandoned job stays pending for another worker");
    // No new job is read after close.
    await enqueue(redis, prefix, [{ node: "quick" }]);
    await sleep(300);
    assert.equal(await redis.xlen(stream), 2);
  });
});

/** The delivery count of one pending entry. */
async function deliveriesOf(stream, id) {
  const [row] = await redis.xpending(stream, "workers", id, id, 1);
  return row ? Number(row[3]) : null;
}

describe("lanes", () => {
  it("takes jobs in lane order: higher priority first, within a priority started flows before new ones; job.priority", async () => {
    const prefix = uniquePrefix("order");
    // Enqueued worst first, while no worker runs.
    await enqueue(redis, prefix, [
      { node: "low-new", priority: 2, fresh: true },
      { node: "mid-new", priority: 5, fresh: true },
      { node: "mid-started", priority: 5 },
      { node: "top-new", priority: 9, fresh: true },
      { node: "top-started", priority: 9 },
    ]);
    const ran = [];
    const w = worker(prefix, { queues: { q: 1 }, processor: async (job) => ran.push([job.node, job.priority]) });
    await w.waitUntilReady();
    await waitFor(() => ran.length === 5, { what: "all five ran" });
    assert.deepEqual(ran, [["top-started", 9], ["top-new", 9], ["mid-started", 5], ["mid-new", 5], ["low-new", 2]]);
    assert.equal(await redis.get(`${prefix}:q:q:takes`), "5", "every take counted");
  });

  it("gives every 10th take to a lower priority in turn (take.lua's share turns)", async () => {
    const prefix = uniquePrefix("share");
    await enqueue(redis, prefix, [
      ...Array.from({ length: 12 }, (_, i) => ({ node: `high${i}`, priority: 9 })),
      { node: "one", priority: 1, fresh: true },
    ]);
    const ran = [];
    const w = worker(prefix, { queues: { q: 1 }, processor: async (job) => ran.push(job.node) });
    await w.waitUntilReady();
    await waitFor(() => ran.length === 13, { what: "all ran" });
    assert.equal(ran.indexOf("one"), 9, `turn 10 goes to priority 1: ${ran.join(" ")}`);
  });

  it("wakes from its blocking XREAD as soon as a job arrives on any lane", async () => {
    const prefix = uniquePrefix("wake");
    const started = new Map();
    const w = worker(prefix, { consumer: "waker", blockMs: 20_000, processor: async (job) => started.set(job.node, Date.now()) });
    await w.waitUntilReady();
    for (const [node, priority, fresh] of [["lowest", 0, true], ["highest", 9, false], ["middle", 5, true]]) {
      await blockedInXread(redis, "waker");
      const t0 = Date.now();
      await enqueue(redis, prefix, [{ node, priority, fresh }]);
      await waitFor(() => started.has(node), { what: `${node} started`, timeoutMs: 5_000 });
      const took = started.get(node) - t0;
      assert.ok(took < 1_000, `${node} started ${took} ms after it was enqueued (the block is 20 s)`);
    }
  });

  it("runs the jobs of a take whose reply was lost once its connection is back, without counting a delivery of running jobs", async () => {
    const prefix = uniquePrefix("lost");
    let release;
    const gate = new Promise((r) => (release = r));
    const ran = [];
    // A lease of a minute: no reclaim can run the lost job within this test.
    const w = worker(prefix, {
      consumer: "lost-1", leaseMs: 60_000,
      handlers: { gated: () => gate, lost: async (job) => ran.push(job.id) },
    });
    await w.waitUntilReady();
    const [running] = await enqueue(redis, prefix, [{ node: "gated" }]);
    await waitFor(async () => (await recordsOf(redis, prefix, running.id)).length === 1, { what: "gated started" });
    await blockedInXread(redis, "lost-1");
    // What a take whose reply never arrived leaves behind: entries pending on this
    // consumer that it does not run (added and taken in one step, so that the
    // worker's own take cannot get them first). One of them was deleted since.
    const lane = laneKey(prefix, "q", 4, true);
    const [lost, gone] = [envelope({ node: "lost", priority: 4 }), envelope({ node: "lost", priority: 4 })];
    const ids = await redis.eval(
      `redis.call('XGROUP', 'CREATE', KEYS[1], 'workers', '0', 'MKSTREAM')
       local ids = {}
       for i = 2, #ARGV do ids[#ids + 1] = redis.call('XADD', KEYS[1], '*', 'envelope', ARGV[i]) end
       redis.call('XREADGROUP', 'GROUP', 'workers', ARGV[1], 'COUNT', #ids, 'STREAMS', KEYS[1], '>')
       return ids`,
      1, lane, "lost-1", JSON.stringify(lost), JSON.stringify(gone),
    );
    await redis.xdel(lane, ids[1]);
    await sleep(300);
    assert.deepEqual(ran, [], "not run before the connection broke");
    const reader = await clientNamed(redis, "dagflow-node:lost-1:read:q");
    await redis.client("KILL", "ID", reader.get("id"));
    assert.equal((await finalRecord(prefix, lost.id)).outcome.kind, "completed");
    assert.deepEqual(ran, [lost.id]);
    assert.deepEqual(await recordsOf(redis, prefix, gone.id), [], "the deleted entry did not run");
    await waitFor(async () => (await redis.xpending(lane, "workers"))[0] === 0, { what: "lane's pending list cleared" });
    const runningLane = laneKey(prefix, "q");
    const [runningId] = (await redis.xrange(runningLane, "-", "+"))[0];
    assert.equal(await deliveriesOf(runningLane, runningId), 1, "the running job was not read again");
    release("done");
    assert.equal((await finalRecord(prefix, running.id)).outcome.result, "done");
  });

  it("runs two jobs that share an entry id on different lanes, and reports each on its own lane", async () => {
    const prefix = uniquePrefix("sameid");
    const lanes = [laneKey(prefix, "q", 9), laneKey(prefix, "q", 5, true)];
    const envs = [];
    for (const [i, lane] of lanes.entries()) {
      const env = envelope({ node: "n", data: i, priority: i === 0 ? 9 : 5 });
      await redis.xgroup("CREATE", lane, "workers", "0", "MKSTREAM");
      await redis.xadd(lane, "5-1", "envelope", JSON.stringify(env));
      envs.push(env);
    }
    let release;
    const gate = new Promise((r) => (release = r));
    let started = 0;
    const w = worker(prefix, {
      queues: { q: 2 },
      handlers: {
        n: async (job) => {
          started++;
          await gate;
          return job.data;
        },
      },
    });
    await w.waitUntilReady();
    await waitFor(() => started === 2, { what: "both running at once" });
    release();
    for (const [i, env] of envs.entries()) assert.equal((await finalRecord(prefix, env.id)).outcome.result, i);
    for (const lane of lanes) assert.equal(await redis.xlen(lane), 0, `${lane} emptied`);
  });

  it("removes consumers idle with no pending job from every lane's group, keeping busy ones and itself", async () => {
    const prefix = uniquePrefix("janitor");
    const mid = laneKey(prefix, "q");
    const low = laneKey(prefix, "q", 1, true);
    // Left behind by stopped workers, before this one starts: two idle consumers, on
    // two lanes, and one that still holds a job.
    await enqueue(redis, prefix, [{ node: "held", priority: 1, fresh: true }]);
    await redis.xreadgroup("GROUP", "workers", "busy", "COUNT", 1, "STREAMS", low, ">");
    await redis.xgroup("CREATE", mid, "workers", "0", "MKSTREAM");
    await redis.xgroup("CREATECONSUMER", mid, "workers", "old-a");
    await redis.xgroup("CREATECONSUMER", low, "workers", "old-b");
    const w = worker(prefix, { consumer: "janitor-self", handlers: { x: async () => 1 } });
    await w.waitUntilReady();
    const [env] = await enqueue(redis, prefix, [{ node: "x" }]);
    await finalRecord(prefix, env.id);
    await sleep(50);
    const names = async (stream) => (await redis.xinfo("CONSUMERS", stream, "workers")).map((c) => c[1]).sort();
    assert.deepEqual(await names(mid), ["janitor-self", "old-a"]);
    assert.equal(await w.removeIdleConsumers(3_600_000), 0, "nobody was idle an hour");
    assert.equal(await w.removeIdleConsumers(20), 2);
    assert.deepEqual(await names(mid), ["janitor-self"]);
    assert.deepEqual((await names(low)).filter((n) => n !== "janitor-self"), ["busy"]);
  });

  it("keeps serving at Redis's maxmemory: takes go on (XREADGROUP is not refused), reports wait until memory is freed", async () => {
    if (redisServer.external) throw new Error("this test changes maxmemory: run it without REDIS_URL");
    const prefix = uniquePrefix("oomtake");
    let release;
    const gate = new Promise((r) => (release = r));
    const ran = [];
    const w = worker(prefix, { queues: { q: 1 }, handlers: { gated: () => gate, next: async () => ran.push("next") } });
    await w.waitUntilReady();
    const [first] = await enqueue(redis, prefix, [{ node: "gated" }]);
    await waitFor(async () => (await recordsOf(redis, prefix, first.id)).length === 1, { what: "gated started" });
    const [next] = await enqueue(redis, prefix, [{ node: "next" }]);
    await redis.config("SET", "maxmemory", "1");
    try {
      release("ok"); // the slot frees: the worker takes again while every report is refused
      await waitFor(() => ran.length === 1, { what: "next taken and run at maxmemory" });
      await sleep(300);
      assert.deepEqual(await recordsOf(redis, prefix, next.id), [], "no report written at maxmemory");
    } finally {
      await redis.config("SET", "maxmemory", "0");
    }
    assert.equal((await finalRecord(prefix, next.id)).outcome.kind, "completed");
    assert.equal((await finalRecord(prefix, first.id)).outcome.result, "ok");
  });

  it("retries a take.lua that fails (a lane key of the wrong type) with backoff, and serves once it succeeds", async () => {
    const prefix = uniquePrefix("badlane");
    const errors = [];
    const w = new Worker({ redis: redisServer.url, prefix, queues: { q: 1 }, blockMs: 200, handlers: { x: async () => "served" } });
    workers.push(w);
    w.on("error", (err) => errors.push(err.message));
    await w.waitUntilReady();
    const broken = laneKey(prefix, "q", 7);
    await redis.set(broken, "not a stream");
    const [env] = await enqueue(redis, prefix, [{ node: "x" }]);
    await waitFor(() => errors.filter((m) => /read failed: .*WRONGTYPE/.test(m)).length >= 2, { what: "take.lua failing, retried" });
    assert.deepEqual(await recordsOf(redis, prefix, env.id), []);
    await redis.del(broken);
    assert.equal((await finalRecord(prefix, env.id)).outcome.result, "served");
  });
});
