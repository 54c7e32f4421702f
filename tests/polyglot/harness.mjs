// Process harness of the cross-language test: a real redis-server on a free port, a
// real `dagflow serve`, and `python3 -m dagflow_worker` processes, plus a preflight
// that names exactly what is missing. It follows workers/node/test/helpers.mjs and
// workers/python/tests/conftest.py, but imports nothing from them: their harnesses
// are those packages' own test code, free to change, and this test must keep
// running whatever they do. It needs no npm package of its own (Redis readiness is
// a raw PING), so the only install is the node package's, which the test exercises.
import { spawn, spawnSync } from "node:child_process";
import { randomUUID } from "node:crypto";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { connect, createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
/** The repository root (this file is tests/polyglot/harness.mjs). */
export const repoRoot = resolve(here, "..", "..");
/** The built TypeScript package the test imports. */
export const nodePackageEntry = join(repoRoot, "workers", "node", "dist", "index.js");
/** The Python interpreter: `PYTHON`, else `python3` (what scripts/test.sh installs into). */
export const python = process.env.PYTHON ?? "python3";

/** The dagflow binary: `DAGFLOW_BIN`, else target/debug/dagflow (what scripts/test.sh builds). */
export function dagflowBin() {
  return process.env.DAGFLOW_BIN ?? join(repoRoot, "target", "debug", "dagflow");
}

/**
 * Checks every prerequisite at once and throws one error listing what is missing
 * and how to get it. The test must fail, not skip, without them: a polyglot test
 * that silently skips would let a broken package through `scripts/test.sh`.
 */
export function preflight() {
  const problems = [];
  if (!existsSync(nodePackageEntry)) {
    problems.push(`the TypeScript package is not built (${nodePackageEntry} is missing): run \`cd workers/node && npm install && npm run build\``);
  } else if (!existsSync(join(repoRoot, "workers", "node", "node_modules", "ioredis"))) {
    problems.push("the TypeScript package's dependencies are not installed (workers/node/node_modules/ioredis): run `cd workers/node && npm install`");
  }
  const py = spawnSync(python, ["-c", "import dagflow_worker"], { encoding: "utf8" });
  if (py.error) {
    problems.push(`cannot run ${python} (${py.error.message}): install Python 3.10+ or set PYTHON`);
  } else if (py.status !== 0) {
    problems.push(`${python} cannot import dagflow_worker: run \`${python} -m pip install -e workers/python\`\n${py.stderr.trim()}`);
  }
  const bin = dagflowBin();
  if (!existsSync(bin)) {
    problems.push(`dagflow binary not found at ${bin}: run \`cargo build --bin dagflow\` in the repository root, or set DAGFLOW_BIN`);
  }
  if (spawnSync("redis-server", ["--version"]).error) {
    problems.push("redis-server is not on PATH (apt-get install redis-server)");
  }
  if (problems.length > 0) {
    throw new Error(`the polyglot test cannot run:\n- ${problems.join("\n- ")}`);
  }
}

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

/** Polls `fn` until it returns a truthy value (returned) or `timeoutMs` passes (throws naming `what`). */
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
      const shown = last instanceof Error ? last.message : JSON.stringify(last);
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}; last value: ${shown}`);
    }
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}

/** A unique key prefix, so this file never sees keys of another run on a shared Redis. */
export function uniquePrefix(name) {
  return `polyglot-${name}-${randomUUID().slice(0, 8)}`;
}

/** Kills `proc` with `signal` and resolves once it exited (at once if it already had). */
function stopProcess(proc, signal = "SIGKILL", graceMs = 10_000) {
  return new Promise((r) => {
    if (proc.exitCode !== null || proc.signalCode !== null) return r();
    const force = setTimeout(() => proc.kill("SIGKILL"), graceMs);
    proc.once("exit", () => {
      clearTimeout(force);
      r();
    });
    proc.kill(signal);
  });
}

/** One `PING` over a raw socket: true on `+PONG` (no Redis client needed for readiness). */
function ping(port) {
  return new Promise((r) => {
    const socket = connect(port, "127.0.0.1");
    let reply = "";
    const done = (ok) => {
      socket.destroy();
      r(ok);
    };
    socket.setTimeout(500, () => done(false));
    socket.on("error", () => done(false));
    socket.on("connect", () => socket.write("PING\r\n"));
    socket.on("data", (chunk) => {
      reply += chunk.toString();
      if (reply.includes("\r\n")) done(reply.startsWith("+PONG"));
    });
  });
}

/** Starts redis-server on a free port without persistence; resolves once it answers PING. */
export async function startRedis() {
  const port = await freePort();
  const dir = mkdtempSync(join(tmpdir(), "polyglot-redis-"));
  const proc = spawn("redis-server", ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", dir], {
    stdio: ["ignore", "ignore", "pipe"],
  });
  let stderr = "";
  proc.stderr.on("data", (c) => (stderr += c.toString()));
  await waitFor(() => {
    if (proc.exitCode !== null) throw new Error(`redis-server exited with ${proc.exitCode}: ${stderr}`);
    return ping(port);
  }, { what: `redis-server on port ${port}` });
  return {
    url: `redis://127.0.0.1:${port}`,
    async stop() {
      await stopProcess(proc);
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/**
 * Starts `dagflow serve` (built-in Rust handlers echo, noop, sleep, fail on `queues`)
 * with its own data dir, bound to port 0; resolves with its base URL once /readyz
 * answers. The bound address is read from its "listening" log line, so no port race.
 */
export async function startServer({ redisUrl, prefix, queues = "default", lease = "2s" }) {
  const dataDir = mkdtempSync(join(tmpdir(), "polyglot-data-"));
  const proc = spawn(dagflowBin(), [
    "serve", "--bind", "127.0.0.1:0", "--redis-url", redisUrl, "--prefix", prefix, "--data-dir", dataDir,
    "--queues", queues, "--lease", lease, "--shutdown-timeout", "2s",
  ], { stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, RUST_LOG: process.env.DAGFLOW_TEST_LOG ?? "info" } });
  let log = "";
  const onData = (chunk) => {
    log += chunk.toString();
    if (process.env.DAGFLOW_TEST_VERBOSE) process.stderr.write(chunk);
  };
  proc.stdout.on("data", onData);
  proc.stderr.on("data", onData);
  try {
    const addr = await waitFor(() => {
      if (proc.exitCode !== null) throw new Error(`dagflow serve exited with ${proc.exitCode}`);
      // Log lines carry ANSI colour codes when stderr is a terminal; strip them.
      const m = log.replace(/\x1b\[[0-9;]*m/g, "").match(/listening.*?addr[=:]\s*"?(\d+\.\d+\.\d+\.\d+:\d+)/);
      return m ? m[1] : null;
    }, { timeoutMs: 30_000, what: "dagflow serve to listen" });
    const baseUrl = `http://${addr}`;
    await waitFor(async () => (await fetch(`${baseUrl}/readyz`)).ok, { what: "/readyz" });
    return {
      baseUrl,
      pid: proc.pid,
      log: () => log,
      async stop() {
        await stopProcess(proc, "SIGTERM");
        rmSync(dataDir, { recursive: true, force: true });
      },
    };
  } catch (err) {
    await stopProcess(proc);
    throw new Error(`${err.message}\nserver log:\n${log.slice(-4000)}`);
  }
}

/**
 * Starts `python3 -m dagflow_worker` with the handlers of tests/polyglot/
 * polyglot_handlers.py; resolves once it logged that it is serving. The handlers
 * print one line per event on stdout (collected in `lines`, with `lineAt` giving
 * when a line arrived); the worker's own log
 * (stderr) is in `log()`.
 */
export async function startPythonWorker({ redisUrl, prefix, queues, consumer }) {
  const args = [
    "-m", "dagflow_worker", "--redis-url", redisUrl, "--prefix", prefix, "--queues", queues,
    "--handlers", "polyglot_handlers:handlers", "--shutdown-timeout", "2", "--log-level", "INFO",
    ...(consumer ? ["--consumer", consumer] : []),
  ];
  const proc = spawn(python, args, {
    cwd: here,
    stdio: ["ignore", "pipe", "pipe"],
    env: { ...process.env, PYTHONPATH: [here, process.env.PYTHONPATH].filter(Boolean).join(":"), PYTHONUNBUFFERED: "1" },
  });
  const lines = [];
  const lineTimes = new Map();
  let buffered = "";
  let log = "";
  proc.stdout.on("data", (chunk) => {
    buffered += chunk.toString();
    let i;
    while ((i = buffered.indexOf("\n")) >= 0) {
      const line = buffered.slice(0, i);
      lines.push(line);
      if (!lineTimes.has(line)) lineTimes.set(line, Date.now());
      buffered = buffered.slice(i + 1);
    }
  });
  proc.stderr.on("data", (chunk) => {
    log += chunk.toString();
    if (process.env.DAGFLOW_TEST_VERBOSE) process.stderr.write(chunk);
  });
  const worker = {
    pid: proc.pid,
    lines,
    /** When `line` first arrived (ms since the epoch), or undefined. */
    lineAt: (line) => lineTimes.get(line),
    log: () => log,
    /** SIGKILL by default: no goodbye, no report, its jobs stay pending in Redis. */
    kill: (signal = "SIGKILL") => stopProcess(proc, signal),
    exited: () => proc.exitCode !== null || proc.signalCode !== null,
  };
  try {
    // "worker <consumer> serving <queues> (lease N ms)" comes once its groups exist.
    await waitFor(() => {
      if (worker.exited()) throw new Error(`python worker exited with ${proc.exitCode ?? proc.signalCode}`);
      return /worker \S+ serving/.test(log);
    }, { timeoutMs: 20_000, what: "the python worker to serve" });
  } catch (err) {
    await worker.kill();
    throw new Error(`${err.message}\npython worker log:\n${log.slice(-4000)}`);
  }
  return worker;
}
