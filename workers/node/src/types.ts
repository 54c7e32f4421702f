/**
 * The JSON shapes of the dagflow API: the flow spec a client submits
 * (`actors/src/spec.rs`) and the views and events it gets back
 * (`actors/src/view.rs`, `src/api/models.rs`). Optional fields are absent, not
 * `null`, when they have no value.
 *
 * @module
 */

/** How the delay before a retry grows. */
export interface Backoff {
  /** `fixed`: the same delay every time; `exponential`: `delayMs * 2^(n-1)` before the n-th retry. */
  type: "fixed" | "exponential";
  /** Base delay in ms. */
  delayMs: number;
}

/** Retry, timeout and failure behaviour of one node. */
export interface NodeOpts {
  /** Total tries, the first included (1 to 1000). Default 1. */
  attempts?: number;
  /** Delay between tries; none: retry at once. */
  backoff?: Backoff;
  /** Time limit of one try in ms; a try past it fails (retryable) and its `job.signal` fires. */
  timeoutMs?: number;
  /** When the node fails for good its children still run, with `{"error": ...}` in its slot. */
  continueOnFailure?: boolean;
  /** How often the job may be reclaimed from a worker that died before it fails as stalled (engine default 3). */
  maxStalled?: number;
}

/** What a node's parents' outcomes must be for it to run. */
export type TriggerRule = "allSuccess" | "allDone" | "oneSuccess" | "noneFailed" | "allFailed";

/**
 * A dynamic fan-out: the node runs once per element of an array found in a parent's
 * result. Each element is a job of its own, named `{node}[{index}]` (e.g.
 * `resize[17]`), with the node's handler, queue and opts; its handler sees the
 * element as `job.item` and its position as `job.index`. The node completes with the
 * array of the elements' results, in order.
 */
export interface MapSpec {
  /** The parent whose result holds the array (must be among the node's parents). */
  from: string;
  /** A JSON Pointer (RFC 6901) into that result; `""` (the default) is the whole result. */
  path?: string;
  /** Most elements; more fail the node. Default 10000 (1 to 100000). */
  maxItems?: number;
  /** Most elements queued or running at once; unlimited by default. */
  maxParallel?: number;
}

/**
 * A node that needs no worker (it never reaches a queue): it waits for a signal,
 * for a duration or until a time. Exactly one of `signal`, `forMs`, `until`.
 */
export interface WaitSpec {
  /** Completes when `POST /flows/{id}/nodes/{name}/signal` ({@link Client.signal}) delivers a payload, which becomes its result. */
  signal?: string;
  /** With `signal`: fail (or take `default`) after this many ms. */
  timeoutMs?: number;
  /** With `signal` and `timeoutMs`: the result at the timeout instead of failing. */
  default?: unknown;
  /** A durable timer: completes this many ms after the node became ready. */
  forMs?: number;
  /** A durable timer: completes at this time, ms since the epoch. */
  until?: number;
}

/** A concurrency key: at most `limit` jobs (or flows) with the same key at once. */
export interface ConcurrencySpec {
  /** CEL giving the key, e.g. `data.tenant` (a flow's key: over `name` and `data`). */
  key: string;
  /** How many at once, at least 1. */
  limit: number;
  /** At the limit: wait (`queue`, default), cancel the new one, or cancel the oldest running one. */
  strategy?: "queue" | "cancelNewest" | "cancelInProgress";
}

/** A rate limit: at most `limit` jobs with the same key start per `perMs`, evenly spaced. */
export interface RateLimitSpec {
  /** CEL giving the key, e.g. `'payments-api'`. */
  key: string;
  /** Starts per period, at least 1. */
  limit: number;
  /** The period in ms. */
  perMs: number;
}

