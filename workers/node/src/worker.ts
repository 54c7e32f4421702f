/**
 * The worker: serves dagflow queues from Redis with TypeScript handlers, speaking
 * the protocol of docs/PROTOCOL.md.
 *
 * Per queue a {@link QueueFetcher} takes jobs on its own connection (`take.lua`,
 * which serves the queue's 20 lane streams best first) and starts at most
 * `concurrency` of them at once; the worker reports each job's outcome with
 * `report.lua` on one shared, auto-pipelined connection, so reports of jobs that end
 * in the same tick go to Redis in one round trip. One ticker renews the lease of
 * every running job, one reclaims jobs of dead workers, one sends heartbeats, one
 * removes consumers that stopped workers left behind; no timer runs per job except
 * a job's own `timeoutMs`.
 *
 * @module
 */

import { createHash } from "node:crypto";
import { EventEmitter } from "node:events";
import { hostname } from "node:os";
import { ReplyError, type Redis } from "ioredis";

import { FatalError, JobAbortedError, isRetryable, messageOf } from "./errors.js";
import { Job } from "./job.js";
import {
  DEFAULT_HEARTBEAT_MS,
  DEFAULT_LEASE_MS,
  DEFAULT_PREFIX,
  ENVELOPE_FIELD,
  Keys,
  LANES,
  WORKERS_GROUP,
  encodeOutcome,
  fieldOf,
  isGroupLost,
  isStalled,
  isValidQueueName,
  parseAutoclaimReply,
  parseDeliveries,
  parseEntries,
  parseEnvelope,
  parsePendingIds,
  parseReadReply,
  parseTakeReply,
  ReportFrame,
  splitInput,
  stalledMessage,
  type Envelope,
  type Outcome,
  type RawEntry,
} from "./protocol.js";
import { closeConnection, openConnection, type RedisConnection } from "./redis.js";
import { RawConnection } from "./reporter.js";
import { luaScripts } from "./scripts.js";
import { loadHandlerSpans, type HandlerSpans } from "./tracing.js";

/**
 * A job handler: returns the node's result (any JSON value; `undefined` is `null`),
 * or throws. A thrown {@link FatalError} fails the node at once; anything else
 * (a plain `Error`, a {@link RetryableError}) lets the engine retry it if the node
 * has attempts left.
 */
// eslint-disable-next-line @typescript-eslint/no-explicit-any
export type Handler = (job: Job<any, any>) => unknown;

/** Settings of a {@link Worker}. */
export interface WorkerOptions {
  /** Redis of the engine: a URL, ioredis options or an ioredis connection to copy. Default `redis://127.0.0.1:6379`. */
  redis?: RedisConnection;
  /** The engine's key prefix (`dagflow serve --prefix`). Default `dagflow`. */
  prefix?: string;
  /**
   * The queues to serve and how many jobs of each run at once:
   * `{ images: 4, mail: 16 }`, or a list of names that all get `concurrency`.
   */
  queues: Record<string, number> | string[];
  /** Concurrency of queues given as a list. Default 16. */
  concurrency?: number;
  /** Handlers by name: a job runs the handler named by its node's `handler` (by default the node's name). */
  handlers?: Record<string, Handler>;
  /** Runs jobs whose handler has no entry in `handlers` (BullMQ's single processor; switch on `job.name`). */
  processor?: Handler;
  /**
   * This worker's consumer name in the group of every lane it reads, and its id in `P:workers`.
   * Give a stable name (host + slot) so that a restarted worker resumes its own
   * unfinished jobs at once; with the default (host, pid and a random part) they are
   * reclaimed by someone after their lease. Never run two live workers under one name.
   */
  consumer?: string;
  /** Job lease in ms. Default: `leaseMs` of the engine's `P:config`, else 30000. Must match the engine's. */
  leaseMs?: number;
  /** Heartbeat interval in ms. Default 5000. */
  heartbeatMs?: number;
  /** How long one blocking read waits for new jobs, in ms. Default 2000. */
  blockMs?: number;
  /** Most jobs one read asks for. Default 100 (never more than the queue's free slots). */
  batchSize?: number;
  /** How often jobs of dead workers are looked for, in ms. Default: lease/2, at most 5000. */
  reclaimEveryMs?: number;
  /** Start serving in the constructor. Default true; otherwise call {@link Worker.run}. */
  autorun?: boolean;
}

/** The events of a {@link Worker}, with their arguments. */
export interface WorkerEvents {
  /** Serving: cancel channel subscribed, first heartbeat sent. */
  ready: [];
  /** A handler was started. */
  active: [job: Job];
  /** A job's result is in Redis. */
  completed: [job: Job, result: unknown];
  /** A job's failure is in Redis (thrown error, timeout, cancel, no handler). */
  failed: [job: Job | undefined, error: Error];
  /** A job reported progress. */
  progress: [job: Job, progress: unknown];
  /** A job claimed from dead workers more often than its `maxStalled` was failed without running. */
  stalled: [jobId: string, message: string];
  /** Something went wrong that the worker retries by itself (Redis down, a malformed entry). */
  error: [error: Error];
  /** `close()` began. */
  closing: [];
  /** `close()` ended: no job runs, every connection is closed. */
  closed: [];
}

/**
 * Where reports are written: the reporter's own raw connection, or (behind Redis
 * Sentinel, which it does not speak) the shared ioredis connection.
 */
interface ReportSink {
  send(args: readonly string[]): Promise<unknown>;
  sendReport(frame: ReportFrame, final: boolean, outcomeJson: string): Promise<unknown>;
  close(): void;
}

/** Most `XAUTOCLAIM` calls one reclaim pass makes per lane. */
const MAX_AUTOCLAIM_ROUNDS = 10;
/** How often consumers left behind by stopped workers are removed from the lanes' groups. */
const JANITOR_EVERY_MS = 600_000;
/** How long a consumer with no pending job must have been idle to be removed: no live worker is. */
const CONSUMER_IDLE_MS = 3_600_000;
/** Longest wait between two tries of a report or a failed read. */
const MAX_BACKOFF_MS = 5_000;

