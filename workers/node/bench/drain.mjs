// The worker's own ceiling, without an engine: N jobs are put on a queue's lane as
// the engine would, then a Worker (no-op handler) drains them; reported is the
// time from start to the last job's final report in Redis. Each job costs the worker
// a share of a read, a `started` report and a final report.
//
//   node bench/drain.mjs [--jobs 50000] [--concurrency 50]
import { randomUUID } from "node:crypto";
import { parseArgs } from "node:util";
import { Redis } from "ioredis";

import { Worker } from "../dist/index.js";
import { enqueue, startRedis, uniquePrefix } from "../test/helpers.mjs";

const { values: args } = parseArgs({
  options: { jobs: { type: "string", default: "50000" }, concurrency: { type: "string", default: "50" } },
});
const jobs = Number(args.jobs);
const redisServer = await startRedis();
const redis = new Redis(redisServer.url);
const prefix = uniquePrefix("drain");

// 100 jobs per flow, first jobs of new flows (the `:new` lane), added in one
// transaction per flow.
const perFlow = 100;
for (let f = 0; f < jobs / perFlow; f++) {
  const flowId = randomUUID();
  await enqueue(redis, prefix, Array.from({ length: perFlow }, (_, i) => ({
    flowId, node: `n${i}`, handler: "noop", queue: "bench", fresh: true,
  })));
}

let done = 0;
let finish;
const finished = new Promise((r) => (finish = r));
const worker = new Worker({
  redis: redisServer.url, prefix, queues: { bench: Number(args.concurrency) }, autorun: false,
  handlers: { noop: async () => null },
});
worker.on("completed", () => {
  if (++done === jobs) finish();
});
const t0 = performance.now();
const cpu0 = process.cpuUsage();
await worker.run();
await finished;
const seconds = (performance.now() - t0) / 1000;
const cpu = process.cpuUsage(cpu0);
console.log(JSON.stringify({
  jobs, concurrency: Number(args.concurrency), seconds: +seconds.toFixed(3), jobs_per_s: Math.round(jobs / seconds),
  worker_cpu_us_per_job: +((cpu.user + cpu.system) / jobs).toFixed(1),
}));
await worker.close(2000);
redis.disconnect();
await redisServer.stop();
