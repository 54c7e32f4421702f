/**
 * dagflow for Node.js: a {@link Worker} that serves dagflow queues with TypeScript
 * handlers over the Redis protocol (docs/PROTOCOL.md), and a {@link Client} of the
 * REST and WebSocket API.
 *
 * @module
 */

export { Worker, type Handler, type WorkerOptions, type WorkerEvents } from "./worker.js";
export { Job } from "./job.js";
export { parseTraceparent, type TraceParent } from "./tracing.js";
export {
  RetryableError,
  FatalError,
  UnrecoverableError,
  JobAbortedError,
  DagflowApiError,
  type AbortCause,
} from "./errors.js";
export { Client, type ClientOptions, type SubmitOptions, type WatchOptions, type ListQuery } from "./client.js";
export type * from "./types.js";
export { TERMINAL_FLOW_STATUSES } from "./types.js";
export { Keys, DEFAULT_PREFIX, DEFAULT_LEASE_MS } from "./protocol.js";
export type { RedisConnection } from "./redis.js";