/** A job read from a lane stream. */
interface Delivery {
  /** The lane stream it was read from: what gets renewed, acknowledged and reported on. */
  stream: string;
  /** Its entry id, the delivery handle. */
  entryId: string;
  /** The job. */
  env: Envelope;
}

/** What the worker keeps about a job it runs. */
class RunningJob {
  /** Aborts `job.signal`; made when the handler first reads the signal, or when the job is aborted. */
  private controller: AbortController | undefined;
  /** The outcome is decided (reported or being reported), or the job was abandoned. */
  done = false;
  /** Abandoned at the close deadline: nothing more is reported. */
  abandoned = false;
  /** The final report is in Redis: later non-final reports are pointless. */
  finalWritten = false;
  /**
   * Reports issued for this job so far. A started or progress report that failed is
   * retried only while no later report of the job was issued: the later one
   * supersedes it (progress may be coalesced), and retrying it after the later one
   * would write the job's records out of order.
   */
  reportsIssued = 0;
  /** The job's own timeout, when its node has one. */
  timer: NodeJS.Timeout | undefined;
  /** The handler's view; set once the handler is about to start. */
  job: Job | undefined;
  /** The job's report calls, encoded once for all its reports. */
  frame: ReportFrame | undefined;

  constructor(
    readonly fetcher: QueueFetcher,
    readonly delivery: Delivery,
  ) {}

  /** The job's signal. */
  signal(): AbortSignal {
    this.controller ??= new AbortController();
    return this.controller.signal;
  }

  /** Fires the job's signal with `reason`. */
  abort(reason: Error): void {
    this.controller ??= new AbortController();
    this.controller.abort(reason);
  }
}

/**
 * What a job this worker holds is known by: its lane stream and entry id. An entry id
 * alone is not enough, since ids are unique within one stream only and two lanes of a
 * queue often hold the same id (one enqueue adds to several lanes in one millisecond).
 */
