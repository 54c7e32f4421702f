// End to end: a real `dagflow serve` (built-in Rust handlers on queue `default`), a
// real redis-server, TypeScript workers on queues only they serve, and the client
// over real HTTP and WebSocket. The server's lease is 2 s so that reclaim after a
// SIGKILL fits in a test.
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";

import { Client, DagflowApiError, FatalError, Worker } from "../../dist/index.js";
import { Redis } from "ioredis";

import { blockedInXread, laneKey, laneKeys, startRedis, startServer, startWorkerProcess, uniquePrefix, waitFor } from "../helpers.mjs";

let redisServer;
let redis;
let server;
let client;
let prefix;
const cleanups = [];

before(async () => {
  redisServer = await startRedis();
  redis = new Redis(redisServer.url);
  prefix = uniquePrefix("e2e");
  server = await startServer({ redisUrl: redisServer.url, prefix, queues: "default", lease: "2s" });
  client = new Client({ baseUrl: server.baseUrl });
});

after(async () => {
  for (const fn of cleanups.reverse()) await fn().catch(() => {});
  await server?.stop();
  redis?.disconnect();
  await redisServer?.stop();
});

/** A TypeScript worker on the server's Redis and prefix; closed after the file. */
function tsWorker(options) {
  const w = new Worker({ redis: redisServer.url, prefix, blockMs: 500, ...options });
  w.on("error", () => {});
  cleanups.push(() => w.close(2000));
  return w;
}

const nodeOf = (flow, name) => flow.nodes.find((n) => n.name === name);

/** How many entries (ready or running jobs) a queue's lanes hold, over all 20. */
async function queuedEntries(queue) {
  let n = 0;
  for (const lane of laneKeys(prefix, queue)) n += await redis.xlen(lane);
  return n;
}

