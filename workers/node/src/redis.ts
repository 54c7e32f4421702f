/**
 * How the worker opens its Redis connections. The protocol needs several: one
 * shared connection for ordinary commands, one dedicated connection per blocking
 * read (a blocked connection can do nothing else) and one subscribed connection for
 * `P:cancel`.
 *
 * @module
 */

import { Redis, type RedisOptions } from "ioredis";

/** Where the worker's Redis is: a URL, ioredis options, or a connection to copy the settings of. */
export type RedisConnection = string | RedisOptions | Redis;

/** The URL used when none is given: the engine's own default. */
export const DEFAULT_REDIS_URL = "redis://127.0.0.1:6379";

/**
 * Opens a new connection to `target` with `overrides` applied. A given `Redis`
 * instance is never used itself (it may be blocked or subscribed elsewhere): it is
 * duplicated with its options.
 *
 * Every connection gets `maxRetriesPerRequest: null`: a command issued while Redis
 * is unreachable waits in ioredis's offline queue until the connection is back,
 * instead of failing after 20 reconnect attempts. That is what keeps reports from
 * being lost while Redis restarts; the caller's own retry covers error replies.
 */
export function openConnection(target: RedisConnection | undefined, overrides: RedisOptions): Redis {
  const common: RedisOptions = { maxRetriesPerRequest: null, ...overrides };
  if (target instanceof Redis) return target.duplicate(common);
  if (target === undefined) return new Redis(DEFAULT_REDIS_URL, common);
  if (typeof target === "string") return new Redis(target, common);
  return new Redis({ ...target, ...common });
}

/** Closes a connection politely (QUIT) if it answers within `ms`, otherwise drops it. */
export async function closeConnection(conn: Redis, ms = 1000): Promise<void> {
  if (conn.status === "end") return;
  if (conn.status !== "ready") {
    conn.disconnect();
    return;
  }
  let timer: NodeJS.Timeout | undefined;
  try {
    await Promise.race([
      conn.quit(),
      new Promise((resolve) => {
        timer = setTimeout(resolve, ms);
      }),
    ]);
  } catch {
    // Already closing: nothing left to do but drop it.
  } finally {
    clearTimeout(timer);
    conn.disconnect();
  }
}
