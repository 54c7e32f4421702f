// Bad settings fail at construction with a message that says what to fix.
import assert from "node:assert/strict";
import { describe, it } from "node:test";

import { Client, Worker } from "../../dist/index.js";

const noop = async () => null;

describe("worker options", () => {
  const cases = [
    [{ queues: { q: 1 } }, /handlers \(by name\) or a processor/],
    [{ queues: {}, handlers: { noop } }, /at least one queue/],
    [{ queues: { "a:b": 1 }, handlers: { noop } }, /queue name 'a:b' is not valid/],
    [{ queues: { q: 0 }, handlers: { noop } }, /concurrency of queue 'q' must be an integer >= 1/],
    [{ queues: { q: 1.5 }, handlers: { noop } }, /concurrency/],
    [{ queues: { q: 1 }, handlers: { noop: "x" } }, /handler 'noop' is not a function/],
    [{ queues: { q: 1 }, handlers: { noop }, leaseMs: 0 }, /leaseMs must be > 0/],
    [{ queues: { q: 1 }, handlers: { noop }, prefix: "" }, /prefix must not be empty/],
  ];
  for (const [options, why] of cases) {
    it(`rejects ${JSON.stringify(options)}`, () => {
      assert.throws(() => new Worker({ ...options, autorun: false }), why);
    });
  }
});

describe("client options", () => {
  it("rejects a base URL that is not http(s)", () => {
    assert.throws(() => new Client({ baseUrl: "nope" }), /not a URL/);
    assert.throws(() => new Client({ baseUrl: "ftp://x" }), /not an http\(s\) URL/);
  });

  it("reports an unreachable server as status 0, code unreachable", async () => {
    const client = new Client({ baseUrl: "http://127.0.0.1:9", requestTimeoutMs: 2000 });
    await assert.rejects(client.get("x"), (err) => err.status === 0 && err.code === "unreachable");
  });
});
