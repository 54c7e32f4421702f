// End-to-end throughput of the TypeScript worker: diamond flows (1 -> W -> 1) whose
// every node runs a no-op TypeScript handler, engine and Redis included.
//
//   node bench/bench.mjs [--flows 2000] [--width 10] [--concurrency 50] [--runs 1] [--bin PATH]
//
// It starts its own redis-server (free port, no persistence), a `dagflow serve` that
// serves no queue itself (`--queues=`), and a Worker in this process serving queue
// `default` with handler `noop` at the given concurrency; then it drives the server
// with `dagflow bench diamond --over-http`, which submits the flows over HTTP, follows
// them over the WebSocket and prints one JSON line per run. Every node of those flows
// (handler `noop`, queue `default`) therefore runs in this worker.
//
// The binary: --bin, else DAGFLOW_BIN, else /tmp/dagflow-bin/dagflow-release, else
// ../../target/release/dagflow. Measure with a release build: a debug engine is the
// bottleneck long before the worker is.
import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
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

const redis = await startRedis();
const prefix = uniquePrefix("bench");
const server = await startServer({ redisUrl: redis.url, prefix, queues: "", lease: "30s", env: { RUST_LOG: "warn,dagflow::cli::server=info" } });
const concurrency = Number(args.concurrency);
const worker = new Worker({ redis: redis.url, prefix, queues: { default: concurrency }, handlers: { noop: async () => null } });
let failures = 0;
worker.on("failed", () => failures++);
worker.on("error", (err) => console.error(`worker error: ${err.message}`));
await worker.waitUntilReady();

const benchArgs = [
  "bench", "diamond", "--width", args.width, "--flows", args.flows, "--runs", args.runs,
  "--in-flight", args["in-flight"], "--over-http", server.baseUrl, "--redis-url", redis.url, "--no-progress",
];
console.error(`binary: ${bin}`);
console.error(`worker: queue default, concurrency ${concurrency}, handler noop (TypeScript, this process)`);
console.error(`driver: dagflow ${benchArgs.join(" ")}`);
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

for (const r of results) {
  console.log(JSON.stringify(r));
  console.error(
    `TypeScript worker, diamond W=${args.width}, ${r.flows ?? args.flows} flows, concurrency ${concurrency}: ` +
      `${Math.round(r.nodes_per_s)} nodes/s (${r.flows_per_s} flows/s)`,
  );
}
if (failures > 0) console.error(`${failures} jobs failed`);
await worker.close(5000);
await server.stop();
await redis.stop();
