/**
 * The Redis protocol of docs/PROTOCOL.md as data: key names, group names, the job
 * envelope and the completion record. Pure functions only, no I/O, so that every
 * rule here is unit-tested without a Redis.
 *
 * @module
 */

import { encodeBulk } from "./resp.js";

/** Consumer group of every queue stream. */
export const WORKERS_GROUP = "workers";
/** Consumer group of the completions stream (the engine's). */
export const ENGINE_GROUP = "engine";
/** The envelope version this worker reads; others are refused (removed and logged). */
export const ENVELOPE_VERSION = 1;
/** The completion record version this worker writes. */
export const COMPLETION_VERSION = "1";
/** Name of the one field of a queue-stream entry, holding the envelope JSON. */
export const ENVELOPE_FIELD = "envelope";
/** Key prefix of a deployment that configures none. */
export const DEFAULT_PREFIX = "dagflow";
/** Job lease when `P:config` does not name one (the engine's default). */
export const DEFAULT_LEASE_MS = 30_000;
/** Heartbeat interval assumed for entries of `P:workers` that carry no `intervalMs`. */
export const DEFAULT_HEARTBEAT_MS = 5_000;

/**
 * Queue names the engine accepts (`spec.rs`): ASCII letters, digits, `-`, `_`, `.`.
 * Checked here too so that a typo fails at construction instead of serving a queue
 * no flow can name.
 */
const QUEUE_NAME = /^[A-Za-z0-9_.-]+$/;

/** Whether `name` is a queue name the engine accepts. */
export function isValidQueueName(name: string): boolean {
  return QUEUE_NAME.test(name) && name.length <= 256;
}

/** The highest priority (0 is the lowest). */
export const MAX_PRIORITY = 9;
/** The priority of an envelope that carries none (written before priorities existed). */
export const DEFAULT_PRIORITY = 5;
/** Lane streams per queue: two per priority. */
export const LANES = 2 * (MAX_PRIORITY + 1);

/**
 * The lane index of a job (its lane's position in the order `take.lua` serves them):
 * 0 is priority 9 of flows that have started, 1 priority 9 of new flows, ..., 19
 * priority 0 of new flows.
 */
export function laneIndex(priority: number, fresh: boolean): number {
  return 2 * (MAX_PRIORITY - priority) + (fresh ? 1 : 0);
}

/** Every Redis key name of one deployment, built in one place. */
export class Keys {
  /** @param prefix the deployment's prefix (`P`), the engine's `--prefix` */
  constructor(readonly prefix: string = DEFAULT_PREFIX) {
    if (prefix.length === 0) throw new TypeError("prefix must not be empty");
  }
  /**
   * One lane stream of a queue: `P:q:{queue}:{priority}` holds the ready and running
   * jobs of flows that have started, `P:q:{queue}:{priority}:new` the first jobs of
   * flows that have not.
   */
  lane(queue: string, priority: number, fresh: boolean): string {
    return `${this.prefix}:q:${queue}:${priority}${fresh ? ":new" : ""}`;
  }
  /**
   * The 20 lane streams of a queue in the order they are served (index = lane index):
   * `P:q:{queue}:9`, `P:q:{queue}:9:new`, `P:q:{queue}:8`, ..., `P:q:{queue}:0:new`.
   * These are `take.lua`'s first 20 keys.
   */
  lanes(queue: string): string[] {
    const out: string[] = [];
    for (let i = 0; i < LANES; i++) out.push(this.lane(queue, MAX_PRIORITY - Math.floor(i / 2), i % 2 === 1));
    return out;
  }
  /** `P:q:{queue}:takes`: how many jobs the queue handed out (`take.lua`'s share turns). */
  takes(queue: string): string {
    return `${this.prefix}:q:${queue}:takes`;
  }
  /** `P:q:{queue}:delayed`: retries waiting out their backoff. */
  delayed(queue: string): string {
    return `${this.prefix}:q:${queue}:delayed`;
  }
  /** `P:flow:{flowId}:jobs`: per-job state of one flow. */
  flowJobs(flowId: string): string {
    return `${this.prefix}:flow:${flowId}:jobs`;
  }
  /** `P:completions`: outcome records read by the engine. */
  completions(): string {
    return `${this.prefix}:completions`;
  }
  /** `P:cancel`: pub/sub channel of cancelled job ids. */
  cancelChannel(): string {
    return `${this.prefix}:cancel`;
  }
  /** `P:workers`: heartbeats. */
  workers(): string {
    return `${this.prefix}:workers`;
  }
  /** `P:config`: settings the engine publishes (`leaseMs`, `maxStalled`). */
  config(): string {
    return `${this.prefix}:config`;
  }
}

