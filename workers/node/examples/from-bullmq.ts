// from-bullmq.ts: the BullMQ flow of docs/FROM-BULLMQ.md, translated to dagflow.
// Needs Redis and `dagflow serve`; every node runs in this worker (queues "data",
// "reports" and "mail", which the server does not serve).
import { Client, FatalError, Worker, type Job } from "@dagflow/node";

const redis = process.env.DAGFLOW_REDIS_URL ?? "redis://127.0.0.1:6379";
const server = process.env.DAGFLOW_SERVER ?? "http://127.0.0.1:7700";
const prefix = process.env.DAGFLOW_PREFIX ?? "dagflow";

type Month = { month: string };
type Sales = { total: number };
type Costs = { total: number };

const worker = new Worker({
  redis,
  prefix,
  queues: { data: 8, reports: 2, mail: 2 },
  handlers: {
    "fetch-sales": async (job: Job<Month>) => {
      // In real life: fetch(`https://sales.example/api?month=${job.data.month}`, { signal: job.signal });
      // job.signal fires when the flow is cancelled and after opts.timeoutMs.
      return { total: job.data.month === "2024-05" ? 1200 : 0 } satisfies Sales;
    },
    "fetch-costs": async (job: Job<Month>) => {
      if (!/^\d{4}-\d{2}$/.test(job.data.month)) throw new FatalError(`bad month ${job.data.month}`);
      return { total: 700 } satisfies Costs;
    },
    // BullMQ: `await job.getChildrenValues()`, keyed by child job key.
    // dagflow: `job.parents`, keyed by node name, there before the handler starts.
    "render-report": async (job: Job<Month, { "fetch-sales": Sales; "fetch-costs": Costs }>) => {
      await job.progress(50);
      const margin = job.parents["fetch-sales"].total - job.parents["fetch-costs"].total;
      return { month: job.data.month, margin };
    },
    // Two parents: BullMQ cannot express this node (a job has one parent).
    "email-cfo": async (job: Job<null, { "render-report": { margin: number }; "fetch-costs": Costs }>) => {
      return `margin ${job.parents["render-report"].margin} on costs ${job.parents["fetch-costs"].total}`;
    },
  },
});
await worker.waitUntilReady();

const client = new Client({ baseUrl: server });
const flowId = await client.submit(
  {
    name: "monthly report",
    nodes: [
      {
        name: "fetch-sales",
        queue: "data",
        data: { month: "2024-05" },
        opts: { attempts: 3, backoff: { type: "exponential", delayMs: 1000 } },
      },
      { name: "fetch-costs", queue: "data", data: { month: "2024-05" } },
      { name: "render-report", queue: "reports", parents: ["fetch-sales", "fetch-costs"], data: { month: "2024-05" } },
      { name: "email-cfo", queue: "mail", parents: ["render-report", "fetch-costs"] },
    ],
    opts: { onFailure: "failFast" },
  },
  { idempotencyKey: "monthly-report-2024-05" }, // BullMQ's custom jobId: submitting again returns this flow
);
const flow = await client.wait(flowId, { timeoutMs: 30_000 });
console.log(flow.status, JSON.stringify(flow.nodes.find((n) => n.name === "email-cfo")?.result));
// completed "margin 500 on costs 700"
await worker.close();
