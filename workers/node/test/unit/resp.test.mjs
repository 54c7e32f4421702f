// The reporter's RESP encoder and reply parser, fed replies in every possible split.
import assert from "node:assert/strict";
import { it } from "node:test";

import { RedisReplyError, ReplyParser, encodeCommand } from "../../dist/resp.js";

it("encodes a command with byte lengths, not character lengths", () => {
  assert.equal(encodeCommand(["SET", "k", "é"]), "*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$2\r\né\r\n");
  assert.equal(encodeCommand(["X", ""]), "*2\r\n$1\r\nX\r\n$0\r\n\r\n");
});

it("decodes every reply type, whatever the chunking", () => {
  const wire = Buffer.from(
    "+OK\r\n-NOSCRIPT No matching script\r\n:42\r\n$5\r\nh\u00e9lo\r\n$-1\r\n*2\r\n$2\r\nab\r\n*1\r\n:1\r\n*-1\r\n$0\r\n\r\n",
    "utf8",
  );
  for (let split = 1; split <= wire.length; split++) {
    const parser = new ReplyParser();
    const replies = [];
    for (let i = 0; i < wire.length; i += split) {
      parser.push(wire.subarray(i, i + split));
      for (let r = parser.next(); r !== undefined; r = parser.next()) replies.push(r);
    }
    assert.equal(replies.length, 8, `split ${split}`);
    assert.equal(replies[0], "OK");
    assert.ok(replies[1] instanceof RedisReplyError);
    assert.equal(replies[1].message, "NOSCRIPT No matching script");
    assert.equal(replies[2], 42);
    assert.equal(replies[3], "h\u00e9lo");
    assert.equal(replies[4], null);
    assert.deepEqual(replies[5], ["ab", [1]]);
    assert.equal(replies[6], null);
    assert.equal(replies[7], "");
  }
});
