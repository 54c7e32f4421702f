// Cross-language end to end (issue 11, part 4): one real redis-server, one real
// `dagflow serve --queues default --lease 2s` (the built-in Rust handlers echo, noop,
// sleep and fail on queue `default`), a TypeScript worker in this process (the
// built workers/node package) serving queue `ts`, and `python3 -m dagflow_worker`
// processes (handlers in polyglot_handlers.py) serving `py` and `py-kill`. The
// server serves neither `ts` nor `py`: a node on them runs in that language or not
// at all, and every TS/Python result carries `lang` and its process id to prove it.
//
// Run: `node --test tests/polyglot/` from the repository root, after
// `cd workers/node && npm install && npm run build`, `pip install -e workers/python`
// and `cargo build --bin dagflow` (or DAGFLOW_BIN). Missing any of them fails the
// file with one message naming each (never a skip).
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { pathToFileURL } from "node:url";

import {
  nodePackageEntry, preflight, startPythonWorker, startRedis, startServer, uniquePrefix, waitFor,
} from "./harness.mjs";

// Before importing the package: without its dist/ the import itself would fail
// with a bare "module not found"; preflight says what to run instead.
preflight();
const { Client, Worker } = await import(pathToFileURL(nodePackageEntry).href);

/** The server's lease: short, so that a SIGKILLed worker's job comes back in seconds. */
const LEASE = "2s";
/** Longest wait for one flow; the whole file takes ~15 s. */
const FLOW_TIMEOUT_MS = 25_000;

let redis;
let server;
let client;
let prefix;
let tsWorker;
let pyWorker;
/** Errors the TS worker recovered from by itself: shown when a flow does not end. */
const tsErrors = [];
/** Per cancelled TS job id: the AbortSignal's reason its handler saw. */
const abortReasons = new Map();
/** Processes and workers to stop after the file, last started first. */
const cleanups = [];

before(async () => {
  redis = await startRedis();
  cleanups.push(() => redis.stop());
  prefix = uniquePrefix("e2e");
  server = await startServer({ redisUrl: redis.url, prefix, queues: "default", lease: LEASE });
  cleanups.push(() => server.stop());
  client = new Client({ baseUrl: server.baseUrl });

  tsWorker = new Worker({
    redis: redis.url,
    prefix,
    queues: { ts: 4 },
    blockMs: 500,
    handlers: {
      // The TypeScript side of the diamond: doubles the root's n, says what it saw.
      "ts-side": async (job) => ({
        lang: "ts", pid: process.pid, job: job.id, value: job.parents.src.data.n * 2, sawParents: job.parents,
      }),
      // Runs until its signal fires (cancel), then rejects with the signal's reason.
      hang: (job) =>
        new Promise((_, reject) =>
          job.signal.addEventListener("abort", () => {
            abortReasons.set(job.id, job.signal.reason);
            reject(job.signal.reason);
          }),
        ),
    },
  });
  tsWorker.on("error", (err) => tsErrors.push(err.message));
  cleanups.push(() => tsWorker.close(2_000));
  // The Python worker of queue `py` starts while the TS worker connects.
  const py = startPythonWorker({ redisUrl: redis.url, prefix, queues: "py=4" });
  cleanups.push(async () => (await py.catch(() => null))?.kill("SIGTERM"));
  [pyWorker] = await Promise.all([py, tsWorker.waitUntilReady()]);
});

after(async () => {
  for (const stop of cleanups.reverse()) await stop().catch(() => {});
});

const nodeOf = (flow, name) => {
  const node = flow.nodes.find((n) => n.name === name);
  assert.ok(node, `flow has a node ${name}`);
  return node;
};

/** Waits for the flow to end; on a timeout, fails with the logs that say why. */
async function finished(flowId, workers = [pyWorker]) {
  try {
    return await client.wait(flowId, { timeoutMs: FLOW_TIMEOUT_MS });
  } catch (err) {
    const view = await client.get(flowId).catch(() => null);
    throw new Error(
      `flow ${flowId} did not end: ${err.message}\nview: ${JSON.stringify(view)}\n` +
        `TS worker errors: ${JSON.stringify(tsErrors)}\n` +
        workers.map((w) => `python worker ${w.pid} log:\n${w.log().slice(-3000)}`).join("\n") +
        `\nserver log:\n${server.log().slice(-3000)}`,
    );
  }
}