describe("TypeScript worker with a real dagflow server", () => {
  it("publishes its lease in P:config, and the worker uses it", async () => {
    const w = tsWorker({ queues: { "ts-lease": 1 }, handlers: { x: async () => 1 } });
    await w.waitUntilReady();
    assert.equal(w.leaseMs, 2000);
  });

  it("runs a flow across Rust and TypeScript: echo feeds a TS node, whose result feeds an echo child", async () => {
    let seenParents;
    const w = tsWorker({
      queues: { "ts-mixed": 4 },
      handlers: {
        double: async (job) => {
          seenParents = job.parents;
          return { n: job.parents.src.data.n * 2, by: "typescript", jobId: job.id };
        },
      },
    });
    await w.waitUntilReady();
    const id = await client.submit({
      name: "mixed",
      nodes: [
        { name: "src", handler: "echo", data: { n: 21 } },
        { name: "double", queue: "ts-mixed", parents: ["src"] },
        { name: "sink", handler: "echo", parents: ["double"] },
      ],
    });
    const flow = await client.wait(id, { timeoutMs: 20_000 });
    assert.equal(flow.status, "completed");
    assert.deepEqual(seenParents, { src: { data: { n: 21 }, parents: {} } });
    const tsResult = { n: 42, by: "typescript", jobId: `${id}:double:1` };
    assert.deepEqual(nodeOf(flow, "double").result, tsResult);
    assert.deepEqual(nodeOf(flow, "sink").result, { data: null, parents: { double: tsResult } });
    assert.ok(nodeOf(flow, "double").startedAt, "the started record set startedAt");
  });

  it("shows a running TypeScript job as active (started record)", async () => {
    let release;
    const gate = new Promise((r) => (release = r));
    const w = tsWorker({ queues: { "ts-active": 1 }, handlers: { wait: () => gate } });
    await w.waitUntilReady();
    const id = await client.submit({ nodes: [{ name: "wait", queue: "ts-active" }] });
    await waitFor(async () => nodeOf(await client.get(id), "wait").status === "active", { what: "node active" });
    release("ok");
    const flow = await client.wait(id, { timeoutMs: 10_000 });
    assert.equal(nodeOf(flow, "wait").result, "ok");
  });

  it("retries a retryable failure on a queue only TypeScript serves (attempts: 3)", async () => {
    const attempts = [];
    const w = tsWorker({
      queues: { "ts-retry": 2 },
      handlers: {
        flaky: async (job) => {
          attempts.push(job.attempt);
          if (job.attempt < 3) throw new Error(`flaky failure ${job.attempt}`);
          return { attempt: job.attempt };
        },
      },
    });
    await w.waitUntilReady();
    const id = await client.submit({
      nodes: [{ name: "flaky", queue: "ts-retry", opts: { attempts: 3, backoff: { type: "fixed", delayMs: 100 } } }],
    });
    const flow = await client.wait(id, { timeoutMs: 20_000 });
    assert.deepEqual(attempts, [1, 2, 3]);
    assert.equal(flow.status, "completed");
    assert.equal(nodeOf(flow, "flaky").attempt, 3);
    assert.deepEqual(nodeOf(flow, "flaky").result, { attempt: 3 });
  });

  it("does not retry a FatalError", async () => {
    let runs = 0;
    const w = tsWorker({
      queues: { "ts-fatal": 1 },
      handlers: {
        broken: async () => {
          runs++;
          throw new FatalError("bad input");
        },
      },
    });
    await w.waitUntilReady();
    const id = await client.submit({ nodes: [{ name: "broken", queue: "ts-fatal", opts: { attempts: 3 } }] });
    const flow = await client.wait(id, { timeoutMs: 10_000 });
    assert.equal(flow.status, "failed");
    assert.equal(nodeOf(flow, "broken").status, "failed");
    assert.equal(nodeOf(flow, "broken").error, "bad input");
    assert.equal(runs, 1);
  });

  it("cancels a running TypeScript job: its signal fires and the node ends cancelled", async () => {
    let reason;
    const w = tsWorker({
      queues: { "ts-cancel": 1 },
      handlers: {
        hang: (job) =>
          new Promise((_, reject) =>
            job.signal.addEventListener("abort", () => {
              reason = job.signal.reason;
              reject(job.signal.reason);
            }),
          ),
      },
    });
    await w.waitUntilReady();
    const id = await client.submit({ nodes: [{ name: "hang", queue: "ts-cancel" }] });
    await waitFor(async () => nodeOf(await client.get(id), "hang").status === "active", { what: "node active" });
    const view = await client.cancel(id);
    assert.equal(view.status, "cancelled");
    await waitFor(() => reason !== undefined, { what: "signal aborted" });
    assert.equal(reason.why, "cancelled");
    const flow = await client.get(id);
    assert.equal(nodeOf(flow, "hang").status, "cancelled");
    // The worker reported it, so its entry is gone from its lane.
    await waitFor(async () => (await queuedEntries("ts-cancel")) === 0, { what: "entry removed" });
  });

  it("fails a job past its timeoutMs: the signal fires and the node fails with the timeout", async () => {
    let reason;
    const w = tsWorker({
      queues: { "ts-timeout": 1 },
      handlers: {
        slow: (job) =>
          new Promise((_, reject) =>
            job.signal.addEventListener("abort", () => {
              reason = job.signal.reason;
              reject(job.signal.reason);
            }),
          ),
      },
    });
    await w.waitUntilReady();
    const id = await client.submit({ nodes: [{ name: "slow", queue: "ts-timeout", opts: { timeoutMs: 300 } }] });
    const flow = await client.wait(id, { timeoutMs: 10_000 });
    assert.equal(flow.status, "failed");
    assert.equal(nodeOf(flow, "slow").error, "timed out after 300 ms");
    assert.equal(reason.why, "timeout");
  });

  it("streams progress to WebSocket watchers", async () => {
    // The handler reports progress only once the watcher has its snapshot, and
    // finishes only once the watcher saw the progress event.
    let subscribed;
    const afterSnapshot = new Promise((r) => (subscribed = r));
    let release;
    const gate = new Promise((r) => (release = r));
    const w = tsWorker({
      queues: { "ts-progress": 1 },
      handlers: {
        steps: async (job) => {
          await afterSnapshot;
          await job.progress({ done: 1, total: 2 });
          await gate;
          return "done";
        },
      },
    });
    await w.waitUntilReady();
    const id = await client.submit({ nodes: [{ name: "steps", queue: "ts-progress" }] });
    const messages = [];
    for await (const message of client.watch(id, { timeoutMs: 15_000 })) {
      messages.push(message);
      if (message.type === "snapshot") subscribed();
      if (message.type === "flow:updated" && message.progress !== undefined) release();
    }
    assert.equal(messages[0].type, "snapshot");
    const progress = messages.find((m) => m.type === "flow:updated" && m.progress !== undefined);
    assert.deepEqual(progress.progress, { done: 1, total: 2 });
    assert.equal(progress.node, "steps");
    const last = messages[messages.length - 1];
    assert.equal(last.node, undefined);
    assert.equal(last.status, "completed");
    const seqs = messages.filter((m) => m.type === "flow:updated").map((m) => m.seq);
    assert.ok(seqs.every((s, i) => i === 0 || s === seqs[i - 1] + 1), `seq without gaps: ${seqs}`);
    assert.ok(seqs[0] > messages[0].flow.seq || messages[0].flow.status !== "running");
    const flow = await client.get(id);
    assert.deepEqual(nodeOf(flow, "steps").progress, { done: 1, total: 2 });
  });

  it("a job of a SIGKILLed worker process is reclaimed by another after the lease", async () => {
    const queue = "ts-kill";
    const a = await startWorkerProcess({ redis: redisServer.url, prefix, queues: { [queue]: 1 }, consumer: "victim", blockMs: 500 });
    cleanups.push(() => a.kill());
    const id = await client.submit({ nodes: [{ name: "slow", queue, data: { ms: 60_000 } }] });
    await waitFor(() => a.lines.includes(`started ${id}:slow:1`), { what: "job started in the worker process" });
    await a.kill("SIGKILL");
    const killedAt = Date.now();
    let rescuedAt;
    const b = tsWorker({
      queues: { [queue]: 1 },
      consumer: "rescuer",
      handlers: {
        slow: async (job) => {
          rescuedAt = Date.now();
          return { rescuedBy: "rescuer", attempt: job.attempt };
        },
      },
    });
    await b.waitUntilReady();
    const flow = await client.wait(id, { timeoutMs: 20_000 });
    assert.equal(flow.status, "completed");
    assert.deepEqual(nodeOf(flow, "slow").result, { rescuedBy: "rescuer", attempt: 1 });
    const waited = rescuedAt - killedAt;
    assert.ok(waited >= 1000, `reclaimed only after the lease (after ${waited} ms)`);
  });

  it("close() lets a running job finish before the deadline", async () => {
    const w = new Worker({
      redis: redisServer.url,
      prefix,
      queues: { "ts-close": 1 },
      blockMs: 500,
      handlers: {
        work: async () => {
          await sleep(500);
          return "finished during close";
        },
      },
    });
    await w.waitUntilReady();
    const id = await client.submit({ nodes: [{ name: "work", queue: "ts-close" }] });
    await waitFor(async () => nodeOf(await client.get(id), "work").status === "active", { what: "active" });
    await w.close(10_000);
    const flow = await client.wait(id, { timeoutMs: 5_000 });
    assert.equal(nodeOf(flow, "work").result, "finished during close");
  });

  it("close() past its deadline abandons the job, which another worker runs after the lease", async () => {
    let abandoned;
    const first = new Worker({
      redis: redisServer.url,
      prefix,
      queues: { "ts-abandon": 1 },
      blockMs: 500,
      handlers: {
        work: (job) =>
          new Promise((resolve) =>
            job.signal.addEventListener("abort", () => {
              abandoned = job.signal.reason;
              resolve("too late");
            }),
          ),
      },
    });
    await first.waitUntilReady();
    const id = await client.submit({ nodes: [{ name: "work", queue: "ts-abandon" }] });
    await waitFor(async () => nodeOf(await client.get(id), "work").status === "active", { what: "active" });
    await first.close(200);
    assert.equal(abandoned.why, "closing");
    const second = tsWorker({ queues: { "ts-abandon": 1 }, handlers: { work: async () => "second worker" } });
    await second.waitUntilReady();
    const flow = await client.wait(id, { timeoutMs: 15_000 });
    assert.equal(nodeOf(flow, "work").result, "second worker");
  });
});

