/**
 * The job object a handler receives.
 *
 * @module
 */

import type { Envelope, JobInput } from "./protocol.js";

/**
 * One run of one node. A BullMQ user finds `id`, `data`, `name`, `attemptsMade`
 * (here `attempt`) and `updateProgress` (here `progress`); what BullMQ computes with
 * `getChildrenValues()` arrives ready in `parents`. A job of a map node's element
 * also has `item` and `index`.
 *
 * Delivery is at-least-once: the same attempt may run twice (a worker died after
 * running it but before reporting, or its lease ran out while it still ran). `id`
 * is the same every time: use it as the idempotency key of side effects.
 */
export class Job<Data = unknown, Parents extends Record<string, unknown> = Record<string, unknown>> {
  /** `{flowId}:{node}:{attempt}`, stable across re-runs of this attempt: the idempotency key. */
  readonly id: string;
  /** The flow this job belongs to. */
  readonly flowId: string;
  /** The node's name within the flow. */
  readonly node: string;
  /** The handler name that selected this job's handler (the node's `handler`, by default its name). */
  readonly name: string;
  /** The queue it was read from. */
  readonly queue: string;
  /** Which attempt this is, from 1; a retry is a new job with `attempt + 1`. */
  readonly attempt: number;
  /**
   * 0 (lowest) to 9 (highest): the node's `priority`, else its flow's
   * `opts.priority`, else 5. A queue hands out higher priorities first.
   */
  readonly priority: number;
  /** The node's own `data` from the flow spec; `null` when it has none. */
  readonly data: Data;
  /**
   * Every parent's result by parent name. A parent that failed with
   * `continueOnFailure` has `{"error": "..."}` in its slot.
   */
  readonly parents: Parents;
  /**
   * On an element of a map node (`node` is `{map}[{index}]`, e.g. `resize[17]`): its
   * element of the mapped array, any JSON value, `null` included. `undefined` on
   * every other job (use {@link index} to tell an element from a plain job).
   */
  readonly item: unknown;
  /** On an element of a map node: its position in the array, from 0; `undefined` otherwise. */
  readonly index: number | undefined;
  /** The node's time limit for one attempt, if it has one. */
  readonly timeoutMs: number | undefined;
  /** When the engine enqueued this attempt (ms since the epoch). */
  readonly enqueuedAtMs: number;
  /**
   * The W3C trace context of this attempt (`00-{trace id}-{span id}-{flags}`): the
   * attempt's span when the server exports traces (`--otlp-endpoint`), else the
   * context the flow was created with; `undefined` when there is neither. With
   * `@opentelemetry/api` installed the worker already runs the handler in a span
   * that is its child.
   */
  readonly traceparent: string | undefined;
  readonly #report: (value: unknown) => Promise<void>;
  readonly #signal: () => AbortSignal;

  /** @internal built by the worker for each delivery */
  constructor(env: Envelope, input: JobInput, signal: () => AbortSignal, report: (value: unknown) => Promise<void>) {
    this.id = env.id;
    this.flowId = env.flowId;
    this.node = env.node;
    this.name = env.handler;
    this.queue = env.queue;
    this.attempt = env.attempt;
    this.priority = env.priority;
    this.data = input.data as Data;
    this.parents = input.parents as Parents;
    this.item = input.item;
    this.index = input.index;
    this.#signal = signal;
    this.timeoutMs = env.timeoutMs;
    this.enqueuedAtMs = env.enqueuedAtMs;
    this.traceparent = env.traceparent;
    this.#report = report;
  }

  /**
   * Fires when the job must stop: its flow was cancelled, its `timeoutMs` passed, or
   * the worker is closing and its deadline passed. `signal.reason` is a
   * {@link JobAbortedError} saying which. Pass it to `fetch`, timers and child
   * processes; a handler that ignores it keeps running, but its result is dropped.
   * (Made on first use: most jobs never look at it.)
   */
  get signal(): AbortSignal {
    return this.#signal();
  }

  /**
   * Reports progress (any JSON value: a number, `{done, total}`, ...). Clients see it
   * in the node's `progress` and in a `progress` event on the WebSocket. The promise
   * resolves once the record is in Redis; awaiting it is optional (a failure to
   * write is retried in the background, never thrown). Ignored once the job ended.
   */
  progress(value: unknown): Promise<void> {
    return this.#report(value);
  }

  /** BullMQ's name for {@link progress}. */
  updateProgress(value: unknown): Promise<void> {
    return this.#report(value);
  }
}