/** A job as it travels through Redis (envelope version 1). */
export interface Envelope {
  /** Format version, 1. */
  v: number;
  /** `{flowId}:{node}:{attempt}`: the idempotency key of this run. */
  id: string;
  /** The flow. */
  flowId: string;
  /** The node's name within the flow. */
  node: string;
  /** Which attempt, from 1. */
  attempt: number;
  /** The handler to run. */
  handler: string;
  /** The queue it was put on. */
  queue: string;
  /**
   * 0 (lowest) to 9 (highest): which lane of its queue the job waited in. Envelopes
   * written before priorities have none; {@link parseEnvelope} reads them as 5.
   */
  priority: number;
  /** `{"data": ..., "parents": {...}}` (a map element also `"item"` and `"index"`), as the engine built it. */
  input: unknown;
  /** Time limit of the handler, if any. */
  timeoutMs?: number;
  /** How often the job may be reclaimed from a dead worker before it fails as stalled. */
  maxStalled: number;
  /** When the engine enqueued it (ms since the epoch). */
  enqueuedAtMs: number;
  /**
   * W3C trace context the handler's span continues: the attempt's span when the
   * engine exports traces, the flow creator's context otherwise; absent when there
   * is neither.
   */
  traceparent?: string;
}

/** Thrown by {@link parseEnvelope}; the message says what is wrong, for the log. */
export class MalformedEnvelope extends Error {
  override name = "MalformedEnvelope";
}

function isNonNegativeInteger(value: unknown): value is number {
  return typeof value === "number" && Number.isInteger(value) && value >= 0;
}

/**
 * Decodes and checks an envelope. Required are the fields the reference reader
 * (`envelope.rs`) requires, so an envelope is malformed for every implementation
 * alike; unknown fields are ignored, as the protocol says.
 */
export function parseEnvelope(json: string | null | undefined): Envelope {
  if (json === null || json === undefined) throw new MalformedEnvelope(`no ${ENVELOPE_FIELD} field`);
  let value: unknown;
  try {
    value = JSON.parse(json);
  } catch (e) {
    throw new MalformedEnvelope(`envelope is not JSON: ${(e as Error).message}`);
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    throw new MalformedEnvelope("envelope is not a JSON object");
  }
  const env = value as Record<string, unknown>;
  if (env.v !== ENVELOPE_VERSION) {
    throw new MalformedEnvelope(`unsupported version ${JSON.stringify(env.v)} (this reader knows ${ENVELOPE_VERSION})`);
  }
  for (const field of ["id", "flowId", "node", "handler", "queue"] as const) {
    if (typeof env[field] !== "string") throw new MalformedEnvelope(`field ${field} is not a string`);
  }
  if (!isNonNegativeInteger(env.attempt) || env.attempt < 1) {
    throw new MalformedEnvelope("field attempt is not an integer >= 1");
  }
  if (!isNonNegativeInteger(env.maxStalled)) throw new MalformedEnvelope("field maxStalled is not an integer >= 0");
  if (!isNonNegativeInteger(env.enqueuedAtMs)) throw new MalformedEnvelope("field enqueuedAtMs is not an integer >= 0");
  // The reference reader takes any u8 here (the engine writes 0 to 9) and a missing
  // field as the default; null is not a u8 there, so it is refused here too.
  if (!("priority" in env)) env.priority = DEFAULT_PRIORITY;
  else if (!isNonNegativeInteger(env.priority) || env.priority > 255) {
    throw new MalformedEnvelope("field priority is not an integer from 0 to 255");
  }
  if (!("input" in env)) throw new MalformedEnvelope("field input is missing");
  if (env.timeoutMs !== undefined && env.timeoutMs !== null && !isNonNegativeInteger(env.timeoutMs)) {
    throw new MalformedEnvelope("field timeoutMs is not an integer >= 0");
  }
  if (env.timeoutMs === null) delete env.timeoutMs;
  if (env.traceparent === null) delete env.traceparent;
  else if (env.traceparent !== undefined && typeof env.traceparent !== "string") {
    throw new MalformedEnvelope("field traceparent is not a string");
  }
  return env as unknown as Envelope;
}