describe("lanes: the order a queue serves its jobs", () => {
  it("takes jobs by priority (node's, else the flow's), and within a priority jobs of started flows before new roots", async () => {
    const queue = "ts-lanes";
    // Submitted worst first, while no worker serves the queue. The `started` nodes are
    // children of a root the server runs (echo, on queue default): when they are
    // enqueued their flow has started.
    const specs = [
      { nodes: [{ name: "low-new", queue }], opts: { priority: 2 } },
      { nodes: [{ name: "mid-new", queue }] },
      { nodes: [{ name: "src", handler: "echo" }, { name: "mid-started", queue, parents: ["src"] }] },
      { nodes: [{ name: "top-new", queue, priority: 9 }] },
      { nodes: [{ name: "src", handler: "echo" }, { name: "top-started", queue, parents: ["src"] }], opts: { priority: 9 } },
    ];
    const ids = [];
    for (const spec of specs) ids.push(await client.submit(spec));
    await waitFor(async () => (await queuedEntries(queue)) === 5, { what: "five jobs on the queue's lanes" });
    for (const [priority, fresh] of [[9, false], [9, true], [5, false], [5, true], [2, true]]) {
      assert.equal(await redis.xlen(laneKey(prefix, queue, priority, fresh)), 1, laneKey(prefix, queue, priority, fresh));
    }
    const ran = [];
    const w = tsWorker({ queues: { [queue]: 1 }, processor: async (job) => ran.push([job.node, job.priority]) });
    await w.waitUntilReady();
    for (const id of ids) assert.equal((await client.wait(id, { timeoutMs: 15_000 })).status, "completed");
    assert.deepEqual(ran, [["top-started", 9], ["top-new", 9], ["mid-started", 5], ["mid-new", 5], ["low-new", 2]]);
  });

  it("a worker blocked with nothing to do starts a new job at once, whatever its lane", async () => {
    const queue = "ts-wake";
    const started = new Map();
    const w = tsWorker({
      queues: { [queue]: 2 },
      consumer: "ts-waker",
      blockMs: 20_000,
      processor: async (job) => started.set(job.flowId, Date.now()),
    });
    await w.waitUntilReady();
    for (const opts of [{ priority: 0 }, { priority: 8 }, {}]) {
      await blockedInXread(redis, "ts-waker", queue);
      const t0 = Date.now();
      const id = await client.submit({ nodes: [{ name: "wake", queue }], opts });
      await waitFor(() => started.has(id), { what: `job of priority ${opts.priority ?? 5} started`, timeoutMs: 5_000 });
      const took = started.get(id) - t0;
      assert.ok(took < 1_500, `started ${took} ms after the submit (the block is 20 s)`);
      assert.equal((await client.wait(id, { timeoutMs: 10_000 })).status, "completed");
    }
  });

  it("a job of a SIGKILLed worker process is reclaimed from its lane (priority 8, new) after the lease", async () => {
    const queue = "ts-kill-lane";
    const lane = laneKey(prefix, queue, 8, true);
    const a = await startWorkerProcess({ redis: redisServer.url, prefix, queues: { [queue]: 1 }, consumer: "lane-victim", blockMs: 500 });
    cleanups.push(() => a.kill());
    const id = await client.submit({ nodes: [{ name: "slow", queue, data: { ms: 60_000 } }], opts: { priority: 8 } });
    await waitFor(() => a.lines.includes(`started ${id}:slow:1`), { what: "job started in the worker process" });
    const [[, owner]] = await redis.xpending(lane, "workers", "-", "+", 10);
    assert.equal(owner, "lane-victim", `the job is pending on ${lane}`);
    await a.kill("SIGKILL");
    const killedAt = Date.now();
    let rescued;
    const b = tsWorker({
      queues: { [queue]: 1 },
      consumer: "lane-rescuer",
      handlers: {
        slow: async (job) => {
          rescued = { at: Date.now(), priority: job.priority };
          return { rescuedBy: "lane-rescuer" };
        },
      },
    });
    await b.waitUntilReady();
    const flow = await client.wait(id, { timeoutMs: 20_000 });
    assert.equal(flow.status, "completed");
    assert.deepEqual(nodeOf(flow, "slow").result, { rescuedBy: "lane-rescuer" });
    assert.equal(rescued.priority, 8);
    assert.ok(rescued.at - killedAt >= 1000, `reclaimed only after the lease (after ${rescued.at - killedAt} ms)`);
    assert.equal(await redis.xlen(lane), 0, "reported on its lane");
  });
});

