// End-to-end throughput of the TypeScript worker: diamond flows (1 -> W -> 1) whose
// every node runs a no-op TypeScript handler, engine and Redis included.
//
//   node bench/bench.mjs [--flows 2000] [--width 10] [--concurrency 50] [--runs 1] [--bin PATH]
//                        [--worker node|rust|server]
//
// It starts its own redis-server (free port, no persistence), a `dagflow serve` that
// serves no queue itself (`--queues=`), and a Worker in this process serving queue
// `default` with handler `noop` at the given concurrency; then it drives the server
// with `dagflow bench diamond --over-http`, which submits the flows over HTTP, follows
// them over the WebSocket and prints one JSON line per run. Every node of those flows
// (handler `noop`, queue `default`) therefore runs in this worker.
//
// For comparison, `--worker rust` serves the queue with a `dagflow worker` process
// (the Rust remote worker, same protocol) instead, and `--worker server` lets the
// server's own local workers serve it (no completions stream).
//
// The binary: --bin, else DAGFLOW_BIN, else /tmp/dagflow-bin/dagflow-release, else
// ../../target/release/dagflow. Measure with a release build: a debug engine is the
// bottleneck long before the worker is.
import { spawn } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { resolve } from "node:path";
import { parseArgs } from "node:util";

import { Worker } from "../dist/index.js";
import { packageRoot, startRedis, startServer, uniquePrefix } from "../test/helpers.mjs";

const { values: args } = parseArgs({
  options: {
    flows: { type: "string", default: "2000" },
    width: { type: "string", default: "10" },
    concurrency: { type: "string", default: "50" },
    runs: { type: "string", default: "1" },
    "in-flight": { type: "string", default: "64" },
    bin: { type: "string" },
    worker: { type: "string", default: "node" },
  },
});

const candidates = [
  args.bin,
  process.env.DAGFLOW_BIN,
  "/tmp/dagflow-bin/dagflow-release",
  resolve(packageRoot, "..", "..", "target", "release", "dagflow"),
].filter(Boolean);
const bin = candidates.find((p) => existsSync(p));
if (!bin) {
  console.error(`no dagflow binary found (tried ${candidates.join(", ")}); build one with \`cargo build --release\` or pass --bin`);
  process.exit(2);
}
process.env.DAGFLOW_BIN = bin;

if (!["node", "rust", "server"].includes(args.worker)) {
  console.error(`--worker must be node, rust or server, not ${args.worker}`);
  process.exit(2);
}
const redis = await startRedis();
const prefix = uniquePrefix("bench");
const concurrency = Number(args.concurrency);
const server = await startServer({
  redisUrl: redis.url,
  prefix,
  queues: args.worker === "server" ? `default=${concurrency}` : "",
  lease: "30s",
  env: { RUST_LOG: "warn,dagflow::cli::server=info" },
});
let worker;
let rustWorker;
let failures = 0;
if (args.worker === "node") {
  worker = new Worker({ redis: redis.url, prefix, queues: { default: concurrency }, handlers: { noop: async () => null } });
  worker.on("failed", () => failures++);
  worker.on("error", (err) => console.error(`worker error: ${err.message}`));
  await worker.waitUntilReady();
} else if (args.worker === "rust") {
  rustWorker = spawn(bin, ["worker", "--redis-url", redis.url, "--prefix", prefix, "--queues", `default=${concurrency}`, "--lease", "30s"], {
    stdio: ["ignore", "ignore", "inherit"],
    env: { ...process.env, RUST_LOG: "warn" },
  });
  await new Promise((r) => setTimeout(r, 500));
}

const benchArgs = [
  "bench", "diamond", "--width", args.width, "--flows", args.flows, "--runs", args.runs,
  "--in-flight", args["in-flight"], "--over-http", server.baseUrl, "--redis-url", redis.url, "--no-progress",
];
console.error(`binary: ${bin}`);
const who = { node: "TypeScript worker (this process)", rust: "dagflow worker process (Rust)", server: "the server's own workers" }[args.worker];
console.error(`worker: queue default, concurrency ${concurrency}, handler noop, ${who}`);
console.error(`driver: dagflow ${benchArgs.join(" ")}`);
/** CPU time (µs) a process used so far, from /proc (Linux; 0 elsewhere). */
function procCpuUs(pid) {
  try {
    const fields = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1].split(" ");
    return (Number(fields[11]) + Number(fields[12])) * (1e6 / 100); // utime + stime, in clock ticks of 10 ms
  } catch {
    return 0;
  }
}
const cpuBefore = process.cpuUsage();
const serverCpuBefore = procCpuUs(server.proc.pid);
const rustCpuBefore = rustWorker ? procCpuUs(rustWorker.pid) : 0;
const results = await new Promise((resolveRun, reject) => {
  const proc = spawn(bin, benchArgs, { stdio: ["ignore", "pipe", "inherit"], env: { ...process.env, RUST_LOG: "warn" } });
  let out = "";
  proc.stdout.on("data", (c) => (out += c));
  proc.on("error", reject);
  proc.on("exit", (code) => {
    if (code !== 0) return reject(new Error(`dagflow bench exited with ${code}: ${out}`));
    resolveRun(out.trim().split("\n").filter(Boolean).map((line) => JSON.parse(line)));
  });
});

const cpu = process.cpuUsage(cpuBefore);
const serverCpu = procCpuUs(server.proc.pid) - serverCpuBefore;
const rustCpu = rustWorker ? procCpuUs(rustWorker.pid) - rustCpuBefore : 0;
const nodesRun = results.reduce((n, r) => n + (r.nodes_total ?? 0), 0);
for (const r of results) {
  // Over all runs of this invocation (one server and worker serve them all).
  r.server_cpu_us_per_node = +(serverCpu / nodesRun).toFixed(1);
  if (args.worker === "node") r.worker_cpu_us_per_node = +((cpu.user + cpu.system) / nodesRun).toFixed(1);
  if (args.worker === "rust") r.worker_cpu_us_per_node = +(rustCpu / nodesRun).toFixed(1);
  console.log(JSON.stringify(r));
  console.error(
    `${who}, diamond W=${args.width}, ${args.flows} flows, concurrency ${concurrency}: ` +
      `${Math.round(r.nodes_per_s)} nodes/s (${r.flows_per_s} flows/s)`,
  );
}
if (failures > 0) console.error(`${failures} jobs failed`);
await worker?.close(5000);
if (rustWorker) await new Promise((r) => (rustWorker.once("exit", r), rustWorker.kill("SIGTERM")));
await server.stop();
await redis.stop();