/** One node (job) of a flow spec. */
export interface NodeSpec {
  /** Unique within the flow. */
  name: string;
  /** Nodes whose results this node needs; it runs once all of them completed. */
  parents?: string[];
  /** Nodes that need this node's result (BullMQ's direction); must agree with their `parents`. */
  children?: string[];
  /** The handler that runs it; defaults to `name`. */
  handler?: string;
  /** The queue it goes to; defaults to `default`. ASCII letters, digits, `-`, `_`, `.`. */
  queue?: string;
  /** The node's own input, `job.data`. */
  data?: unknown;
  /** Retries, timeout, failure behaviour. */
  opts?: NodeOpts;
  /** Same as `opts.continueOnFailure`. */
  continueOnFailure?: boolean;
  /**
   * A CEL condition over `parents` (results by parent name) and `data`, e.g.
   * `parents.score.value > 10`; false skips the node (its `reason` says why).
   */
  when?: string;
  /** What the parents' outcomes must be for it to run; default `allSuccess`. */
  trigger?: TriggerRule;
  /** Run once per element of an array in a parent's result. */
  map?: MapSpec;
  /** Wait for a signal or a time instead of running a job. */
  wait?: WaitSpec;
  /**
   * 0 (lowest) to 9 (highest): a queue hands out jobs of higher priority first (each
   * priority still gets a share). Overrides the flow's `opts.priority`; default 5.
   */
  priority?: number;
  /** At most `limit` jobs of the same key run at once, across every worker. */
  concurrency?: ConcurrencySpec;
  /** At most `limit` jobs of the same key start per `perMs`; the others wait. */
  rateLimit?: RateLimitSpec;
}

/** Flow-wide behaviour. */
export interface FlowOpts {
  /**
   * `continue` (default): independent branches finish, the failed node's descendants
   * are skipped, the flow ends `failed`. `failFast`: the rest is cancelled at the
   * first permanent failure.
   */
  onFailure?: "continue" | "failFast";
  /** The priority (0 to 9) of every node that sets none; default 5. */
  priority?: number;
  /** At most `limit` flows of the same key run at once (key: CEL over `name` and `data`). */
  concurrency?: ConcurrencySpec;
  /**
   * How long the flow is kept once it ended, whatever its outcome (`"90s"`, `"7d"`,
   * `"forever"`); overrides the server's `--retain-completed` / `--retain-failed`.
   */
  retention?: string;
}

/** A flow as `POST /flows` takes it. */
export interface FlowSpec {
  /** For people; need not be unique. */
  name?: string;
  /** The jobs. */
  nodes: NodeSpec[];
  /** Flow-wide behaviour. */
  opts?: FlowOpts;
}

/** Where a flow is. */
export type FlowStatus = "running" | "completed" | "failed" | "cancelled";

/** Where a node is. */
export type NodeStatus =
  | "pending"
  | "queued"
  /** A worker runs it; on a map node: its elements run. */
  | "active"
  /** A wait node waits for its signal or its time. */
  | "waiting"
  | "completed"
  | "failed"
  /** Will not run: its trigger rule or its condition ruled it out (see `reason`). */
  | "skipped"
  | "cancelled";

/** The statuses a flow ends in. */
export const TERMINAL_FLOW_STATUSES: readonly FlowStatus[] = ["completed", "failed", "cancelled"];

/** What a wait node waits for (its deadline, if any, is the node's `dueAt`). */
export interface WaitView {
  kind: "signal" | "timer";
  /** The signal's name, on a signal wait. */
  signal?: string;
  /** A signal wait's timeout, ms. */
  timeoutMs?: number;
}

/** A map node's source and how far its elements are. */
export interface MapView {
  /** The parent whose result holds the array. */
  from: string;
  /** The JSON Pointer into that result. */
  path: string;
  /** Elements in all, once the map expanded. */
  total?: number;
  /** Elements ended. */
  done: number;
  /** Elements queued or running. */
  running: number;
  /** Elements failed for good. */
  failed: number;
}

