// Test harness: a real redis-server on a free port, a real `dagflow serve` process,
// polling with a deadline, and a worker in a child process (for SIGKILL). Nothing is
// mocked: every test talks to these processes over the network.
import { spawn } from "node:child_process";
import { randomUUID } from "node:crypto";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { Redis } from "ioredis";

const here = dirname(fileURLToPath(import.meta.url));
export const packageRoot = resolve(here, "..");

/** A free TCP port on loopback (closed again before it is returned). */
export function freePort() {
  return new Promise((resolvePort, reject) => {
    const srv = createServer();
    srv.unref();
    srv.on("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => resolvePort(port));
    });
  });
}

/** Polls `fn` until it returns a truthy value (returned) or `timeoutMs` passes (throws with `what`). */
export async function waitFor(fn, { timeoutMs = 15_000, intervalMs = 25, what = "condition" } = {}) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    try {
      last = await fn();
      if (last) return last;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}; last value: ${last instanceof Error ? last.stack : JSON.stringify(last)}`);
    }
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}

/** A unique key prefix per test, so tests never see each other's keys. */
export function uniquePrefix(name = "t") {
  return `dfnode-${name}-${randomUUID().slice(0, 8)}`;
}

/**
 * Starts redis-server on a free port (no persistence). `REDIS_URL` in the
 * environment makes the tests use that Redis instead (then `stop` and `restart` are
 * not available, and tests that need them say so by failing).
 */
export async function startRedis({ password } = {}) {
  if (process.env.REDIS_URL && !password) {
    return { url: process.env.REDIS_URL, external: true, async stop() {}, async restart() { throw new Error("cannot restart an external REDIS_URL"); } };
  }
  const port = await freePort();
  let proc;
  const launch = async () => {
    const auth = password ? ["--requirepass", password] : [];
    proc = spawn("redis-server", ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", ...auth], {
      stdio: ["ignore", "ignore", "pipe"],
    });
    proc.on("error", (err) => {
      throw new Error(`cannot start redis-server (is it installed?): ${err.message}`);
    });
    // A fresh probe per try: a connection that failed once is not reused.
    await waitFor(async () => {
      const probe = new Redis({ port, host: "127.0.0.1", password, lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null });
      probe.on("error", () => {});
      try {
        await probe.connect();
        return (await probe.ping()) === "PONG";
      } catch {
        return false;
      } finally {
        probe.disconnect();
      }
    }, { what: `redis-server on port ${port}` });
  };
  await launch();
  const stopProc = () =>
    new Promise((r) => {
      if (proc.exitCode !== null || proc.signalCode !== null) return r();
      proc.once("exit", () => r());
      proc.kill("SIGKILL");
    });
  return {
    url: password ? `redis://:${encodeURIComponent(password)}@127.0.0.1:${port}` : `redis://127.0.0.1:${port}`,
    port,
    external: false,
    stop: stopProc,
    /** Kills Redis (all data lost) and starts it again on the same port. */
    async restart(downMs = 0) {
      await stopProc();
      if (downMs > 0) await new Promise((r) => setTimeout(r, downMs));
      await launch();
    },
  };
}

/** The dagflow binary: `DAGFLOW_BIN`, else `../../target/debug/dagflow` from workers/node. */
export function dagflowBin() {
  const bin = process.env.DAGFLOW_BIN ?? resolve(packageRoot, "..", "..", "target", "debug", "dagflow");
  if (!existsSync(bin)) {
    throw new Error(
      `dagflow binary not found at ${bin}: build it with \`cargo build\` in the repository root, ` +
        "or set DAGFLOW_BIN to the path of a dagflow binary",
    );
  }
  return bin;
}

/**
 * Starts `dagflow serve` on a free port with its own data dir. `queues` are the
 * queues the server serves with its built-in handlers (noop, echo, sleep, fail).
 * Resolves once /healthz answers.
 */