describe("run-time nodes: maps, waits, re-runs", () => {
  it("runs each element of a map node on a TypeScript worker with job.item and job.index; the map's result is in order", async () => {
    const seen = [];
    const w = tsWorker({
      queues: { "ts-map": 3 },
      handlers: {
        times10: async (job) => {
          seen.push({ node: job.node, item: job.item, index: job.index, data: job.data, parents: job.parents, id: job.id });
          // Later elements finish first: the result's order must come from the index, not from completion order.
          await sleep(150 * (2 - job.index));
          return job.item * 10;
        },
      },
    });
    await w.waitUntilReady();
    const id = await client.submit({
      nodes: [
        { name: "src", handler: "echo", data: { items: [1, 2, 3] } },
        { name: "m", handler: "times10", queue: "ts-map", parents: ["src"], data: { factor: 10 }, map: { from: "src", path: "/data/items" } },
        { name: "sum", handler: "echo", parents: ["m"] },
      ],
    });
    const flow = await client.wait(id, { timeoutMs: 20_000 });
    assert.equal(flow.status, "completed", JSON.stringify(flow));
    const m = nodeOf(flow, "m");
    assert.deepEqual(m.result, [10, 20, 30]);
    assert.equal(m.map.from, "src");
    assert.equal(m.map.path, "/data/items");
    assert.equal(m.map.total, 3);
    assert.equal(m.map.done, 3);
    assert.deepEqual(nodeOf(flow, "sum").result, { data: null, parents: { m: [10, 20, 30] } });
    // Each element is a node of its own in the view, and a job whose wire name is `m[i]`.
    for (const i of [0, 1, 2]) {
      const el = nodeOf(flow, `m[${i}]`);
      assert.equal(el.status, "completed");
      assert.equal(el.mapOf, "m");
      assert.equal(el.index, i);
      assert.equal(el.result, (i + 1) * 10);
    }
    seen.sort((a, b) => a.index - b.index);
    assert.deepEqual(seen.map((s) => s.node), ["m[0]", "m[1]", "m[2]"]);
    assert.deepEqual(seen.map((s) => s.item), [1, 2, 3]);
    assert.deepEqual(seen.map((s) => s.index), [0, 1, 2]);
    assert.deepEqual(seen.map((s) => s.id), [`${id}:m[0]:1`, `${id}:m[1]:1`, `${id}:m[2]:1`]);
    for (const s of seen) {
      assert.deepEqual(s.data, { factor: 10 }, "each element gets the map node's data");
      assert.deepEqual(s.parents, {}, "and the map node's parents but the source, whose piece is item");
    }
    // The single-node view shows an element's input with item and index.
    const el1 = await client.node(id, "m[1]");
    assert.deepEqual(el1.input, { data: { factor: 10 }, parents: {}, item: 2, index: 1 });
    // Its one attempt names this worker (its `started` report carries the consumer name).
    assert.deepEqual(el1.attempts.map((a) => [a.attempt, a.outcome, a.worker]), [[1, "completed", w.consumer]]);
  });

  it("hands a null element to the handler as null, not as a missing item", async () => {
    const seen = [];
    const w = tsWorker({
      queues: { "ts-map-null": 2 },
      handlers: {
        kind: async (job) => {
          seen.push(job.index);
          return job.item === null ? "null" : job.item === undefined ? "undefined" : typeof job.item;
        },
      },
    });
    await w.waitUntilReady();
    const id = await client.submit({
      nodes: [
        { name: "src", handler: "echo", data: [null, "a"] },
        { name: "k", handler: "kind", queue: "ts-map-null", parents: ["src"], map: { from: "src", path: "/data" } },
      ],
    });
    const flow = await client.wait(id, { timeoutMs: 20_000 });
    assert.equal(flow.status, "completed", JSON.stringify(flow));
    assert.deepEqual(nodeOf(flow, "k").result, ["null", "string"]);
    assert.deepEqual(seen.sort(), [0, 1]);
  });

  it("signal() completes a waiting node with its payload; an unknown node is 404, a second signal 409", async () => {
    const w = tsWorker({ queues: { "ts-signal": 1 }, handlers: { after: async (job) => ({ approved: job.parents.gate }) } });
    await w.waitUntilReady();
    const id = await client.submit({
      nodes: [
        { name: "gate", wait: { signal: "approve" } },
        { name: "after", queue: "ts-signal", parents: ["gate"] },
      ],
    });
    const waiting = await waitFor(async () => {
      const gate = nodeOf(await client.get(id), "gate");
      return gate.status === "waiting" ? gate : null;
    }, { what: "gate waiting" });
    assert.equal(waiting.wait.kind, "signal");
    assert.equal(waiting.wait.signal, "approve");
    assert.equal(nodeOf(await client.get(id), "after").status, "pending");
    // While the flow runs: an unknown node is 404, a node that is not a waiting signal wait 409.
    await assert.rejects(client.signal(id, "nobody", 1), (err) => err instanceof DagflowApiError && err.status === 404);
    await assert.rejects(client.signal(id, "after", 1), (err) => err instanceof DagflowApiError && err.status === 409);
    const node = await client.signal(id, "gate", { ok: true, by: "test" });
    assert.equal(node.name, "gate");
    assert.equal(node.status, "completed");
    assert.deepEqual(node.result, { ok: true, by: "test" });
    const flow = await client.wait(id, { timeoutMs: 15_000 });
    assert.equal(flow.status, "completed");
    assert.deepEqual(nodeOf(flow, "after").result, { approved: { ok: true, by: "test" } });
    // Signalled once: the node is done (and here the flow too).
    await assert.rejects(client.signal(id, "gate", 1), (err) => err instanceof DagflowApiError && err.status === 409);
  });

  it("signal() without a payload completes the node with null", async () => {
    const id = await client.submit({ nodes: [{ name: "gate", wait: { signal: "go" } }] });
    await waitFor(async () => nodeOf(await client.get(id), "gate").status === "waiting", { what: "gate waiting" });
    const node = await client.signal(id, "gate");
    assert.equal(node.status, "completed");
    assert.equal(node.result, null);
    const flow = await client.wait(id, { timeoutMs: 10_000 });
    assert.equal(flow.status, "completed");
  });

  it("rerun() runs an ended node and its descendants again while the flow runs; re-running a map element is 409", async () => {
    // The flow is held running by a signal wait, so that the re-run goes to the
    // flow's live actor (a re-run of an ended flow is covered by the engine's tests).
    const runs = [];
    const w = tsWorker({
      queues: { "ts-rerun": 2 },
      handlers: {
        stamp: async (job) => {
          runs.push({ node: job.node, attempt: job.attempt });
          return { run: runs.filter((r) => r.node === job.node).length };
        },
      },
    });
    await w.waitUntilReady();
    const id = await client.submit({
      nodes: [
        { name: "root", handler: "echo", data: [1] },
        { name: "a", handler: "stamp", queue: "ts-rerun", parents: ["root"] },
        { name: "b", handler: "stamp", queue: "ts-rerun", parents: ["a"] },
        { name: "els", handler: "stamp", queue: "ts-rerun", parents: ["root"], map: { from: "root", path: "/data" } },
        { name: "hold", wait: { signal: "done" } },
      ],
    });
    const ran = async (name, run) => {
      const flow = await client.get(id);
      const n = nodeOf(flow, name);
      return n.status === "completed" && n.result.run === run ? flow : null;
    };
    await waitFor(async () => (await ran("b", 1)) && (await ran("els[0]", 1)), { what: "a, b and els[0] ran once" });
    await assert.rejects(client.rerun(id, "els[0]"), (err) => err instanceof DagflowApiError && err.status === 409);
    await assert.rejects(client.rerun(id, "nobody"), (err) => err instanceof DagflowApiError && err.status === 404);
    await assert.rejects(client.rerun(id, "hold"), (err) => err instanceof DagflowApiError && err.status === 409, "a node that has not ended");
    const view = await client.rerun(id, "a");
    assert.equal(view.id, id);
    assert.equal(view.status, "running");
    await waitFor(() => ran("b", 2), { what: "b ran again after a" });
    await client.signal(id, "hold", null);
    const flow = await client.wait(id, { timeoutMs: 15_000 });
    assert.equal(flow.status, "completed", JSON.stringify(flow));
    assert.deepEqual(nodeOf(flow, "a").result, { run: 2 });
    assert.deepEqual(nodeOf(flow, "b").result, { run: 2 });
    assert.deepEqual(nodeOf(flow, "els").result, [{ run: 1 }], "a node outside the re-run keeps its result");
    assert.equal(runs.filter((r) => r.node === "els[0]").length, 1);
    const aRuns = runs.filter((r) => r.node === "a").map((r) => r.attempt);
    assert.equal(aRuns.length, 2);
    assert.ok(aRuns[1] > aRuns[0], `the re-run is a fresh attempt (${aRuns})`);
  });
});