/** The job field `{node}:{attempt}` in its flow's jobs hash. */
export function jobField(env: Pick<Envelope, "node" | "attempt">): string {
  return `${env.node}:${env.attempt}`;
}

/** The input of a job, split into what handlers get. */
export interface JobInput {
  /** The node's own data; `null` for a node without data. */
  data: unknown;
  /** Every parent's result by parent name (`{"error": ...}` for a failed parent with `continueOnFailure`). */
  parents: Record<string, unknown>;
  /**
   * On an element of a map node: its element of the mapped array (`null` is a
   * valid element). The key is absent on every other job, so test with `"item" in`.
   */
  item?: unknown;
  /** On an element of a map node: its position in the array, from 0. */
  index?: number;
}

/** Largest element index the engine writes (a `u32`). */
const MAX_INDEX = 0xffff_ffff;

/**
 * Splits an envelope's input. Returns a string (the failure message) when the input
 * is not an object, as the Rust worker does: such a job is failed, not retried.
 *
 * A map element's input also has `item` and `index` (PROTOCOL.md, "Map elements"):
 * an input with an `item` key (even `null`) is an element and must have an integer
 * `index` >= 0; an input without `item` is not one and its `index`, if any, is ignored.
 */
export function splitInput(input: unknown): JobInput | string {
  if (typeof input !== "object" || input === null || Array.isArray(input)) {
    return "job input is not an object with data and parents";
  }
  const obj = input as { data?: unknown; parents?: unknown; item?: unknown; index?: unknown };
  const parents = obj.parents ?? {};
  if (typeof parents !== "object" || parents === null || Array.isArray(parents)) {
    return "job input's parents is not an object";
  }
  const out: JobInput = { data: obj.data ?? null, parents: parents as Record<string, unknown> };
  if ("item" in obj) {
    const index = obj.index;
    if (!isNonNegativeInteger(index) || index > MAX_INDEX) {
      return "job input has an item but its index is not an integer >= 0";
    }
    out.item = obj.item;
    out.index = index;
  }
  return out;
}

/** What a worker reports about a job (the `outcome` JSON of a completion record). */
export type Outcome =
  | { kind: "completed"; result: unknown }
  /** `cause`: why, when more than the handler's error; the engine shows it as the attempt's outcome. */
  | { kind: "failed"; message: string; retryable: boolean; cause?: "stalled" | "timedOut" }
  | { kind: "progress"; progress: unknown }
  /** `worker`: this worker's consumer name, shown in the node's attempt history. */
  | { kind: "started"; worker?: string };

/** Whether an outcome ends the job (acknowledges and deletes its entry). */
export function isFinal(outcome: Outcome): boolean {
  return outcome.kind === "completed" || outcome.kind === "failed";
}

/**
 * JSON of a value a handler produced; `undefined` becomes `null` (the record's
 * missing result is `null` anyway). Throws on values JSON cannot hold (BigInt,
 * cycles), which the caller turns into a failure.
 */
export function toJson(value: unknown): string {
  const text = JSON.stringify(value === undefined ? null : value);
  // JSON.stringify returns undefined for a function or a symbol.
  return text === undefined ? "null" : text;
}

/** The outcome JSON; throws if a result or progress value cannot be encoded. */
export function encodeOutcome(outcome: Outcome): string {
  switch (outcome.kind) {
    case "completed":
      return `{"kind":"completed","result":${toJson(outcome.result)}}`;
    case "progress":
      return `{"kind":"progress","progress":${toJson(outcome.progress)}}`;
    case "failed":
      return JSON.stringify(
        outcome.cause === undefined
          ? { kind: "failed", message: outcome.message, retryable: outcome.retryable }
          : { kind: "failed", message: outcome.message, retryable: outcome.retryable, cause: outcome.cause },
      );
    case "started":
      return outcome.worker === undefined
        ? '{"kind":"started"}'
        : JSON.stringify({ kind: "started", worker: outcome.worker });
  }
}

/**
 * The `KEYS` and `ARGV` of one `report.lua` call for a job read from `stream` as
 * entry `entryId`: the completion record (v, flow, node, attempt, job, outcome) and,
 * for a final outcome, the acknowledgement, deletion and `done` mark of the entry.
 */
