// Unit tests of the pure protocol code: envelope decoding, the report.lua call, the
// outcome JSON, reply parsing, stalled arithmetic, error classification.
import assert from "node:assert/strict";
import { describe, it } from "node:test";

import {
  Keys,
  ReportFrame,
  encodeOutcome,
  isGroupLost,
  isStalled,
  isValidQueueName,
  laneIndex,
  parseAutoclaimReply,
  parseDeliveries,
  parseEnvelope,
  parsePendingIds,
  parseReadReply,
  parseTakeReply,
  reportArgs,
  splitInput,
  stalledMessage,
} from "../../dist/protocol.js";
import { FatalError, RetryableError, UnrecoverableError, isRetryable, messageOf } from "../../dist/errors.js";

const good = {
  v: 1,
  id: "f1:resize:2",
  flowId: "f1",
  node: "resize",
  attempt: 2,
  handler: "resize",
  queue: "images",
  input: { data: { w: 800 }, parents: { download: { path: "/tmp/a" } } },
  timeoutMs: 3000,
  maxStalled: 1,
  enqueuedAtMs: 1718000000000,
};

describe("keys", () => {
  it("builds every key from the prefix", () => {
    const k = new Keys("P");
    assert.equal(k.lane("default", 5, false), "P:q:default:5");
    assert.equal(k.lane("default", 0, true), "P:q:default:0:new");
    assert.equal(k.takes("default"), "P:q:default:takes");
    assert.equal(k.delayed("default"), "P:q:default:delayed");
    assert.equal(k.flowJobs("f"), "P:flow:f:jobs");
    assert.equal(k.completions(), "P:completions");
    assert.equal(k.cancelChannel(), "P:cancel");
    assert.equal(k.workers(), "P:workers");
    assert.equal(k.config(), "P:config");
    assert.equal(new Keys().lane("x", 9, true), "dagflow:q:x:9:new");
    assert.throws(() => new Keys(""), /prefix/);
  });

  it("lists a queue's 20 lanes in the order take.lua serves them, each at its lane index", () => {
    const lanes = new Keys("P").lanes("gpu");
    assert.equal(lanes.length, 20);
    assert.deepEqual(lanes.slice(0, 4), ["P:q:gpu:9", "P:q:gpu:9:new", "P:q:gpu:8", "P:q:gpu:8:new"]);
    assert.equal(lanes[19], "P:q:gpu:0:new");
    for (let p = 0; p <= 9; p++) {
      for (const fresh of [false, true]) assert.equal(lanes[laneIndex(p, fresh)], `P:q:gpu:${p}${fresh ? ":new" : ""}`);
    }
    assert.equal(laneIndex(5, false), 8);
    assert.equal(laneIndex(0, true), 19);
  });

  it("accepts the queue names the engine accepts", () => {
    for (const ok of ["default", "gpu-1", "a_b", "v1.2"]) assert.ok(isValidQueueName(ok), ok);
    for (const bad of ["", "a:b", "a b", "é", "x".repeat(257)]) assert.ok(!isValidQueueName(bad), bad);
  });
});