describe("one flow across Rust, TypeScript and Python", () => {
  it("every worker uses the lease the server publishes", () => {
    assert.equal(tsWorker.leaseMs, 2000);
    assert.match(pyWorker.log(), /serving py=4 \(lease 2000 ms\)/);
  });

  it("a Rust root feeds a TypeScript and a Python node, whose results reach a Rust child", { timeout: 30_000 }, async () => {
    const id = await client.submit({
      name: "polyglot diamond",
      nodes: [
        { name: "src", handler: "echo", data: { n: 7 } },
        { name: "ts-side", queue: "ts", parents: ["src"] },
        { name: "py-side", queue: "py", parents: ["src"] },
        { name: "join", handler: "echo", parents: ["ts-side", "py-side"] },
      ],
    });
    const flow = await finished(id);
    assert.equal(flow.status, "completed", JSON.stringify(flow));

    // echo's result is its input: the root's own data, no parents.
    const src = { data: { n: 7 }, parents: {} };
    assert.deepEqual(nodeOf(flow, "src").result, src);
    const ts = { lang: "ts", pid: process.pid, job: `${id}:ts-side:1`, value: 14, sawParents: { src } };
    const py = { lang: "py", pid: pyWorker.pid, job: `${id}:py-side:1`, value: 21, sawParents: { src } };
    assert.deepEqual(nodeOf(flow, "ts-side").result, ts);
    assert.deepEqual(nodeOf(flow, "py-side").result, py);
    // The Rust child received exactly the TypeScript and the Python result.
    assert.deepEqual(nodeOf(flow, "join").result, { data: null, parents: { "ts-side": ts, "py-side": py } });
    assert.deepEqual(
      flow.nodes.map((n) => [n.name, n.queue, n.status]),
      [["src", "default", "completed"], ["ts-side", "ts", "completed"], ["py-side", "py", "completed"], ["join", "default", "completed"]],
    );
    // Both outside workers reported `started`, so the engine knows when they began.
    for (const name of ["ts-side", "py-side"]) {
      const node = nodeOf(flow, name);
      assert.ok(node.startedAt <= node.finishedAt, `${name} has startedAt <= finishedAt: ${JSON.stringify(node)}`);
    }
    // The Python side ran once, in the Python worker process.
    assert.deepEqual(pyWorker.lines.filter((l) => l.includes(`${id}:`)), [`ran ${id}:py-side:1 ${pyWorker.pid}`]);
  });

  it("retries a node on a queue only Python serves (attempts 3, retryable failures on 1 and 2)", { timeout: 30_000 }, async () => {
    const id = await client.submit({
      name: "polyglot retry",
      nodes: [
        { name: "flaky", queue: "py", opts: { attempts: 3, backoff: { type: "fixed", delayMs: 100 } } },
        { name: "after", handler: "echo", parents: ["flaky"] },
      ],
    });
    const flow = await finished(id);
    assert.equal(flow.status, "completed", JSON.stringify(flow));
    const flaky = nodeOf(flow, "flaky");
    assert.equal(flaky.attempt, 3);
    const result = { lang: "py", pid: pyWorker.pid, attempt: 3, attemptsSeen: [1, 2, 3] };
    assert.deepEqual(flaky.result, result);
    // The engine promoted each due retry into `py` (the server does not serve it) and
    // the Python worker ran the three attempts, one after the other.
    assert.deepEqual(
      pyWorker.lines.filter((l) => l.includes(`${id}:`)),
      [1, 2, 3].map((a) => `attempt ${id}:flaky:${a} ${pyWorker.pid}`),
    );
    assert.deepEqual(nodeOf(flow, "after").result, { data: null, parents: { flaky: result } });
  });

  it("cancels a running TypeScript job: its AbortSignal fires and the node ends cancelled", { timeout: 30_000 }, async () => {
    const id = await client.submit({
      name: "polyglot cancel",
      nodes: [
        { name: "hang", queue: "ts" },
        { name: "never", handler: "echo", parents: ["hang"] },
      ],
    });
    await waitFor(async () => nodeOf(await client.get(id), "hang").status === "active", { what: "the TS job to run" });
    const jobId = `${id}:hang:1`;
    assert.equal(abortReasons.has(jobId), false, "not aborted before the cancel");
    const cancelled = await client.cancel(id);
    assert.equal(cancelled.status, "cancelled");
    await waitFor(() => abortReasons.has(jobId), { what: "the handler's AbortSignal to fire" });
    assert.equal(abortReasons.get(jobId).why, "cancelled");
    const flow = await client.get(id);
    assert.equal(flow.status, "cancelled");
    assert.equal(nodeOf(flow, "hang").status, "cancelled");
    assert.equal(nodeOf(flow, "never").status, "cancelled");
    assert.equal(nodeOf(flow, "never").result, undefined);
  });

  it("reclaims the job of a SIGKILLed Python worker after the lease, in a second Python worker", { timeout: 40_000 }, async () => {
    // Its own queue, so that the `py` worker cannot take the job back.
    const victim = await startPythonWorker({ redisUrl: redis.url, prefix, queues: "py-kill=1", consumer: "polyglot-victim" });
    cleanups.push(() => victim.kill());
    const id = await client.submit({
      name: "polyglot reclaim",
      nodes: [
        { name: "slow", queue: "py-kill", data: { ms: 1500 } },
        { name: "after", handler: "echo", parents: ["slow"] },
      ],
    });
    const jobId = `${id}:slow:1`;
    await waitFor(() => victim.lines.includes(`started ${jobId} ${victim.pid}`), { what: "the victim to start the job" });
    await victim.kill("SIGKILL");
    const killedAt = Date.now();
    assert.equal(victim.lines.includes(`finished ${jobId} ${victim.pid}`), false, "killed mid-job");

    const rescuer = await startPythonWorker({ redisUrl: redis.url, prefix, queues: "py-kill=1", consumer: "polyglot-rescuer" });
    cleanups.push(() => rescuer.kill("SIGTERM"));
    const flow = await finished(id, [victim, rescuer]);
    assert.equal(flow.status, "completed", JSON.stringify(flow));
    const slow = nodeOf(flow, "slow");
    const result = { lang: "py", pid: rescuer.pid, job: jobId, sleptMs: 1500 };
    assert.deepEqual(slow.result, result);
    assert.equal(slow.attempt, 1, "a reclaim is not a retry");
    assert.deepEqual(nodeOf(flow, "after").result, { data: null, parents: { slow: result } });
    assert.deepEqual(rescuer.lines, [`started ${jobId} ${rescuer.pid}`, `finished ${jobId} ${rescuer.pid}`]);
    assert.match(rescuer.log(), new RegExp(`job ${jobId} reclaimed`));
    // Not before the lease: the victim renewed it every lease/3 until it died, so the
    // job was idle for the full 2 s no earlier than ~1.33 s after the kill.
    const waited = rescuer.lineAt(`started ${jobId} ${rescuer.pid}`) - killedAt;
    assert.ok(waited >= 1_000 && waited < 15_000, `reclaimed ${waited} ms after the kill`);
  });
});