export function reportArgs(
  keys: Keys,
  stream: string,
  entryId: string,
  env: Pick<Envelope, "id" | "flowId" | "node" | "attempt">,
  final: boolean,
  outcomeJson: string,
): { keys: [string, string, string]; argv: string[] } {
  return {
    keys: [keys.completions(), stream, keys.flowJobs(env.flowId)],
    argv: [
      WORKERS_GROUP,
      ENGINE_GROUP,
      entryId,
      jobField(env),
      final ? "1" : "0",
      "v",
      COMPLETION_VERSION,
      "flow",
      env.flowId,
      "node",
      env.node,
      "attempt",
      String(env.attempt),
      "job",
      env.id,
      "outcome",
      outcomeJson,
    ],
  };
}

/**
 * Whether a delivery count read with XPENDING means the job was claimed more often
 * than its `maxStalled` allows: the first delivery is the read, every later one a
 * claim from a worker that stopped renewing it.
 */
export function isStalled(deliveries: number, maxStalled: number): boolean {
  return deliveries > maxStalled + 1;
}

/** The failure message of a stalled job. */
export function stalledMessage(deliveries: number, maxStalled: number, leaseMs: number): string {
  return (
    `job stalled: claimed ${deliveries - 1} times from workers that stopped responding, ` +
    `more than maxStalled ${maxStalled} allows (lease ${leaseMs} ms)`
  );
}

/**
 * Whether a Redis error means the consumer group (or its stream) is missing: a lane
 * never used yet, or Redis lost its data. Either way the lane holds nothing pending
 * for this consumer. `NOGROUP` on most commands (a missing key included); a blocked
 * XREADGROUP whose stream is removed by FLUSHALL fails with `UNBLOCKED the stream key
 * no longer exists` on 7.0.
 */
export function isGroupLost(err: unknown): boolean {
  const message = err instanceof Error ? err.message : String(err);
  return message.startsWith("NOGROUP") || message.startsWith("UNBLOCKED");
}

/** One entry of an XREADGROUP / XAUTOCLAIM reply: fields are `null` for an entry deleted while pending. */
export interface RawEntry {
  id: string;
  fields: string[] | null;
}

/** The value of `field` among an entry's field/value pairs. */
export function fieldOf(fields: string[] | null, field: string): string | undefined {
  if (!fields) return undefined;
  for (let i = 0; i + 1 < fields.length; i += 2) if (fields[i] === field) return fields[i + 1];
  return undefined;
}

/** The entries of an XREADGROUP reply (`null` on timeout) per stream key. */
export function parseReadReply(reply: unknown): Map<string, RawEntry[]> {
  const out = new Map<string, RawEntry[]>();
  if (!Array.isArray(reply)) return out;
  for (const stream of reply) {
    if (!Array.isArray(stream) || stream.length < 2) continue;
    out.set(String(stream[0]), parseEntries(stream[1]));
  }
  return out;
}

/** A list of `[id, [field, value, ...] | null]` entries. */
export function parseEntries(list: unknown): RawEntry[] {
  if (!Array.isArray(list)) return [];
  const entries: RawEntry[] = [];
  for (const item of list) {
    if (!Array.isArray(item) || item.length < 1) continue;
    const fields = Array.isArray(item[1]) ? (item[1] as unknown[]).map(String) : null;
    entries.push({ id: String(item[0]), fields });
  }
  return entries;
}

/**
 * An XAUTOCLAIM reply: `[next cursor, claimed entries]` and, on Redis 7, a third
 * element with the ids of entries deleted while pending, which Redis already removed
 * from the pending list (nothing to do about them).
 */
export function parseAutoclaimReply(reply: unknown): { next: string; entries: RawEntry[] } {
  if (!Array.isArray(reply) || reply.length < 2) throw new Error("unexpected XAUTOCLAIM reply");
  return { next: String(reply[0]), entries: parseEntries(reply[1]) };
}

/** The delivery count in an `XPENDING key group id id 1` reply (`[[id, consumer, idle, deliveries]]`); `null` when no longer pending. */
export function parseDeliveries(reply: unknown): number | null {
  if (!Array.isArray(reply) || reply.length === 0) return null;
  const row = reply[0];
  if (!Array.isArray(row) || row.length < 4) return null;
  return Number(row[3]);
}

