/**
 * RESP2, the Redis wire format: encoding commands and decoding replies. Used by the
 * reporter's own connection, which writes every job's reports pre-encoded: through
 * a general client (command objects, a promise and a parser pass each) the reports
 * cost four times the CPU of the job itself.
 *
 * @module
 */

/** An error reply (`-ERR ...`, `-NOSCRIPT ...`): Redis answered, the command failed. */
export class RedisReplyError extends Error {
  override name = "RedisReplyError";
}

/** A decoded reply: simple and bulk strings, integers, nil, arrays, error replies. */
export type Reply = string | number | null | RedisReplyError | Reply[];

/** One command as RESP text (`*N\r\n$len\r\narg\r\n...`). */
export function encodeCommand(args: readonly string[]): string {
  let out = `*${args.length}\r\n`;
  for (const arg of args) out += encodeBulk(arg);
  return out;
}

/** One argument as a RESP bulk string. */
export function encodeBulk(arg: string): string {
  return `$${Buffer.byteLength(arg)}\r\n${arg}\r\n`;
}

/**
 * Decodes replies from a byte stream that arrives in chunks of any size: `push` a
 * chunk, then take every complete reply with `next` until it returns `undefined`.
 */
export class ReplyParser {
  private buffer: Buffer = Buffer.alloc(0);
  private offset = 0;

  /** Appends received bytes. */
  push(chunk: Buffer): void {
    if (this.offset >= this.buffer.length) {
      this.buffer = chunk;
    } else {
      this.buffer = Buffer.concat([this.buffer.subarray(this.offset), chunk]);
    }
    this.offset = 0;
  }

  /** The next complete reply, or `undefined` when more bytes are needed. */
  next(): Reply | undefined {
    const parsed = this.parse(this.offset);
    if (parsed === undefined) return undefined;
    this.offset = parsed[1];
    return parsed[0];
  }

  /** Forgets buffered bytes (the connection was closed). */
  reset(): void {
    this.buffer = Buffer.alloc(0);
    this.offset = 0;
  }

  private parse(at: number): [Reply, number] | undefined {
    const buf = this.buffer;
    if (at >= buf.length) return undefined;
    const end = buf.indexOf("\r\n", at + 1);
    if (end < 0) return undefined;
    const type = buf[at];
    const line = buf.toString("utf8", at + 1, end);
    const after = end + 2;
    switch (type) {
      case 0x2b: // '+'
        return [line, after];
      case 0x2d: // '-'
        return [new RedisReplyError(line), after];
      case 0x3a: // ':'
        return [Number(line), after];
      case 0x24: {
        // '$'
        const len = Number(line);
        if (len < 0) return [null, after];
        if (buf.length < after + len + 2) return undefined;
        return [buf.toString("utf8", after, after + len), after + len + 2];
      }
      case 0x2a: {
        // '*'
        const count = Number(line);
        if (count < 0) return [null, after];
        const items: Reply[] = [];
        let pos = after;
        for (let i = 0; i < count; i++) {
          const item = this.parse(pos);
          if (item === undefined) return undefined;
          items.push(item[0]);
          pos = item[1];
        }
        return [items, pos];
      }
      default:
        throw new Error(`unexpected byte ${type} in a Redis reply`);
    }
  }
}