describe("envelope", () => {
  it("decodes a valid envelope and ignores unknown fields", () => {
    const env = parseEnvelope(JSON.stringify({ ...good, somethingNew: [1] }));
    assert.equal(env.id, "f1:resize:2");
    assert.equal(env.attempt, 2);
    assert.equal(env.timeoutMs, 3000);
    assert.deepEqual(env.input, good.input);
  });

  it("reads priority, and a missing priority (an envelope from before priorities) as 5", () => {
    assert.equal(parseEnvelope(JSON.stringify({ ...good, priority: 9 })).priority, 9);
    assert.equal(parseEnvelope(JSON.stringify({ ...good, priority: 0 })).priority, 0);
    assert.equal(parseEnvelope(JSON.stringify(good)).priority, 5);
  });

  it("treats timeoutMs as optional", () => {
    const { timeoutMs, ...rest } = good;
    assert.equal(parseEnvelope(JSON.stringify(rest)).timeoutMs, undefined);
    assert.equal(parseEnvelope(JSON.stringify({ ...rest, timeoutMs: null })).timeoutMs, undefined);
  });

  it("refuses what the reference reader refuses, saying why", () => {
    const cases = [
      [null, /no envelope field/],
      ["{not json", /not JSON/],
      ["[1]", /not a JSON object/],
      [JSON.stringify({ ...good, v: 2 }), /unsupported version 2/],
      [JSON.stringify({ ...good, v: undefined }), /unsupported version/],
      [JSON.stringify({ ...good, id: 5 }), /field id/],
      [JSON.stringify({ ...good, attempt: 0 }), /attempt/],
      [JSON.stringify({ ...good, attempt: 1.5 }), /attempt/],
      [JSON.stringify({ ...good, maxStalled: -1 }), /maxStalled/],
      [JSON.stringify({ ...good, enqueuedAtMs: "x" }), /enqueuedAtMs/],
      [JSON.stringify({ ...good, input: undefined }), /input/],
      [JSON.stringify({ ...good, timeoutMs: "5" }), /timeoutMs/],
      [JSON.stringify({ ...good, priority: null }), /priority/],
      [JSON.stringify({ ...good, priority: "9" }), /priority/],
      [JSON.stringify({ ...good, priority: -1 }), /priority/],
      [JSON.stringify({ ...good, priority: 256 }), /priority/],
    ];
    for (const [json, why] of cases) assert.throws(() => parseEnvelope(json), why, String(json));
  });

  it("splits the input; data is null for a node without data", () => {
    assert.deepEqual(splitInput({ data: null, parents: {} }), { data: null, parents: {} });
    assert.deepEqual(splitInput({ parents: { a: 1 } }), { data: null, parents: { a: 1 } });
    assert.deepEqual(splitInput({ data: 3 }), { data: 3, parents: {} });
    assert.match(splitInput("x"), /not an object/);
    assert.match(splitInput({ data: 1, parents: [1] }), /parents/);
  });

  it("gives a map element its item and index, keeping a null item apart from an absent one", () => {
    const el = splitInput({ data: { w: 1 }, parents: { list: [5, 6] }, item: { x: 6 }, index: 1 });
    assert.deepEqual(el, { data: { w: 1 }, parents: { list: [5, 6] }, item: { x: 6 }, index: 1 });
    const nullItem = splitInput({ data: null, parents: {}, item: null, index: 0 });
    assert.ok("item" in nullItem, "a null item is present");
    assert.equal(nullItem.item, null);
    assert.equal(nullItem.index, 0);
    const plain = splitInput({ data: null, parents: {} });
    assert.ok(!("item" in plain), "no item key on a plain job");
    assert.ok(!("index" in plain), "no index key on a plain job");
    // An index without an item is not an element: ignored, as the Rust worker does.
    assert.ok(!("index" in splitInput({ data: null, parents: {}, index: 3 })));
    assert.equal(splitInput({ item: "a", index: 4294967295 }).index, 4294967295);
  });

  it("fails an element whose index is missing or not an integer >= 0", () => {
    for (const index of [undefined, null, -1, 1.5, "2", 4294967296]) {
      const input = { data: null, parents: {}, item: 1 };
      if (index !== undefined) input.index = index;
      assert.match(splitInput(input), /item but its index is not an integer >= 0/, JSON.stringify(index));
    }
  });
});

describe("outcomes and the report call", () => {
  it("encodes each outcome kind as the engine reads it", () => {
    assert.equal(encodeOutcome({ kind: "completed", result: { a: 1 } }), '{"kind":"completed","result":{"a":1}}');
    assert.equal(encodeOutcome({ kind: "completed", result: undefined }), '{"kind":"completed","result":null}');
    assert.equal(encodeOutcome({ kind: "progress", progress: 50 }), '{"kind":"progress","progress":50}');
    assert.equal(encodeOutcome({ kind: "started" }), '{"kind":"started"}');
    assert.deepEqual(JSON.parse(encodeOutcome({ kind: "failed", message: 'say "hi"', retryable: true })), {
      kind: "failed",
      message: 'say "hi"',
      retryable: true,
    });
    assert.throws(() => encodeOutcome({ kind: "completed", result: 1n }), /BigInt/);
    const cyclic = {};
    cyclic.self = cyclic;
    assert.throws(() => encodeOutcome({ kind: "completed", result: cyclic }), /circular/i);
  });

  it("builds report.lua's KEYS and ARGV as PROTOCOL.md lists them", () => {
    const { keys, argv } = reportArgs(new Keys("P"), "P:q:images", "1-0", good, true, '{"kind":"started"}');
    assert.deepEqual(keys, ["P:completions", "P:q:images", "P:flow:f1:jobs"]);
    assert.deepEqual(argv, [
      "workers", "engine", "1-0", "resize:2", "1",
      "v", "1", "flow", "f1", "node", "resize", "attempt", "2", "job", "f1:resize:2", "outcome", '{"kind":"started"}',
    ]);
    assert.equal(reportArgs(new Keys("P"), "s", "1-0", good, false, "{}").argv[4], "0");
  });
});