/** One node of a flow view. */
export interface NodeView {
  name: string;
  status: NodeStatus;
  /** Current attempt; 0 before the first. */
  attempt: number;
  queue: string;
  handler: string;
  parents: string[];
  children: string[];
  /** The current attempt's job id `{flowId}:{node}:{attempt}`. */
  jobId?: string;
  /** When the current attempt was queued (ms since the epoch). */
  queuedAt?: number;
  /** When a delayed retry is due (ms). */
  dueAt?: number;
  /** When a worker started it (ms). */
  startedAt?: number;
  /** When it ended (ms). */
  finishedAt?: number;
  /** The last progress reported (any JSON). */
  progress?: unknown;
  /** The last error (also while a retry waits). */
  error?: string;
  /** The handler's result, once completed. */
  result?: unknown;
  /**
   * `{data, parents}` its handler gets (a map element also `item` and `index`): only
   * in `GET /flows/{id}/nodes/{name}`, once every parent is done.
   */
  input?: { data: unknown; parents: Record<string, unknown>; item?: unknown; index?: number };
  /** Why it was skipped (its trigger rule or its condition) or cancelled (by its concurrency key). */
  reason?: string;
  /** Its trigger rule, when not `allSuccess`. */
  trigger?: TriggerRule;
  /** Its condition, as written. */
  when?: string;
  /** On a wait node: what it waits for. */
  wait?: WaitView;
  /** On a map node: its source and its elements' counts. */
  map?: MapView;
  /** On a map element (`{map}[{index}]`): its map node. */
  mapOf?: string;
  /** On a map element: its position in the array. */
  index?: number;
  /** 0 (lowest) to 9 (highest). */
  priority?: number;
  /** Its concurrency key: the spec, and `value`, the key its job runs under. */
  concurrency?: LimitView;
  /** Its rate limit, likewise. */
  rateLimit?: LimitView;
}

/** A node's concurrency key or rate limit as views show it. */
export interface LimitView {
  key: string;
  /** The evaluated key, once the node's job exists. */
  value?: string;
  limit: number;
  /** A concurrency key's strategy. */
  strategy?: "queue" | "cancelNewest" | "cancelInProgress";
  /** A rate limit's period. */
  perMs?: number;
}

/** A flow with every node (`GET /flows/{id}`, WebSocket snapshots). */
export interface FlowView {
  id: string;
  name: string;
  status: FlowStatus;
  /** Events so far; later events have a larger `seq`. */
  seq: number;
  createdAt: number;
  updatedAt: number;
  finishedAt?: number;
  /** Why the engine failed the flow, when it did (not a node's error). */
  error?: string;
  /** Every node, in spec order, then the elements of each map node (`{map}[{index}]`, with `mapOf` and `index`). */
  nodes: NodeView[];
}

/** A flow in a listing. */
export interface FlowSummary {
  id: string;
  name: string;
  status: FlowStatus;
  seq: number;
  createdAt: number;
  updatedAt: number;
  finishedAt?: number;
  nodesTotal: number;
  nodesDone: number;
}

/** One page of `GET /flows`. */
export interface FlowPage {
  /** Newest first. */
  flows: FlowSummary[];
  /** Pass as `cursor` for the next page; absent on the last page. */
  nextCursor?: string;
}

/** One state change of one flow. */
export interface FlowEvent {
  flowId: string;
  /** The node; absent for a change of the flow itself. */
  node?: string;
  /** The node's (or the flow's) new status; `progress` events keep the node's status. */
  status: string;
  /** The node's attempt; 0 for flow events. */
  attempt: number;
  /** Strictly increasing per flow, without gaps. */
  seq: number;
  /** Time of the change (ms). */
  ts: number;
  /** Progress, on progress events. */
  progress?: unknown;
  /** The error, on failures and retries. */
  error?: string;
  /** Why the node was skipped, on skip events. */
  reason?: string;
}

/** What `Client.watch` yields: the flow's snapshot, then its events. */
export type WatchMessage =
  | { type: "snapshot"; flow: FlowView }
  | ({ type: "flow:updated" } & FlowEvent)
  | { type: "lagged"; missed: number };

/** Every message the server sends on `/ws`. */
export type ServerMessage =
  | WatchMessage
  | { type: "subscribed"; flowId: string }
  | { type: "unsubscribed"; flowId: string }
  | { type: "error"; message: string; flowId?: string };

/** `GET /healthz` and `GET /readyz`. */
export interface Health {
  status: string;
  checks?: Record<string, string>;
}