export async function startServer({ redisUrl, prefix, queues = "default", lease = "2s", extraArgs = [], env = {} }) {
  const bin = dagflowBin();
  const dataDir = mkdtempSync(join(tmpdir(), "dfnode-data-"));
  const args = [
    "serve", "--bind", "127.0.0.1:0", "--redis-url", redisUrl, "--prefix", prefix,
    "--data-dir", dataDir, "--queues", queues, "--lease", lease, ...extraArgs,
  ];
  const proc = spawn(bin, args, {
    stdio: ["ignore", "pipe", "pipe"],
    env: { ...process.env, RUST_LOG: process.env.DAGFLOW_TEST_LOG ?? "info", ...env },
  });
  let log = "";
  const onData = (chunk) => {
    log += chunk.toString();
    if (process.env.DAGFLOW_TEST_VERBOSE) process.stderr.write(chunk);
  };
  proc.stdout.on("data", onData);
  proc.stderr.on("data", onData);
  // The bound address is in the "listening" log line: addr=127.0.0.1:PORT.
  const addr = await waitFor(() => {
    if (proc.exitCode !== null) throw new Error(`dagflow serve exited with ${proc.exitCode}:\n${log}`);
    // Log lines carry ANSI colour codes when stderr is a terminal; strip them.
    const clean = log.replace(/\x1b\[[0-9;]*m/g, "");
    const m = clean.match(/listening.*?addr[=:]\s*"?(\d+\.\d+\.\d+\.\d+:\d+)/);
    return m ? m[1] : null;
  }, { timeoutMs: 30_000, what: "dagflow serve to listen" }).catch((err) => {
    proc.kill("SIGKILL");
    throw new Error(`${err.message}\nserver log:\n${log}`);
  });
  const baseUrl = `http://${addr}`;
  await waitFor(async () => (await fetch(`${baseUrl}/healthz`)).ok, { what: "/healthz" });
  return {
    baseUrl,
    proc,
    log: () => log,
    async stop() {
      if (proc.exitCode === null && proc.signalCode === null) {
        const exited = new Promise((r) => proc.once("exit", r));
        proc.kill("SIGTERM");
        const t = setTimeout(() => proc.kill("SIGKILL"), 10_000);
        await exited;
        clearTimeout(t);
      }
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
}

/**
 * Starts test/fixtures/worker-process.mjs in a child process; resolves once it
 * printed `ready`. Its stdout lines (`started <jobId>`, ...) are collected in `lines`.
 */
export async function startWorkerProcess(options) {
  const proc = spawn(process.execPath, [join(here, "fixtures", "worker-process.mjs"), JSON.stringify(options)], {
    stdio: ["ignore", "pipe", "pipe"],
  });
  const lines = [];
  let buffered = "";
  let stderr = "";
  proc.stdout.on("data", (chunk) => {
    buffered += chunk.toString();
    let i;
    while ((i = buffered.indexOf("\n")) >= 0) {
      lines.push(buffered.slice(0, i));
      buffered = buffered.slice(i + 1);
    }
  });
  proc.stderr.on("data", (chunk) => (stderr += chunk.toString()));
  await waitFor(() => {
    if (proc.exitCode !== null) throw new Error(`worker process exited with ${proc.exitCode}: ${stderr}`);
    return lines.includes("ready");
  }, { what: "worker process ready" });
  return {
    proc,
    lines,
    stderr: () => stderr,
    kill(signal = "SIGKILL") {
      return new Promise((r) => {
        if (proc.exitCode !== null || proc.signalCode !== null) return r();
        proc.once("exit", r);
        proc.kill(signal);
      });
    },
  };
}

/** The lane stream of a queue (`P:q:{queue}:{priority}`, `:new` for first jobs of flows that have not started). */
export function laneKey(prefix, queue, priority = 5, fresh = false) {
  return `${prefix}:q:${queue}:${priority}${fresh ? ":new" : ""}`;
}

/** Every lane stream of a queue, in the order take.lua serves them. */
export function laneKeys(prefix, queue) {
  return Array.from({ length: 20 }, (_, i) => laneKey(prefix, queue, 9 - Math.floor(i / 2), i % 2 === 1));
}

/**
 * A job envelope as the engine writes it: `node` is required; `flowId` (a new uuid),
 * `attempt` (1), `handler` (the node), `queue` (`q`), `priority` (5), `input` (from
 * `data` and `parents`), `maxStalled` (1) and `timeoutMs` may be given.
 */
export function envelope(job) {
  const flowId = job.flowId ?? randomUUID();
  const attempt = job.attempt ?? 1;
  return {
    v: 1,
    id: `${flowId}:${job.node}:${attempt}`,
    flowId,
    node: job.node,
    attempt,
    handler: job.handler ?? job.node,
    queue: job.queue ?? "q",
    priority: job.priority ?? 5,
    input: job.input ?? { data: job.data ?? null, parents: job.parents ?? {} },
    maxStalled: job.maxStalled ?? 1,
    enqueuedAtMs: Date.now(),
    ...(job.timeoutMs !== undefined ? { timeoutMs: job.timeoutMs } : {}),
    ...(job.traceparent !== undefined ? { traceparent: job.traceparent } : {}),
  };
}

/**
 * Puts jobs ({@link envelope}'s fields, and `fresh`) on their lanes the way the
 * engine's enqueue.lua does for a ready job (the lane's group created from the start
 * of the stream, an entry with the envelope, the job's field in the flow's jobs hash
 * naming the entry), so that protocol tests need no engine. A few lines of Lua of
 * its own rather than enqueue.lua, whose arguments change with engine features a
 * worker never sees. A job goes to the lane of its priority, the `:new` one with
 * `fresh: true`. All jobs of one call are added at once (a transaction). Returns the
 * envelopes.
 */
export async function enqueue(redis, prefix, jobs) {
  const out = [];
  const multi = redis.multi();
  for (const job of jobs) {
    const env = envelope(job);
    const fresh = job.fresh ?? false;
    multi.eval(
      `if redis.call('EXISTS', KEYS[1]) == 0 then redis.call('XGROUP', 'CREATE', KEYS[1], 'workers', '0', 'MKSTREAM') end
       local id = redis.call('XADD', KEYS[1], '*', 'envelope', ARGV[1])
       redis.call('HSET', KEYS[2], ARGV[2], cjson.encode({ s = 'queued', q = ARGV[3], l = tonumber(ARGV[4]), e = id }))
       return id`,
      2, laneKey(prefix, env.queue, env.priority, fresh), `${prefix}:flow:${env.flowId}:jobs`,
      JSON.stringify(env), `${env.node}:${env.attempt}`, env.queue, String(2 * (9 - env.priority) + (fresh ? 1 : 0)),
    );
    out.push(env);
  }
  const replies = await multi.exec();
  for (const [err] of replies ?? []) if (err) throw err;
  return out;
}

/** The `CLIENT LIST` line of the connection named `name`, as a map of its fields; `undefined` when there is none. */
export async function clientNamed(redis, name) {
  const lines = String(await redis.client("LIST")).split("\n");
  const line = lines.find((l) => l.includes(` name=${name} `));
  if (!line) return undefined;
  return new Map(line.trim().split(" ").map((kv) => [kv.slice(0, kv.indexOf("=")), kv.slice(kv.indexOf("=") + 1)]));
}

/** Resolves once the reading connection of worker `consumer` on `queue` is blocked in a plain XREAD. */
export function blockedInXread(redis, consumer, queue = "q") {
  return waitFor(async () => {
    const c = await clientNamed(redis, `dagflow-node:${consumer}:read:${queue}`);
    return c?.get("cmd") === "xread" && c.get("flags").includes("b");
  }, { what: `${consumer} blocked in XREAD` });
}

/** Every record on `P:completions`, decoded: `{id, flow, node, attempt, job, outcome}`. */
export async function completions(redis, prefix) {
  const entries = await redis.xrange(`${prefix}:completions`, "-", "+");
  return entries.map(([id, fields]) => {
    const rec = { id };
    for (let i = 0; i < fields.length; i += 2) rec[fields[i]] = fields[i + 1];
    rec.outcome = JSON.parse(rec.outcome);
    return rec;
  });
}

/** The records of one job, in stream order. */
export async function recordsOf(redis, prefix, jobId) {
  return (await completions(redis, prefix)).filter((r) => r.job === jobId);
}