describe("client", () => {
  it("submits idempotently with an Idempotency-Key", async () => {
    const spec = { nodes: [{ name: "a", handler: "noop" }] };
    const key = `k-${Date.now()}`;
    const first = await client.submit(spec, { idempotencyKey: key });
    const again = await client.submit(spec, { idempotencyKey: key });
    assert.equal(again, first);
    const other = await client.submit(spec);
    assert.notEqual(other, first);
  });

  it("rejects an invalid flow with 422 and every problem", async () => {
    await assert.rejects(
      client.submit({ nodes: [{ name: "a", parents: ["missing"] }, { name: "a" }] }),
      (err) => {
        assert.ok(err instanceof DagflowApiError);
        assert.equal(err.status, 422);
        assert.equal(err.code, "invalid_flow");
        const codes = err.details.problems.map((p) => p.code);
        assert.ok(codes.length >= 2, JSON.stringify(err.details));
        return true;
      },
    );
  });

  it("gets a flow, a node with its input, lists, and deletes", async () => {
    const id = await client.submit({ name: "crud", nodes: [{ name: "a", handler: "echo", data: { x: 1 } }, { name: "b", handler: "echo", parents: ["a"] }] });
    const flow = await client.wait(id, { timeoutMs: 10_000 });
    assert.equal(flow.name, "crud");
    const b = await client.node(id, "b");
    assert.deepEqual(b.input, { data: null, parents: { a: { data: { x: 1 }, parents: {} } } });
    const page = await client.list({ status: "completed", limit: 1000 });
    assert.ok(page.flows.some((f) => f.id === id));
    await client.delete(id);
    await assert.rejects(client.get(id), (err) => err.status === 404 && err.code === "flow_not_found");
  });

  it("wait() rejects with code timeout when the flow does not end in time", async () => {
    const id = await client.submit({ nodes: [{ name: "s", handler: "sleep", data: { ms: 3000 } }] });
    await assert.rejects(client.wait(id, { timeoutMs: 300 }), (err) => err.code === "timeout");
    await client.cancel(id);
  });

  it("watch() of an unknown flow rejects with flow_not_found", async () => {
    const unknown = "01900000-0000-7000-8000-000000000000";
    await assert.rejects(
      (async () => {
        for await (const _ of client.watch(unknown, { timeoutMs: 5000 })) {
          // nothing is expected
        }
      })(),
      (err) => err.code === "flow_not_found",
    );
  });

  it("watch() reconnects when the connection drops, with a fresh snapshot", async () => {
    // A TCP proxy in front of the server whose connections the test cuts.
    const { createServer, connect } = await import("node:net");
    const target = new URL(server.baseUrl);
    const sockets = new Set();
    const proxy = createServer((downstream) => {
      const upstream = connect(Number(target.port), target.hostname);
      downstream.pipe(upstream).pipe(downstream);
      for (const s of [downstream, upstream]) {
        sockets.add(s);
        s.on("error", () => {});
        s.on("close", () => sockets.delete(s));
      }
    });
    await new Promise((r) => proxy.listen(0, "127.0.0.1", r));
    cleanups.push(() => new Promise((r) => proxy.close(r)));
    const viaProxy = new Client({ baseUrl: `http://127.0.0.1:${proxy.address().port}` });
    const id = await client.submit({ nodes: [{ name: "s", handler: "sleep", data: { ms: 1500 } }] });
    const snapshots = [];
    let last;
    for await (const m of viaProxy.watch(id, { timeoutMs: 15_000 })) {
      if (m.type === "snapshot") {
        snapshots.push(m.flow.seq);
        if (snapshots.length === 1) for (const s of sockets) s.destroy();
      }
      last = m;
    }
    assert.ok(snapshots.length >= 2, `a second snapshot after the reconnect (${snapshots})`);
    const ended = last.type === "snapshot" ? last.flow.status : last.status;
    assert.equal(ended, "completed");
  });

  it("sends the API token on HTTP and WebSocket", async () => {
    const tokenPrefix = uniquePrefix("token");
    const guarded = await startServer({ redisUrl: redisServer.url, prefix: tokenPrefix, extraArgs: ["--api-token", "s3cret"] });
    cleanups.push(() => guarded.stop());
    const anonymous = new Client({ baseUrl: guarded.baseUrl });
    await assert.rejects(anonymous.submit({ nodes: [{ name: "a", handler: "noop" }] }), (err) => err.status === 401);
    const authed = new Client({ baseUrl: guarded.baseUrl, token: "s3cret" });
    const id = await authed.submit({ nodes: [{ name: "a", handler: "noop" }] });
    const flow = await authed.wait(id, { timeoutMs: 10_000 });
    assert.equal(flow.status, "completed");
  });
});
