// Traces end to end: a real `dagflow serve --otlp-endpoint` exporting to a real HTTP
// receiver started here, a flow created with a `traceparent` header, and a
// TypeScript worker (with the OpenTelemetry SDK's in-memory exporter) running one of
// its nodes. The handler must get the engine's attempt span as `job.traceparent`
// (the caller's trace, a span of the engine's), its own span must be that span's
// child, and the engine must have exported that very span to the collector.
import assert from "node:assert/strict";
import { createServer } from "node:http";
import { after, before, describe, it } from "node:test";
import { trace } from "@opentelemetry/api";
import { BasicTracerProvider, InMemorySpanExporter, SimpleSpanProcessor } from "@opentelemetry/sdk-trace-base";

import { Client, Worker, parseTraceparent } from "../../dist/index.js";
import { startRedis, startServer, uniquePrefix, waitFor } from "../helpers.mjs";

const CALLER = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

const spans = new InMemorySpanExporter();
trace.setGlobalTracerProvider(new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(spans)] }));

let redisServer;
let server;
let collector;
const prefix = uniquePrefix("traces");
const bodies = [];
const cleanups = [];

before(async () => {
  collector = createServer((req, res) => {
    const chunks = [];
    req.on("data", (c) => chunks.push(c));
    req.on("end", () => {
      if (req.method === "POST" && req.url === "/v1/traces") bodies.push(Buffer.concat(chunks));
      res.writeHead(200, { "content-type": "application/x-protobuf" }).end();
    });
  });
  await new Promise((r) => collector.listen(0, "127.0.0.1", r));
  redisServer = await startRedis();
  server = await startServer({
    redisUrl: redisServer.url,
    prefix,
    queues: "default",
    extraArgs: ["--otlp-endpoint", `http://127.0.0.1:${collector.address().port}`],
    env: { OTEL_BSP_SCHEDULE_DELAY: "100" },
  });
});

after(async () => {
  for (const fn of cleanups.reverse()) await fn().catch(() => {});
  await server?.stop();
  await redisServer?.stop();
  collector?.close();
});

describe("traces across the server and a TypeScript worker", () => {
  it("continues the engine's attempt span in the handler's span", async () => {
    const w = new Worker({ redis: redisServer.url, prefix, blockMs: 500, queues: { "ts-traced": 1 }, handlers: { traced: async (job) => job.traceparent } });
    w.on("error", () => {});
    cleanups.push(() => w.close(2000));
    await w.waitUntilReady();
    const res = await fetch(`${server.baseUrl}/flows`, {
      method: "POST",
      headers: { "content-type": "application/json", traceparent: CALLER },
      body: JSON.stringify({ name: "traced", nodes: [{ name: "src", handler: "noop" }, { name: "traced", queue: "ts-traced", parents: ["src"] }] }),
    });
    assert.equal(res.status, 201);
    const { flowId } = await res.json();
    const flow = await new Client({ baseUrl: server.baseUrl }).wait(flowId, { timeoutMs: 20_000 });
    assert.equal(flow.status, "completed");
    const seen = parseTraceparent(flow.nodes.find((n) => n.name === "traced").result);
    assert.ok(seen, "the handler got a valid traceparent");
    assert.equal(seen.traceId, "0af7651916cd43dd8448eb211c80319c", "the caller's trace");
    assert.notEqual(seen.spanId, "b7ad6b7169203331", "a span of the engine's, not the caller's");
    const mine = spans.getFinishedSpans().find((s) => s.attributes["dagflow.node"] === "traced");
    assert.equal(mine.spanContext().traceId, seen.traceId);
    assert.equal(mine.parentSpanContext?.spanId, seen.spanId);
    // The engine exported the attempt span the handler's span hangs under (OTLP
    // protobuf carries span ids as raw bytes).
    const id = Buffer.from(seen.spanId, "hex");
    await waitFor(() => bodies.some((b) => b.includes(id)), { timeoutMs: 20_000, what: "the attempt span at the collector" });
  });
});