describe("report frame", () => {
  it("encodes the same call as the argument list, for every flag and outcome", async () => {
    const { encodeCommand } = await import("../../dist/resp.js");
    const frame = new ReportFrame("a".repeat(40), new Keys("P"), "P:q:images", "1-0", good);
    for (const final of [true, false]) {
      for (const json of ['{"kind":"started"}', '{"kind":"completed","result":"\u00e9t\u00e9"}']) {
        const args = frame.command(final, json);
        assert.deepEqual(args.slice(0, 3), ["EVALSHA", "a".repeat(40), "3"]);
        assert.deepEqual(args.slice(3), [...Object.values(reportArgs(new Keys("P"), "P:q:images", "1-0", good, final, json)).flat()]);
        assert.equal(frame.encode(final, json), encodeCommand(args));
      }
    }
  });
});

describe("replies", () => {
  it("parses XREADGROUP replies, deleted entries included", () => {
    const reply = [["P:q:a", [["1-0", ["envelope", "{}"]], ["2-0", null]]]];
    const map = parseReadReply(reply);
    assert.deepEqual(map.get("P:q:a"), [
      { id: "1-0", fields: ["envelope", "{}"] },
      { id: "2-0", fields: null },
    ]);
    assert.equal(parseReadReply(null).size, 0);
  });

  it("parses Redis 7's three-element XAUTOCLAIM reply", () => {
    const { next, entries } = parseAutoclaimReply(["0-0", [["1-0", ["envelope", "x"]]], ["3-0"]]);
    assert.equal(next, "0-0");
    assert.deepEqual(entries, [{ id: "1-0", fields: ["envelope", "x"] }]);
    assert.throws(() => parseAutoclaimReply("OK"), /XAUTOCLAIM/);
  });

  it("reads the delivery count of XPENDING", () => {
    assert.equal(parseDeliveries([["1-0", "c", 5, 3]]), 3);
    assert.equal(parseDeliveries([]), null);
  });

  it("reads the ids of a consumer's XPENDING list", () => {
    assert.deepEqual(parsePendingIds([["1-0", "c", 5, 1], ["2-3", "c", 9, 2]]), ["1-0", "2-3"]);
    assert.deepEqual(parsePendingIds([]), []);
  });

  it("parses take.lua's reply: jobs as lane, id, envelope (nil for none), or 20 ids to wait after", () => {
    const taken = parseTakeReply([[0, "5-1", "{}", 19, "5-1", null], []]);
    assert.deepEqual(taken.jobs, [
      { lane: 0, id: "5-1", envelope: "{}" },
      { lane: 19, id: "5-1", envelope: null },
    ]);
    assert.deepEqual(taken.wait, []);
    const wait = Array.from({ length: 20 }, (_, i) => `${i}-0`);
    assert.deepEqual(parseTakeReply([[], wait]), { jobs: [], wait });
    assert.throws(() => parseTakeReply([[], ["0-0"]]), /1 wait ids for 20 lanes/);
    assert.throws(() => parseTakeReply([[20, "1-0", "{}"], []]), /lane 20/);
    assert.throws(() => parseTakeReply("OK"), /take.lua/);
  });
});

describe("stalled", () => {
  it("fails a job claimed more than maxStalled times (first delivery is the read)", () => {
    // maxStalled 1: read (1) and one claim (2) run; a second claim (3) fails.
    assert.equal(isStalled(1, 1), false);
    assert.equal(isStalled(2, 1), false);
    assert.equal(isStalled(3, 1), true);
    // maxStalled 0: any claim fails it.
    assert.equal(isStalled(2, 0), true);
    assert.equal(
      stalledMessage(3, 1, 30000),
      "job stalled: claimed 2 times from workers that stopped responding, more than maxStalled 1 allows (lease 30000 ms)",
    );
  });

  it("recognises a missing group: NOGROUP (a missing key too), and UNBLOCKED after FLUSHALL on 7.0", () => {
    assert.ok(isGroupLost(new Error("NOGROUP No such key 'x' or consumer group 'workers'")));
    assert.ok(isGroupLost(new Error("UNBLOCKED the stream key no longer exists")));
    assert.ok(!isGroupLost(new Error("ERR something")));
  });
});

describe("errors", () => {
  it("says which failures may be retried: everything but FatalError", () => {
    assert.equal(isRetryable(new Error("x")), true);
    assert.equal(isRetryable(new RetryableError("x")), true);
    assert.equal(isRetryable(new FatalError("x")), false);
    assert.equal(isRetryable(new UnrecoverableError("x")), false);
    assert.equal(isRetryable("a string"), true);
    assert.equal(isRetryable({ retryable: false }), false);
  });

  it("gets a message out of anything thrown", () => {
    assert.equal(messageOf(new Error("boom")), "boom");
    assert.equal(messageOf("plain"), "plain");
    assert.equal(messageOf({ code: 1 }), '{"code":1}');
  });
});
