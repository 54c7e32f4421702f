// Traces in the TypeScript worker, against a real redis-server: the envelope's
// traceparent reaches the handler as `job.traceparent`, and with
// `@opentelemetry/api` installed (a dev dependency here; optional for users) the
// handler runs in a span that is the traceparent's child, exported through a real
// SDK tracer provider with an in-memory exporter.
import assert from "node:assert/strict";
import { after, before, beforeEach, describe, it } from "node:test";
import { Redis } from "ioredis";
import { trace } from "@opentelemetry/api";
import { BasicTracerProvider, InMemorySpanExporter, SimpleSpanProcessor } from "@opentelemetry/sdk-trace-base";

import { FatalError, Worker, parseTraceparent } from "../../dist/index.js";
import { parseEnvelope } from "../../dist/protocol.js";
import { completions, enqueue, startRedis, uniquePrefix, waitFor } from "../helpers.mjs";

const PARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

const exporter = new InMemorySpanExporter();
trace.setGlobalTracerProvider(new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] }));

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

beforeEach(() => exporter.reset());

/** Runs `jobs` through a worker whose handler records each job's traceparent. */
async function run(jobs, handler = async () => null) {
  const prefix = uniquePrefix("trace");
  const seen = new Map();
  const w = new Worker({
    redis: redisServer.url,
    prefix,
    queues: { q: 4 },
    blockMs: 200,
    handlers: {
      n: async (job) => {
        seen.set(job.node, job.traceparent);
        return handler(job);
      },
    },
  });
  w.on("error", () => {});
  workers.push(w);
  await w.waitUntilReady();
  const envs = await enqueue(redis, prefix, jobs.map((j) => ({ handler: "n", ...j })));
  await waitFor(async () => (await completions(redis, prefix)).filter((r) => r.outcome.kind !== "started").length === jobs.length, {
    what: "every job's final record",
  });
  await waitFor(async () => exporter.getFinishedSpans().length === jobs.length, { what: "a span per job" });
  return { seen, envs, spans: exporter.getFinishedSpans() };
}

const spanOf = (spans, node) => spans.find((s) => s.attributes["dagflow.node"] === node);

describe("traces in the worker", () => {
  it("hands the envelope's traceparent to the handler and makes the handler's span its child", async () => {
    const { seen, envs, spans } = await run([{ node: "traced", traceparent: PARENT }]);
    assert.equal(seen.get("traced"), PARENT);
    const span = spanOf(spans, "traced");
    assert.equal(span.spanContext().traceId, "4bf92f3577b34da6a3ce929d0e0e4736");
    assert.equal(span.parentSpanContext?.spanId, "00f067aa0ba902b7");
    assert.equal(span.parentSpanContext?.isRemote, true);
    assert.equal(span.name, "n");
    assert.equal(span.attributes["dagflow.job.id"], envs[0].id);
    assert.equal(span.attributes["dagflow.attempt"], 1);
    assert.equal(span.status.code, 0, "unset: the handler succeeded");
  });

  it("starts a root span for a job without a traceparent, or with a malformed one", async () => {
    const { seen, spans } = await run([{ node: "plain" }, { node: "junk", traceparent: "00-xyz-01" }]);
    assert.equal(seen.get("plain"), undefined);
    assert.equal(seen.get("junk"), "00-xyz-01", "handed on as it came");
    for (const node of ["plain", "junk"]) {
      assert.equal(spanOf(spans, node).parentSpanContext, undefined, node);
    }
  });

  it("records a handler's failure on its span", async () => {
    const { spans } = await run([{ node: "boom", traceparent: PARENT }], async () => {
      throw new FatalError("it broke");
    });
    const span = spanOf(spans, "boom");
    assert.equal(span.status.code, 2, "error");
    assert.equal(span.status.message, "it broke");
    assert.equal(span.events[0]?.name, "exception");
  });
});

describe("traceparent parsing", () => {
  it("accepts the W3C format and refuses the rest", () => {
    assert.deepEqual(parseTraceparent(PARENT), {
      traceId: "4bf92f3577b34da6a3ce929d0e0e4736",
      spanId: "00f067aa0ba902b7",
      traceFlags: 1,
    });
    for (const bad of [
      undefined,
      "",
      "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
      "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
      "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
      "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
      "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
    ]) {
      assert.equal(parseTraceparent(bad), undefined, String(bad));
    }
  });

  it("reads the envelope field and refuses one that is not a string", () => {
    const env = { v: 1, id: "f:n:1", flowId: "f", node: "n", attempt: 1, handler: "n", queue: "q", input: {}, maxStalled: 1, enqueuedAtMs: 1 };
    assert.equal(parseEnvelope(JSON.stringify({ ...env, traceparent: PARENT })).traceparent, PARENT);
    assert.equal(parseEnvelope(JSON.stringify(env)).traceparent, undefined);
    assert.equal(parseEnvelope(JSON.stringify({ ...env, traceparent: null })).traceparent, undefined);
    assert.throws(() => parseEnvelope(JSON.stringify({ ...env, traceparent: 7 })), /traceparent is not a string/);
  });
});
