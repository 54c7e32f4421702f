// quickstart.ts: a flow whose middle node runs in TypeScript, between two nodes
// that run in the server with its built-in handlers.
//
// Needs Redis and `dagflow serve` (which serves queue "default" with the built-in
// handlers echo, noop, sleep and fail). The TypeScript node goes on queue "ts",
// which only this worker serves.
import { Client, FatalError, Worker, type Job } from "@dagflow/node";

const redis = process.env.DAGFLOW_REDIS_URL ?? "redis://127.0.0.1:6379";
const server = process.env.DAGFLOW_SERVER ?? "http://127.0.0.1:7700";
const prefix = process.env.DAGFLOW_PREFIX ?? "dagflow";

type CountData = { minLength: number };
// `fetch` runs the built-in echo handler, whose result is its own input.
type CountParents = { fetch: { data: { text: string } } };

const worker = new Worker({
  redis,
  prefix,
  queues: { ts: 4 }, // queue name -> jobs run at once
  handlers: {
    // A job runs the handler named by its node's `handler` (by default the node's name).
    "count-words": async (job: Job<CountData, CountParents>) => {
      const text = job.parents.fetch.data.text;
      // FatalError: no retry can help. Any other error is retried (opts.attempts).
      if (typeof text !== "string") throw new FatalError("fetch gave no text");
      await job.progress({ stage: "counting" });
      const words = text.split(/\s+/).filter((w) => w.length >= job.data.minLength);
      const longest = words.reduce((a, b) => (b.length > a.length ? b : a), "");
      return { words: words.length, longest };
    },
  },
});
worker.on("failed", (job, err) => console.error(`job ${job?.id} failed: ${err.message}`));
await worker.waitUntilReady();

const client = new Client({ baseUrl: server });
const flowId = await client.submit({
  name: "quickstart",
  nodes: [
    { name: "fetch", handler: "echo", data: { text: "the quick brown fox jumps over the lazy dog" } },
    {
      name: "count-words",
      queue: "ts",
      parents: ["fetch"],
      data: { minLength: 4 },
      opts: { attempts: 3, backoff: { type: "exponential", delayMs: 200 }, timeoutMs: 10_000 },
    },
    { name: "report", handler: "echo", parents: ["count-words"] },
  ],
});
const flow = await client.wait(flowId, { timeoutMs: 30_000 });
const report = flow.nodes.find((n) => n.name === "report");
console.log(flow.status, JSON.stringify(report?.result));
// completed {"data":null,"parents":{"count-words":{"longest":"quick","words":5}}}
await worker.close();