/** The ids in an `XPENDING key group - + count consumer` reply (`[[id, consumer, idle, deliveries], ...]`). */
export function parsePendingIds(reply: unknown): string[] {
  if (!Array.isArray(reply)) return [];
  return reply.filter((row): row is unknown[] => Array.isArray(row) && row.length > 0).map((row) => String(row[0]));
}

/** One job `take.lua` handed to this consumer. */
export interface TakenEntry {
  /** Lane index (0..19): the position of its lane stream in `take.lua`'s keys. */
  lane: number;
  /** Its entry id. */
  id: string;
  /** The entry's `envelope` field; `null` when it has none (malformed). */
  envelope: string | null;
}

/**
 * A `take.lua` reply `[jobs, wait]`. `jobs` is flat triples (lane index, entry id,
 * envelope or nil), in the order to start them; `wait`, when nothing was taken,
 * holds one entry id per lane to block after with `XREAD`. Throws on a reply of
 * another shape: a worker built against another protocol version.
 */
export function parseTakeReply(reply: unknown): { jobs: TakenEntry[]; wait: string[] } {
  if (!Array.isArray(reply) || reply.length !== 2 || !Array.isArray(reply[0]) || !Array.isArray(reply[1])) {
    throw new Error("unexpected take.lua reply");
  }
  const flat = reply[0] as unknown[];
  const jobs: TakenEntry[] = [];
  for (let i = 0; i + 2 < flat.length; i += 3) {
    const lane = Number(flat[i]);
    if (!Number.isInteger(lane) || lane < 0 || lane >= LANES) throw new Error(`take.lua returned lane ${String(flat[i])}`);
    const envelope = flat[i + 2];
    jobs.push({ lane, id: String(flat[i + 1]), envelope: typeof envelope === "string" ? envelope : null });
  }
  const wait = (reply[1] as unknown[]).map(String);
  if (jobs.length === 0 && wait.length !== LANES) {
    throw new Error(`take.lua returned ${wait.length} wait ids for ${LANES} lanes`);
  }
  return { jobs, wait };
}

/**
 * The `report.lua` calls of one job, pre-encoded: everything but the final flag and
 * the outcome is the same for all reports of a job (started, progress, final), so it
 * is encoded once. `command` gives the same call as an argument list.
 */
export class ReportFrame {
  /** `EVALSHA sha 3 KEYS... workers engine entry field`, encoded. */
  private readonly head: string;
  /** `v 1 flow .. node .. attempt .. job .. outcome` (the record up to the outcome JSON), encoded. */
  private readonly middle: string;

  constructor(
    private readonly sha: string,
    private readonly keys: Keys,
    private readonly stream: string,
    private readonly entryId: string,
    private readonly env: Pick<Envelope, "id" | "flowId" | "node" | "attempt">,
  ) {
    // Built by concatenation, not from reportArgs' arrays: this runs for every job.
    const attempt = String(env.attempt);
    this.head =
      "*23\r\n$7\r\nEVALSHA\r\n" +
      encodeBulk(sha) +
      "$1\r\n3\r\n" +
      encodeBulk(keys.completions()) +
      encodeBulk(stream) +
      encodeBulk(keys.flowJobs(env.flowId)) +
      "$7\r\nworkers\r\n$6\r\nengine\r\n" +
      encodeBulk(entryId) +
      encodeBulk(`${env.node}:${attempt}`);
    this.middle =
      "$1\r\nv\r\n" +
      encodeBulk(COMPLETION_VERSION) +
      "$4\r\nflow\r\n" +
      encodeBulk(env.flowId) +
      "$4\r\nnode\r\n" +
      encodeBulk(env.node) +
      "$7\r\nattempt\r\n" +
      encodeBulk(attempt) +
      "$3\r\njob\r\n" +
      encodeBulk(env.id) +
      "$7\r\noutcome\r\n";
  }

  /** The whole call as RESP. */
  encode(final: boolean, outcomeJson: string): string {
    return this.head + (final ? "$1\r\n1\r\n" : "$1\r\n0\r\n") + this.middle + encodeBulk(outcomeJson);
  }

  /** The whole call as arguments (`EVALSHA`, sha, `3`, KEYS, ARGV). */
  command(final: boolean, outcomeJson: string): string[] {
    const call = reportArgs(this.keys, this.stream, this.entryId, this.env, final, outcomeJson);
    return ["EVALSHA", this.sha, "3", ...call.keys, ...call.argv];
  }
}