function handleOf(stream: string, entryId: string): string {
  return `${entryId} ${stream}`;
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Exponential backoff with jitter: 100 ms, 200 ms, ... up to {@link MAX_BACKOFF_MS}. */
function backoff(failures: number): number {
  const base = Math.min(MAX_BACKOFF_MS, 100 * 2 ** Math.min(failures, 10));
  return base / 2 + Math.random() * (base / 2);
}

function asError(err: unknown): Error {
  return err instanceof Error ? err : new Error(messageOf(err));
}

/**
 * Reads one queue on its own connection and starts its jobs: first this consumer's
 * own pending entries (left by a previous run under the same consumer name), lane by
 * lane; then the best ready jobs through `take.lua`, blocking with a plain `XREAD` on
 * all 20 lanes when there are none. Never takes more than the free slots.
 */
class QueueFetcher {
  /** Jobs of this queue that run now, by handle ({@link handleOf}). */
  readonly running = new Map<string, RunningJob>();
  /** Jobs delivered beyond the free slots (a reclaim raced a read); started as slots free up. */
  readonly buffer: Delivery[] = [];
  /** Handles of entries a reclaim pass claimed and has not handed over yet. */
  readonly claiming = new Set<string>();
  /** The dedicated connection of the takes and blocking reads. */
  readonly conn: Redis;
  /** The queue's lane streams in lane order: `take.lua`'s first 20 keys. */
  readonly lanes: string[];
  /** Per lane, where the next XAUTOCLAIM scan goes on. */
  readonly autoclaimCursors: string[];
  /** `P:q:{queue}:takes`, `take.lua`'s last key. */
  private readonly takes: string;
  /** Where reading this consumer's own pending entries goes on (a lane index and a cursor); `null` once all are read. */
  private pending: { lane: number; cursor: string } | null = { lane: 0, cursor: "0" };
  /**
   * A take may have handed entries to this consumer whose reply never arrived (its
   * connection broke, or it failed): they are looked for before the next take.
   */
  private recover = false;
  /** Redis's id of `conn`, for `CLIENT UNBLOCK` at close; `null` until known or after a reconnect. */
  private clientId: number | null = null;
  /** A blocking read is in flight. */
  private blocked = false;
  /** Wakes the loop waiting for a free slot. */
  private wake: (() => void) | null = null;
  /** The read loop, once started. */
  private loop: Promise<void> | null = null;

  constructor(
    private readonly worker: Worker,
    readonly queue: string,
    readonly concurrency: number,
  ) {
    this.lanes = worker.keys.lanes(queue);
    this.takes = worker.keys.takes(queue);
    this.autoclaimCursors = this.lanes.map(() => "0-0");
    this.conn = worker.openConnection(`read:${queue}`);
    this.conn.defineCommand("dagflowTake", { numberOfKeys: LANES + 1, lua: luaScripts().take });
    // A new connection has a new client id. And a take cut off by the disconnect may
    // have handed entries to this consumer although its reply is lost (ioredis sends
    // the call again, and the second call takes other entries): look for them.
    this.conn.on("close", () => {
      this.clientId = null;
      this.recover = true;
    });
  }

  /** Free slots: the concurrency minus running and buffered jobs. */
  free(): number {
    return this.concurrency - this.running.size - this.buffer.length;
  }

  /** Starts the read loop. */
  start(): void {
    this.loop = this.readLoop();
  }

  /** Called when one of this queue's jobs ended: starts a buffered job or wakes the loop. */
  slotFreed(): void {
    while (this.buffer.length > 0 && this.running.size < this.concurrency) {
      this.worker.startJob(this, this.buffer.shift() as Delivery);
    }
    const wake = this.wake;
    this.wake = null;
    wake?.();
  }

  /**
   * Whether this worker holds the entry already: running, buffered, being claimed,
   * or ended with its final report still on the way to Redis (it stays pending until
   * the report lands).
   */
  holds(stream: string, entryId: string): boolean {
    const handle = handleOf(stream, entryId);
    return (
      this.running.has(handle) ||
      this.claiming.has(handle) ||
      this.worker.awaitsReport(handle) ||
      this.buffer.some((d) => d.entryId === entryId && d.stream === stream)
    );
  }

  /** Starts a job now if a slot is free, else keeps it for the next free slot. */
  offer(delivery: Delivery): void {
    if (this.holds(delivery.stream, delivery.entryId)) return;
    if (this.running.size < this.concurrency) this.worker.startJob(this, delivery);
    else this.buffer.push(delivery);
  }

  /** Stops reading: interrupts a blocking read and waits for the loop to end (at most until `deadline`). */
  async stop(deadline: number): Promise<void> {
    this.slotFreed();
    if (this.blocked) {
      if (this.clientId !== null) {
        // CLIENT UNBLOCK makes the read return as if it timed out.
        await this.worker.cmd.call("CLIENT", "UNBLOCK", String(this.clientId)).catch(() => undefined);
      } else {
        this.conn.disconnect();
      }
    }
    if (this.loop) {
      const left = Math.max(0, Math.min(deadline - Date.now(), this.worker.blockMs + 1_000));
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([this.loop, new Promise((r) => (timer = setTimeout(r, left)))]);
      clearTimeout(timer);
    }
    this.conn.disconnect();
  }

  private async readLoop(): Promise<void> {
    let failures = 0;
    while (!this.worker.stopping) {
      try {
        const free = this.free();
        if (free <= 0) {
          await new Promise<void>((resolve) => (this.wake = resolve));
          continue;
        }
        const deliveries = await this.read(Math.min(free, this.worker.batchSize));
        failures = 0;
        // Delivered to this consumer even if closing began meanwhile: run them.
        for (const d of deliveries) this.offer(d);
      } catch (err) {
        this.blocked = false;
        if (this.worker.stopping) break;
        // take.lua is a write: a Redis at its maxmemory refuses it (OOM) until memory
        // is freed, so this is retried like a connection error, never given up.
        this.worker.emitError(new Error(`queue ${this.queue}: read failed: ${messageOf(err)}`));
        this.recover = true;
        await sleep(backoff(failures++));
      }
    }
  }

  /**
   * Reads up to `count` jobs: own pending ones first, then those a lost take reply
   * left pending here, then the best ready ones, blocking until one arrives or
   * `blockMs` passes.
   */
  private async read(count: number): Promise<Delivery[]> {
    const own = await this.readOwnPending(count);
    if (own.length > 0) return own;
    if (this.recover) {
      this.recover = false;
      const lost = await this.findLost();
      if (lost.length > 0) return lost;
    }
    const first = await this.take(count);
    if (first.deliveries.length > 0 || first.wait.length === 0) return first.deliveries;
    if (this.clientId === null) this.clientId = Number(await this.conn.call("CLIENT", "ID"));
    if (this.worker.stopping) return [];
    // Nothing ready: wait for an entry newer than what take.lua saw in any lane (XREAD
    // consumes nothing), then take again; someone else may have taken it meanwhile.
    this.blocked = true;
    let woke: unknown;
    try {
      woke = await this.conn.call(
        "XREAD", "COUNT", "1", "BLOCK", String(this.worker.blockMs), "STREAMS", ...this.lanes, ...first.wait,
      );
    } finally {
      this.blocked = false;
    }
    if (woke === null || this.worker.stopping) return [];
    return (await this.take(count)).deliveries;
  }

  /**
   * The next page of this consumer's own pending entries (jobs it received before a
   * restart and never finished), lane by lane in lane order; empty once every lane
   * is read.
   */
  private async readOwnPending(count: number): Promise<Delivery[]> {
    while (this.pending !== null) {
      const { lane, cursor } = this.pending;
      const stream = this.lanes[lane] as string;
      let reply: unknown = null;
      try {
        reply = await this.conn.call(
          "XREADGROUP", "GROUP", WORKERS_GROUP, this.worker.consumer,
          "COUNT", String(count), "STREAMS", stream, cursor,
        );
      } catch (err) {
        // NOGROUP: a lane never used (or Redis lost its data) holds nothing for us.
        if (!isGroupLost(err)) throw err;
      }
      const entries = parseReadReply(reply).get(stream) ?? [];
      const last = entries[entries.length - 1];
      if (!last) {
        this.pending = lane + 1 < LANES ? { lane: lane + 1, cursor: "0" } : null;
        continue;
      }
      this.pending = { lane, cursor: last.id };
      const fresh = entries.filter((e) => !this.holds(stream, e.id));
      const good = await this.worker.triage(stream, fresh);
      if (good.length > 0) {
        // Redis 7.0 resets their idle time as it reads them; renewing them at once
        // keeps that true on versions that do not, so that no other worker reclaims
        // them while they run again here.
        await this.worker.renew(stream, good.map((d) => d.entryId));
        return good;
      }
      // A page of deleted or malformed entries says nothing about the next one.
    }
    return [];
  }

  /**
   * Entries pending on this consumer that no job here holds: handed out by a take
   * whose reply was lost. Listed with XPENDING and fetched with XRANGE, which touch
   * nothing (re-reading them with XREADGROUP would count a delivery of every job
   * that runs here); entries XRANGE no longer finds are acknowledged.
   */
  private async findLost(): Promise<Delivery[]> {
    // The jobs held here are listed too: ask for enough that they cannot hide the lost ones.
    const n = String(this.concurrency + this.worker.finalsOnTheirWay());
    const pending = this.conn.pipeline();
    for (const stream of this.lanes) pending.call("XPENDING", stream, WORKERS_GROUP, "-", "+", n, this.worker.consumer);
    const replies = (await pending.exec()) ?? [];
    const lost: Array<[string, string]> = [];
    for (let lane = 0; lane < LANES; lane++) {
      const stream = this.lanes[lane] as string;
      const [err, reply] = replies[lane] ?? [null, null];
      if (err) {
        if (isGroupLost(err)) continue;
        throw err;
      }
      for (const id of parsePendingIds(reply)) if (!this.holds(stream, id)) lost.push([stream, id]);
    }
    if (lost.length === 0) return [];
    const ranges = this.conn.pipeline();
    for (const [stream, id] of lost) ranges.call("XRANGE", stream, id, id);
    const found = (await ranges.exec()) ?? [];
    const out: Delivery[] = [];
    for (let i = 0; i < lost.length; i++) {
      const [stream, id] = lost[i] as [string, string];
      const [err, reply] = found[i] ?? [null, null];
      if (err) throw err;
      // Claimed by a reclaim pass meanwhile: it hands the job over itself.
      if (this.holds(stream, id)) continue;
      const entries = parseEntries(reply);
      // Not found: deleted while pending, only its pending record is left to clear.
      out.push(...(await this.worker.triage(stream, entries.length > 0 ? entries : [{ id, fields: null }])));
    }
    return out;
  }

  /**
   * Runs `take.lua` for up to `count` jobs: the jobs taken, in the order to start
   * them (malformed entries removed), or, when none was ready, the ids to block after.
   */
  private async take(count: number): Promise<{ deliveries: Delivery[]; wait: string[] }> {
    const reply = await (this.conn as unknown as TakeCommand).dagflowTake(
      ...this.lanes, this.takes, WORKERS_GROUP, this.worker.consumer, String(count),
    );
    const { jobs, wait } = parseTakeReply(reply);
    const deliveries: Delivery[] = [];
    for (const job of jobs) {
      const entry: RawEntry = { id: job.id, fields: job.envelope === null ? [] : [ENVELOPE_FIELD, job.envelope] };
      deliveries.push(...(await this.worker.triage(this.lanes[job.lane] as string, [entry])));
    }
    return { deliveries, wait };
  }
}

/**
 * Serves dagflow queues. Starts at once (unless `autorun: false`); `close()` stops
 * it gracefully.
 *
 * ```ts
 * const worker = new Worker({
 *   redis: "redis://127.0.0.1:6379",
 *   queues: { images: 4 },
 *   handlers: { resize: async (job) => ({ path: await resize(job.parents.download.path, job.signal) }) },
 * });
 * worker.on("failed", (job, err) => console.error(job?.id, err.message));
 * process.on("SIGTERM", () => worker.close(30_000));
 * ```
 */
export class Worker extends EventEmitter<WorkerEvents> {
  /** Key names of the deployment. */
  readonly keys: Keys;
  /** This worker's consumer name and `P:workers` id. */
  readonly consumer: string;
  /** @internal The shared connection (auto-pipelined); never given a blocking command. Opened by `run()`. */
  cmd!: Redis;
  /** How long a blocking read waits. */
  readonly blockMs: number;
  /** Most jobs per read. */
  readonly batchSize: number;
  /** @internal Closing: no new reads. */
  stopping = false;

  private readonly options: WorkerOptions;
  private readonly handlers: Record<string, Handler>;
  private readonly processor: Handler | undefined;
  private readonly queueConcurrency: Array<[string, number]>;
  private readonly heartbeatMs: number;
  private readonly fetchers: QueueFetcher[] = [];
  /** Running jobs by job id, for cancel messages. */
  private readonly byJobId = new Map<string, RunningJob>();
  /**
   * Jobs that ended whose final report is not yet in Redis, by handle
   * ({@link handleOf}): close() waits for them, and their lease is renewed meanwhile
   * so that no one reclaims and re-runs a job whose outcome is only waiting for Redis.
   */
  private readonly unwrittenFinals = new Map<string, Delivery>();
  private sub: Redis | undefined;
  /** Where reports go; opened by `run()`. */
  private reports: ReportSink | undefined;
  /** `report.lua` and its SHA1, for EVALSHA. */
  private reportLua = "";
  private reportSha = "";
  private lease = DEFAULT_LEASE_MS;
  private timers: NodeJS.Timeout[] = [];
  private renewTimer: NodeJS.Timeout | undefined;
  private reclaimTimer: NodeJS.Timeout | undefined;
  private runPromise: Promise<void> | undefined;
  /** A span per handler run, when `@opentelemetry/api` is installed (see tracing.ts). */
  private spans: HandlerSpans | undefined;
  private closePromise: Promise<void> | undefined;
  /** Past the close deadline: retries of reports stop, nothing more is written. */
  private hardStopped = false;
  /** The last connection error per connection, so a Redis outage is reported once, not per reconnect attempt. */
  private readonly lastConnError = new Map<string, string>();

  constructor(options: WorkerOptions) {
    super();
    this.options = options;
    this.keys = new Keys(options.prefix ?? DEFAULT_PREFIX);
    this.handlers = { ...(options.handlers ?? {}) };
    for (const [name, handler] of Object.entries(this.handlers)) {
      if (typeof handler !== "function") throw new TypeError(`handler '${name}' is not a function`);
    }
    this.processor = options.processor;
    if (Object.keys(this.handlers).length === 0 && !this.processor) {
      throw new TypeError("a worker needs handlers (by name) or a processor");
    }
    const defaultConcurrency = options.concurrency ?? 16;
    const queues: Array<[string, number]> = Array.isArray(options.queues)
      ? options.queues.map((q) => [q, defaultConcurrency])
      : Object.entries(options.queues ?? {});
    if (queues.length === 0) throw new TypeError("a worker needs at least one queue");
    for (const [name, concurrency] of queues) {
      if (!isValidQueueName(name)) {
        throw new TypeError(`queue name '${name}' is not valid: use ASCII letters, digits, '-', '_' or '.'`);
      }
      if (!Number.isInteger(concurrency) || concurrency < 1) {
        throw new TypeError(`concurrency of queue '${name}' must be an integer >= 1, not ${concurrency}`);
      }
    }
    this.queueConcurrency = queues;
    this.consumer = options.consumer ?? `node-${hostname()}-${process.pid}-${Math.random().toString(36).slice(2, 8)}`;
    this.heartbeatMs = options.heartbeatMs ?? DEFAULT_HEARTBEAT_MS;
    this.blockMs = options.blockMs ?? 2_000;
    this.batchSize = options.batchSize ?? 100;
    if (options.leaseMs !== undefined && !(options.leaseMs > 0)) throw new TypeError("leaseMs must be > 0");
    // Read now so that a package built without its scripts fails at construction.
    luaScripts();
    if (options.autorun !== false) void this.run().catch(() => undefined);
  }

  /** The job lease in use (ms): from the options, else from `P:config`, else 30000. Known once ready. */
  get leaseMs(): number {
    return this.lease;
  }

  /** Jobs running now, over all queues. */
  get runningCount(): number {
    let n = 0;
    for (const f of this.fetchers) n += f.running.size;
    return n;
  }

  /**
   * Starts serving (called by the constructor unless `autorun: false`). Resolves
   * once ready; a Redis that is down is waited for (connections retry by themselves).
   */
  run(): Promise<void> {
    this.runPromise ??= this.start().catch((err) => {
      this.emitError(asError(err));
      throw err;
    });
    return this.runPromise;
  }

  /** Resolves when the worker serves its queues (BullMQ's name). */
  waitUntilReady(): Promise<void> {
    return this.run();
  }

  /** Runs `fn` every `ms`, skipping a tick while the previous run is still busy. */
  private every(ms: number, fn: () => Promise<void>): NodeJS.Timeout {
    let busy = false;
    return setInterval(() => {
      if (busy) return;
      busy = true;
      fn()
        .catch((err) => this.emitError(asError(err)))
        .finally(() => (busy = false));
    }, ms);
  }

  /** (Re)starts the two tickers whose rhythm follows the lease: renewal (lease/3) and reclaim. */
  private scheduleLeaseTimers(): void {
    clearInterval(this.renewTimer);
    clearInterval(this.reclaimTimer);
    if (this.hardStopped) return;
    this.renewTimer = this.every(Math.max(10, Math.floor(this.lease / 3)), () => this.renewAll());
    this.reclaimTimer = this.every(
      this.options.reclaimEveryMs ?? Math.max(50, Math.min(this.lease / 2, 5_000)),
      () => this.reclaimAll(),
    );
  }

  /**
   * The lease the engine publishes in `P:config`, or `undefined` when it is missing
   * (no engine started yet, or Redis lost its data: then the last value is kept).
   */
  private async publishedLease(): Promise<number | undefined> {
    const published = await this.cmd.hget(this.keys.config(), "leaseMs");
    const lease = Number(published);
    return published !== null && Number.isFinite(lease) && lease > 0 ? lease : undefined;
  }

  private async start(): Promise<void> {
    // close() may run while this waits for Redis: check after every wait, so that no
    // connection is opened after close() swept them.
    const checkOpen = (): void => {
      if (this.stopping) throw new Error("the worker was closed before it was ready");
    };
    // A Redis that answers errors for a while (LOADING after a restart, OOM) must not
    // kill a worker at start: each step is retried with backoff until it succeeds or
    // close() is called. (A Redis that is down is simply waited for by ioredis.)
    const step = async <T>(what: string, fn: () => Promise<T>): Promise<T> => {
      for (let failures = 0; ; failures++) {
        checkOpen();
        try {
          const value = await fn();
          checkOpen();
          return value;
        } catch (err) {
          checkOpen();
          this.emitError(new Error(`${what} failed, retrying: ${messageOf(err)}`));
          await sleep(backoff(failures));
        }
      }
    };
    checkOpen();
    // Before the first job, so that every handler run gets its span.
    this.spans = await loadHandlerSpans();
    const scripts = luaScripts();
    this.cmd = this.openConnection("cmd", true);
    this.reportLua = scripts.report;
    this.reportSha = createHash("sha1").update(scripts.report).digest("hex");
    this.reports = this.openReportSink();
    this.cmd.defineCommand("dagflowHeartbeat", { numberOfKeys: 1, lua: scripts.heartbeat });
    this.lease = this.options.leaseMs ?? (await step("reading P:config", () => this.publishedLease())) ?? DEFAULT_LEASE_MS;

    const sub = (this.sub = this.openConnection("cancel"));
    sub.on("message", (_channel: string, jobId: string) => this.cancel(jobId));
    // ioredis subscribes again by itself after a reconnect (autoResubscribe).
    await step("subscribing to the cancel channel", () => sub.subscribe(this.keys.cancelChannel()));

    // No groups to create: each lane's group comes with its stream (enqueue.lua).
    for (const [queue, concurrency] of this.queueConcurrency) {
      checkOpen();
      this.fetchers.push(new QueueFetcher(this, queue, concurrency));
    }
    await step("the first heartbeat", () => this.heartbeat());

    this.timers.push(this.every(this.heartbeatMs, () => this.heartbeat()));
    this.timers.push(this.every(JANITOR_EVERY_MS, () => this.removeIdleConsumers(CONSUMER_IDLE_MS).then(() => undefined)));
    this.scheduleLeaseTimers();
    for (const f of this.fetchers) f.start();
    this.emit("ready");
  }


  /**
   * Stops gracefully: no new jobs are read; running jobs may finish and report until
   * `deadlineMs` from now. Jobs still running then are abandoned unreported (their
   * `signal` fires with cause `closing`): they stay pending in Redis and run again
   * elsewhere after the lease, or at once when a worker with the same consumer name
   * starts. Idempotent.
   */
  close(deadlineMs = 30_000): Promise<void> {
    this.closePromise ??= this.shutdown(deadlineMs);
    return this.closePromise;
  }

  private async shutdown(deadlineMs: number): Promise<void> {
    const deadline = Date.now() + deadlineMs;
    this.stopping = true;
    this.emit("closing");
    if (this.runPromise) {
      // Still starting (Redis unreachable): give it until the deadline, then cut it off.
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([
        this.runPromise.catch(() => undefined),
        new Promise((r) => (timer = setTimeout(r, Math.max(0, deadline - Date.now())))),
      ]);
      clearTimeout(timer);
    }
    await Promise.all(this.fetchers.map((f) => f.stop(deadline)));
    while ((this.runningCount > 0 || this.unwrittenFinals.size > 0) && Date.now() < deadline) {
      await sleep(Math.min(20, Math.max(1, deadline - Date.now())));
    }
    for (const f of this.fetchers) {
      for (const rj of f.running.values()) this.abandon(rj);
      f.running.clear();
      f.buffer.length = 0;
    }
    this.hardStopped = true;
    for (const t of this.timers) clearInterval(t);
    this.timers = [];
    clearInterval(this.renewTimer);
    clearInterval(this.reclaimTimer);
    if (this.cmd?.status === "ready") {
      await Promise.race([this.cmd.hdel(this.keys.workers(), this.consumer).catch(() => undefined), sleep(500)]);
    }
    this.reports?.close();
    await Promise.all([
      this.cmd ? closeConnection(this.cmd) : Promise.resolve(),
      this.sub ? closeConnection(this.sub) : Promise.resolve(),
    ]);
    this.emit("closed");
  }

  /** The reporter connection, to the Redis the shared connection's options name. */
  private openReportSink(): ReportSink {
    const o = this.cmd.options;
    if (o.sentinels && o.sentinels.length > 0) {
      const cmd = this.cmd;
      const send = (args: readonly string[]): Promise<unknown> => cmd.call(args[0] as string, ...args.slice(1));
      return { send, sendReport: (frame, final, json) => send(frame.command(final, json)), close: () => undefined };
    }
    const role = "report";
    const raw = new RawConnection(
      {
        host: o.host,
        port: o.port,
        path: o.path,
        username: o.username,
        password: o.password,
        db: o.db,
        tls: o.tls,
        connectionName: `dagflow-node:${this.consumer}:report`,
      },
      [["SCRIPT", "LOAD", this.reportLua]],
      (err) => {
        if (this.lastConnError.get(role) === err.message) return;
        this.lastConnError.set(role, err.message);
        this.emitError(err);
      },
      () => this.lastConnError.delete(role),
    );
    return {
      send: (args) => raw.send(args),
      sendReport: (frame, final, json) => raw.sendEncoded(frame.encode(final, json)),
      close: () => raw.close(),
    };
  }

  /** @internal Whether the final report of this job ({@link handleOf}) is still on its way to Redis. */
  awaitsReport(handle: string): boolean {
    return this.unwrittenFinals.has(handle);
  }

  /** @internal How many jobs ended whose final report is still on its way to Redis. */
  finalsOnTheirWay(): number {
    return this.unwrittenFinals.size;
  }

  /** @internal Opens a connection named for `CLIENT LIST`; errors are reported once per outage. */
  openConnection(role: string, autoPipeline = false): Redis {
    const conn = openConnection(this.options.redis, {
      connectionName: `dagflow-node:${this.consumer}:${role}`,
      enableAutoPipelining: autoPipeline,
      // autoResendUnfulfilledCommands stays on (the default): without it ioredis
      // drops a command cut off by a disconnect without ever settling its promise,
      // and a blocked read would hang forever. A resent report only adds a duplicate
      // record, which the engine ignores.
    });
    conn.on("error", (err: Error) => {
      if (this.lastConnError.get(role) === err.message) return;
      this.lastConnError.set(role, err.message);
      this.emitError(new Error(`redis (${role}): ${err.message}`));
    });
    conn.on("ready", () => this.lastConnError.delete(role));
    return conn;
  }

  /**
   * @internal Sorts entries read from `stream`: returns the decodable jobs; clears the
   * pending record of entries deleted while pending; acknowledges, deletes and logs
   * malformed ones so they are not delivered forever.
   */
  async triage(stream: string, entries: RawEntry[]): Promise<Delivery[]> {
    const good: Delivery[] = [];
    const deleted: string[] = [];
    const malformed: string[] = [];
    for (const entry of entries) {
      if (entry.fields === null) {
        deleted.push(entry.id);
        continue;
      }
      try {
        good.push({ stream, entryId: entry.id, env: parseEnvelope(fieldOf(entry.fields, ENVELOPE_FIELD)) });
      } catch (err) {
        malformed.push(entry.id);
        this.emitError(new Error(`dropping malformed entry ${entry.id} of ${stream}: ${messageOf(err)}`));
      }
    }
    if (deleted.length > 0 || malformed.length > 0) {
      const pipe = this.cmd.pipeline();
      if (deleted.length > 0) pipe.xack(stream, WORKERS_GROUP, ...deleted);
      if (malformed.length > 0) pipe.xack(stream, WORKERS_GROUP, ...malformed).xdel(stream, ...malformed);
      await pipe.exec();
    }
    return good;
  }

  /**
   * @internal Resets the idle time of entries of one lane stream this consumer holds
   * (`XCLAIM ... JUSTID`). A lane without its group (Redis lost its data) holds
   * nothing to renew.
   */
  async renew(stream: string, entryIds: string[]): Promise<void> {
    if (entryIds.length === 0) return;
    try {
      await this.cmd.call("XCLAIM", stream, WORKERS_GROUP, this.consumer, "0", ...entryIds, "JUSTID");
    } catch (err) {
      if (!isGroupLost(err)) throw err;
    }
  }

  /** Renews the lease of every running and buffered job, one XCLAIM per lane stream that holds some. */
  private async renewAll(): Promise<void> {
    const byStream = new Map<string, string[]>();
    const add = (d: Delivery): void => {
      let ids = byStream.get(d.stream);
      if (!ids) byStream.set(d.stream, (ids = []));
      ids.push(d.entryId);
    };
    for (const f of this.fetchers) {
      for (const rj of f.running.values()) add(rj.delivery);
      for (const d of f.buffer) add(d);
    }
    for (const d of this.unwrittenFinals.values()) add(d);
    await Promise.all([...byStream].map(([stream, ids]) => this.renew(stream, ids)));
  }

  /**
   * Takes over jobs whose lease expired (their worker died), for every queue with
   * free slots, lane by lane in lane order: XAUTOCLAIM, then the delivery count of
   * each claimed entry; jobs claimed more often than their `maxStalled` allows are
   * failed as stalled instead of run.
   */
  private async reclaimAll(): Promise<void> {
    for (const f of this.fetchers) {
      for (let lane = 0; lane < f.lanes.length; lane++) {
        if (this.stopping) return;
        const free = f.free();
        if (free <= 0) break;
        await this.reclaimLane(f, lane, free);
      }
    }
  }

  /** Reclaims up to `free` jobs of one lane of `f`'s queue. */
  private async reclaimLane(f: QueueFetcher, lane: number, free: number): Promise<void> {
    const stream = f.lanes[lane] as string;
    const claimed: RawEntry[] = [];
    for (let round = 0; round < MAX_AUTOCLAIM_ROUNDS && claimed.length < free; round++) {
      let reply: unknown;
      try {
        reply = await this.cmd.call(
          "XAUTOCLAIM", stream, WORKERS_GROUP, this.consumer, String(this.lease),
          f.autoclaimCursors[lane] as string, "COUNT", String(free - claimed.length),
        );
      } catch (err) {
        // NOGROUP, a missing key included: a lane never used holds nothing to claim.
        if (!isGroupLost(err)) throw err;
        f.autoclaimCursors[lane] = "0-0";
        break;
      }
      const { next, entries } = parseAutoclaimReply(reply);
      claimed.push(...entries);
      f.autoclaimCursors[lane] = next;
      if (next === "0-0") break;
    }
    // A job held here whose renewal came late: not started twice.
    const fresh = claimed.filter((e) => !f.holds(stream, e.id));
    // Held until handed over, so that the read loop does not take them for entries
    // of a lost take (they are pending on this consumer now).
    const handles = fresh.map((e) => handleOf(stream, e.id));
    for (const h of handles) f.claiming.add(h);
    try {
      const good = await this.triage(stream, fresh);
      if (good.length === 0) return;
      const pipe = this.cmd.pipeline();
      for (const d of good) pipe.call("XPENDING", stream, WORKERS_GROUP, d.entryId, d.entryId, "1");
      const replies = (await pipe.exec()) ?? [];
      for (let i = 0; i < good.length; i++) {
        const d = good[i] as Delivery;
        const handle = handleOf(stream, d.entryId);
        const [err, pending] = replies[i] ?? [null, null];
        if (err) throw err;
        f.claiming.delete(handle);
        const deliveries = parseDeliveries(pending);
        // No longer pending: someone finished it meanwhile.
        if (deliveries === null) continue;
        if (isStalled(deliveries, d.env.maxStalled)) {
          const message = stalledMessage(deliveries, d.env.maxStalled, this.lease);
          // Held like any job whose final report is on its way: renewed, waited for by close().
          this.unwrittenFinals.set(handle, d);
          void this.report(d, encodeOutcome({ kind: "failed", message, retryable: false, cause: "stalled" }), true, undefined).then((ok) => {
            this.unwrittenFinals.delete(handle);
            if (ok) this.emit("stalled", d.env.id, message);
          });
        } else {
          f.offer(d);
        }
      }
    } finally {
      for (const h of handles) f.claiming.delete(h);
    }
  }

  /**
   * @internal Removes consumers of the served queues' lane groups that hold no
   * pending job and have been idle for more than `idleMs` (every worker process
   * that started under a fresh name left one behind in each lane it read). Returns
   * how many were removed.
   */
  async removeIdleConsumers(idleMs: number): Promise<number> {
    let removed = 0;
    for (const f of this.fetchers) {
      for (const stream of f.lanes) {
        let reply: unknown;
        try {
          reply = await this.cmd.call("XINFO", "CONSUMERS", stream, WORKERS_GROUP);
        } catch (err) {
          // A lane never used has no stream (ERR no such key) or no group (NOGROUP).
          if (err instanceof ReplyError) continue;
          throw err;
        }
        for (const consumer of Array.isArray(reply) ? reply : []) {
          // [name, <name>, pending, <n>, idle, <ms>, ...]
          const info = new Map<string, unknown>();
          if (Array.isArray(consumer)) for (let i = 0; i + 1 < consumer.length; i += 2) info.set(String(consumer[i]), consumer[i + 1]);
          const name = info.get("name");
          if (typeof name !== "string" || name === this.consumer) continue;
          if (Number(info.get("pending")) !== 0 || !(Number(info.get("idle")) > idleMs)) continue;
          await this.cmd.call("XGROUP", "DELCONSUMER", stream, WORKERS_GROUP, name);
          removed++;
        }
      }
    }
    return removed;
  }

  /**
   * Writes this worker's entry in `P:workers` (heartbeat.lua, stamped with the Redis
   * clock), and reads the engine's lease again: an engine started after this worker,
   * or restarted with another `--lease`, is followed within one heartbeat.
   */
  private async heartbeat(): Promise<void> {
    if (this.options.leaseMs === undefined && this.renewTimer !== undefined) {
      const lease = await this.publishedLease();
      if (lease !== undefined && lease !== this.lease) {
        this.lease = lease;
        this.scheduleLeaseTimers();
      }
    }
    const info = {
      queues: this.queueConcurrency.map(([name, concurrency]) => ({ name, concurrency })),
      handlers: Object.keys(this.handlers),
      intervalMs: this.heartbeatMs,
      pid: process.pid,
      host: hostname(),
      lang: `node ${process.version}`,
      running: this.runningCount,
    };
    await (this.cmd as unknown as ScriptCommands).dagflowHeartbeat(
      this.keys.workers(), this.consumer, JSON.stringify(info), String(DEFAULT_HEARTBEAT_MS),
    );
  }

  /** @internal Starts a job on a free slot of `fetcher`. */
  startJob(fetcher: QueueFetcher, delivery: Delivery): void {
    const rj = new RunningJob(fetcher, delivery);
    const env = delivery.env;
    fetcher.running.set(handleOf(delivery.stream, delivery.entryId), rj);
    this.byJobId.set(env.id, rj);
    const handler = Object.prototype.hasOwnProperty.call(this.handlers, env.handler)
      ? this.handlers[env.handler]
      : this.processor;
    if (!handler) {
      const message = `no handler named '${env.handler}' on worker ${this.consumer} (queue '${env.queue}')`;
      this.finish(rj, { kind: "failed", message, retryable: false }, new FatalError(message));
      return;
    }
    const input = splitInput(env.input);
    if (typeof input === "string") {
      this.finish(rj, { kind: "failed", message: input, retryable: false }, new FatalError(input));
      return;
    }
    const job = new Job(env, input, () => rj.signal(), (value) => this.progress(rj, value));
    rj.job = job;
    // The consumer name goes with it: the engine keeps it in the attempt's history.
    void this.report(delivery, encodeOutcome({ kind: "started", worker: this.consumer }), false, rj);
    if (env.timeoutMs !== undefined) {
      const ms = env.timeoutMs;
      rj.timer = setTimeout(() => {
        if (rj.done) return;
        const message = `timed out after ${ms} ms`;
        const reason = new JobAbortedError("timeout", message);
        rj.abort(reason);
        this.finish(rj, { kind: "failed", message, retryable: true, cause: "timedOut" }, reason);
      }, ms);
    }
    this.emit("active", job);
    let result: unknown;
    try {
      result = this.spans ? this.spans.run(job, () => handler(job)) : handler(job);
    } catch (err) {
      this.settle(rj, err, false);
      return;
    }
    if (result !== null && typeof result === "object" && typeof (result as PromiseLike<unknown>).then === "function") {
      (result as PromiseLike<unknown>).then(
        (value) => this.settle(rj, value, true),
        (err) => this.settle(rj, err, false),
      );
    } else {
      this.settle(rj, result, true);
    }
  }

  /** A handler returned or threw. */
  private settle(rj: RunningJob, value: unknown, ok: boolean): void {
    if (rj.done) return;
    if (ok) {
      let json: string;
      try {
        json = encodeOutcome({ kind: "completed", result: value });
      } catch (err) {
        const message = `result is not JSON-serializable: ${messageOf(err)}`;
        this.finish(rj, { kind: "failed", message, retryable: false }, new FatalError(message));
        return;
      }
      this.finishEncoded(rj, json, () => this.emit("completed", rj.job as Job, value));
      return;
    }
    const error = asError(value);
    this.finish(rj, { kind: "failed", message: messageOf(value), retryable: isRetryable(value) }, error);
  }

  /** Ends a job with a failure. */
  private finish(rj: RunningJob, outcome: Extract<Outcome, { kind: "failed" }>, error: Error): void {
    this.finishEncoded(rj, encodeOutcome(outcome), () => this.emit("failed", rj.job, error));
  }

  /**
   * Ends a job: frees its slot at once and writes its final report (retried until it
   * is in Redis); `after` emits the event once it is.
   */
  private finishEncoded(rj: RunningJob, outcomeJson: string, after: () => void): void {
    if (rj.done) return;
    rj.done = true;
    clearTimeout(rj.timer);
    const { fetcher, delivery } = rj;
    const handle = handleOf(delivery.stream, delivery.entryId);
    fetcher.running.delete(handle);
    if (this.byJobId.get(delivery.env.id) === rj) this.byJobId.delete(delivery.env.id);
    this.unwrittenFinals.set(handle, delivery);
    void this.report(delivery, outcomeJson, true, rj).then((ok) => {
      this.unwrittenFinals.delete(handle);
      if (ok) after();
    });
    fetcher.slotFreed();
  }

  /** A job's progress. */
  private progress(rj: RunningJob, value: unknown): Promise<void> {
    if (rj.done) return Promise.resolve();
    let json: string;
    try {
      json = encodeOutcome({ kind: "progress", progress: value });
    } catch (err) {
      return Promise.reject(new TypeError(`progress is not JSON-serializable: ${messageOf(err)}`));
    }
    if (rj.job) this.emit("progress", rj.job, value);
    return this.report(rj.delivery, json, false, rj).then(() => undefined);
  }

  /** A message on `P:cancel`: stops the job if it runs here and reports it cancelled. */
  private cancel(jobId: string): void {
    const rj = this.byJobId.get(jobId);
    if (!rj || rj.done) return;
    const reason = new JobAbortedError("cancelled", "cancelled");
    rj.abort(reason);
    this.finish(rj, { kind: "failed", message: "cancelled", retryable: false }, reason);
  }

  /** Gives up a job at the close deadline: its signal fires, nothing is reported. */
  private abandon(rj: RunningJob): void {
    if (rj.done) return;
    rj.done = true;
    rj.abandoned = true;
    clearTimeout(rj.timer);
    this.byJobId.delete(rj.delivery.env.id);
    rj.abort(new JobAbortedError("closing", "the worker closed before the job finished; it will run again"));
  }

  /**
   * Writes one report with `report.lua`, retrying with backoff until it is in Redis.
   * Resolves `true` once written, `false` when retrying stopped: the worker was
   * closed past its deadline, the job was abandoned, or (for a started or progress
   * record) a later report of the job was issued since, which supersedes it.
   *
   * Reports are sent at once, not after the previous one of their job is confirmed:
   * one connection keeps them in order (ioredis resends unanswered commands in order
   * after a reconnect), and a job's started and final reports share one round trip.
   */
  private async report(delivery: Delivery, outcomeJson: string, final: boolean, rj: RunningJob | undefined): Promise<boolean> {
    const frame = rj ? (rj.frame ??= this.frameOf(delivery)) : this.frameOf(delivery);
    const sink = this.reports as ReportSink;
    const issued = rj ? ++rj.reportsIssued : 0;
    for (let failures = 0; ; failures++) {
      if (this.hardStopped || rj?.abandoned) return false;
      if (!final && rj && (rj.finalWritten || rj.reportsIssued !== issued)) return false;
      try {
        await sink.sendReport(frame, final, outcomeJson);
        if (final && rj) rj.finalWritten = true;
        return true;
      } catch (err) {
        if (this.hardStopped) return false;
        if (messageOf(err).startsWith("NOSCRIPT")) {
          // Redis forgot the script (SCRIPT FLUSH): load it and send again at once.
          await sink.send(["SCRIPT", "LOAD", this.reportLua]).catch(() => undefined);
          if (failures < 3) continue;
        }
        if (failures === 0) this.emitError(new Error(`reporting job ${delivery.env.id} failed, retrying: ${messageOf(err)}`));
        await sleep(backoff(failures));
      }
    }
  }

  /** The pre-encoded report call of a delivery. */
  private frameOf(d: Delivery): ReportFrame {
    return new ReportFrame(this.reportSha, this.keys, d.stream, d.entryId, d.env);
  }

  /**
   * @internal Emits `error` when someone listens; otherwise writes to stderr, since an
   * `error` event without a listener would crash the process over a condition the
   * worker recovers from by itself.
   */
  emitError(err: Error): void {
    if (this.listenerCount("error") > 0) this.emit("error", err);
    else console.error(`[dagflow worker ${this.consumer}] ${err.message}`);
  }
}

/** The scripts defined on the shared connection. */
interface ScriptCommands {
  dagflowHeartbeat(...args: string[]): Promise<number>;
}

/** `take.lua`, defined on each queue's reading connection. */
interface TakeCommand {
  dagflowTake(...args: string[]): Promise<unknown>;
}
