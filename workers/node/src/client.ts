/**
 * A small client of the dagflow REST and WebSocket API: submit a flow, read it,
 * wait for it, watch its events. Uses Node's global `fetch` and, for `/ws`, the
 * global `WebSocket` where Node has one, else the `ws` package.
 *
 * @module
 */

import { DagflowApiError } from "./errors.js";
import {
  TERMINAL_FLOW_STATUSES,
  type FlowPage,
  type FlowSpec,
  type FlowStatus,
  type FlowView,
  type Health,
  type NodeView,
  type ServerMessage,
  type WatchMessage,
} from "./types.js";

/** Settings of a {@link Client}. */
export interface ClientOptions {
  /** Where the server is, e.g. `http://127.0.0.1:7700`. */
  baseUrl: string;
  /** The server's API token (`--api-token`), if it has one. */
  token?: string;
  /** Time limit of one HTTP request in ms. Default 30000. */
  requestTimeoutMs?: number;
}

/** Options of {@link Client.submit}. */
export interface SubmitOptions {
  /** Submitting again with the same key returns the first flow's id instead of creating another. */
  idempotencyKey?: string;
}

/** Options of {@link Client.wait} and {@link Client.watch}. */
export interface WatchOptions {
  /** Stop waiting after this long (ms); `wait` then rejects with code `timeout`. */
  timeoutMs?: number;
  /** Stops the watch (the iterator ends) or the wait (it rejects). */
  signal?: AbortSignal;
}

/** Query of {@link Client.list}. */
export interface ListQuery {
  status?: FlowStatus;
  /** 1 to 1000. */
  limit?: number;
  /** `nextCursor` of the previous page. */
  cursor?: string;
}

/** The subset of the WHATWG WebSocket interface used here (both Node's and `ws` have it). */
interface MinimalWebSocket {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  addEventListener(type: "open" | "close" | "error" | "message", listener: (event: { data?: unknown; code?: number; reason?: string; message?: string }) => void): void;
}
type WebSocketCtor = new (url: string) => MinimalWebSocket;

let webSocketCtor: Promise<WebSocketCtor> | undefined;
/** Node's own WebSocket (Node 22+), else the `ws` package's. */
function loadWebSocket(): Promise<WebSocketCtor> {
  webSocketCtor ??= (async () => {
    const global = (globalThis as { WebSocket?: WebSocketCtor }).WebSocket;
    if (global) return global;
    const mod = await import("ws");
    return mod.WebSocket as unknown as WebSocketCtor;
  })();
  return webSocketCtor;
}

/** How many times `watch` reconnects a WebSocket that dropped before the flow ended, without a message in between. */
const WATCH_RECONNECTS = 5;

/**
 * The API client.
 *
 * ```ts
 * const client = new Client({ baseUrl: "http://127.0.0.1:7700" });
 * const id = await client.submit({ nodes: [{ name: "a", handler: "echo" }] });
 * const flow = await client.wait(id, { timeoutMs: 60_000 });
 * ```
 */
export class Client {
  private readonly baseUrl: string;
  private readonly token: string | undefined;
  private readonly requestTimeoutMs: number;

  constructor(options: ClientOptions) {
    let url: URL;
    try {
      url = new URL(options.baseUrl);
    } catch {
      throw new TypeError(`baseUrl '${options.baseUrl}' is not a URL`);
    }
    if (url.protocol !== "http:" && url.protocol !== "https:") {
      throw new TypeError(`baseUrl '${options.baseUrl}' is not an http(s) URL`);
    }
    this.baseUrl = url.toString().replace(/\/+$/, "");
    this.token = options.token;
    this.requestTimeoutMs = options.requestTimeoutMs ?? 30_000;
  }

  /** Validates and starts a flow; resolves to its id. An invalid flow rejects with status 422 and every problem in `details.problems`. */
  async submit(spec: FlowSpec, options: SubmitOptions = {}): Promise<string> {
    const headers: Record<string, string> = { "content-type": "application/json" };
    if (options.idempotencyKey !== undefined) headers["idempotency-key"] = options.idempotencyKey;
    const body = await this.request<{ flowId: string }>("POST", "/flows", JSON.stringify(spec), headers);
    return body.flowId;
  }

  /** The flow with every node. */
  get(flowId: string): Promise<FlowView> {
    return this.request("GET", `/flows/${encodeURIComponent(flowId)}`);
  }

  /** One node with its result or error, and its input once its parents are done. */
  node(flowId: string, name: string): Promise<NodeView> {
    return this.request("GET", `/flows/${encodeURIComponent(flowId)}/nodes/${encodeURIComponent(name)}`);
  }

  /** One page of flows, newest first. */
  list(query: ListQuery = {}): Promise<FlowPage> {
    const params = new URLSearchParams();
    if (query.status) params.set("status", query.status);
    if (query.limit !== undefined) params.set("limit", String(query.limit));
    if (query.cursor) params.set("cursor", query.cursor);
    const qs = params.toString();
    return this.request("GET", `/flows${qs ? `?${qs}` : ""}`);
  }

  /** Stops running jobs (their `signal` fires), cancels pending ones; the flow is kept. */
  cancel(flowId: string): Promise<FlowView> {
    return this.request("POST", `/flows/${encodeURIComponent(flowId)}/cancel`);
  }

  /** Runs failed, skipped and cancelled nodes again. */
  retry(flowId: string): Promise<FlowView> {
    return this.request("POST", `/flows/${encodeURIComponent(flowId)}/retry`);
  }

  /**
   * Delivers a signal to a wait node (`wait: {signal}`) that is `waiting`: `payload`
   * (any JSON value; `undefined` sends an empty body, which is `null`) becomes the
   * node's result and the flow goes on. Resolves with the node as it is now. Rejects
   * with status 409 when the node does not wait for a signal now (not a signal wait,
   * not waiting yet, already done, or the flow ended), 404 for an unknown flow or node.
   */
  signal(flowId: string, node: string, payload?: unknown): Promise<NodeView> {
    const path = `/flows/${encodeURIComponent(flowId)}/nodes/${encodeURIComponent(node)}/signal`;
    const body = payload === undefined ? undefined : JSON.stringify(payload);
    if (body === undefined) return this.request("POST", path);
    return this.request("POST", path, body, { "content-type": "application/json" });
  }

  /**
   * Re-runs one node and everything downstream of it with fresh attempts; the other
   * nodes keep their results. Resolves with the flow as it is now. Rejects with
   * status 409 when the node cannot be re-run now (it has not ended, the flow runs in
   * `failFast` mode, or it is a map element), 404 for an unknown flow or node.
   */
  rerun(flowId: string, node: string): Promise<FlowView> {
    return this.request("POST", `/flows/${encodeURIComponent(flowId)}/nodes/${encodeURIComponent(node)}/rerun`);
  }

  /** Removes the flow's jobs from Redis and its record from disk. */
  async delete(flowId: string): Promise<void> {
    await this.request("DELETE", `/flows/${encodeURIComponent(flowId)}`);
  }

  /** `GET /healthz`: the server is up. */
  health(): Promise<Health> {
    return this.request("GET", "/healthz");
  }

  /**
   * Resolves with the flow once it ended (completed, failed or cancelled), following
   * it over the WebSocket. Rejects with code `timeout` after `timeoutMs`.
   */
  async wait(flowId: string, options: WatchOptions = {}): Promise<FlowView> {
    const controller = new AbortController();
    const onAbort = (): void => controller.abort(options.signal?.reason);
    options.signal?.addEventListener("abort", onAbort, { once: true });
    let timer: NodeJS.Timeout | undefined;
    let timedOut = false;
    if (options.timeoutMs !== undefined) {
      timer = setTimeout(() => {
        timedOut = true;
        controller.abort();
      }, options.timeoutMs);
    }
    try {
      for await (const message of this.watch(flowId, { signal: controller.signal })) {
        if (message.type === "snapshot" && isTerminal(message.flow.status)) return message.flow;
        if (message.type === "flow:updated" && message.node === undefined && isTerminal(message.status)) {
          return await this.get(flowId);
        }
      }
      if (timedOut) {
        throw new DagflowApiError(0, "timeout", `flow ${flowId} did not end within ${options.timeoutMs} ms`);
      }
      throw new DagflowApiError(0, "aborted", `waiting for flow ${flowId} was aborted`);
    } finally {
      clearTimeout(timer);
      options.signal?.removeEventListener("abort", onAbort);
    }
  }

  /**
   * The flow's snapshot, then each of its events, as an async iterator that ends
   * after the event that ends the flow (or with the snapshot, if it already ended),
   * or when `signal` fires. Events carry `seq`: each is newer than the snapshot.
   * If the connection drops, it reconnects and yields a fresh snapshot; after a
   * `lagged` message the server sends a fresh snapshot too. An unknown flow rejects
   * with code `flow_not_found`.
   */
  async *watch(flowId: string, options: WatchOptions = {}): AsyncGenerator<WatchMessage, void, undefined> {
    const signal = options.timeoutMs !== undefined
      ? anySignal([options.signal, AbortSignal.timeout(options.timeoutMs)])
      : options.signal;
    const Ctor = await loadWebSocket();
    let drops = 0;
    while (!signal?.aborted) {
      const session = new WatchSession(new Ctor(this.wsUrl()), flowId, signal);
      let gotMessage = false;
      try {
        for (;;) {
          const message = await session.next();
          if (message === null) break;
          gotMessage = true;
          yield message;
          if (message.type === "snapshot" && isTerminal(message.flow.status)) return;
          if (message.type === "flow:updated" && message.node === undefined && isTerminal(message.status)) return;
        }
      } finally {
        session.close();
      }
      if (signal?.aborted) return;
      drops = gotMessage ? 1 : drops + 1;
      if (drops > WATCH_RECONNECTS) {
        throw new DagflowApiError(0, "unreachable", `the WebSocket of ${this.baseUrl} closed ${drops} times in a row: ${session.closeReason}`);
      }
      await new Promise((r) => setTimeout(r, 100 * 2 ** drops));
    }
  }

  private wsUrl(): string {
    const url = new URL(`${this.baseUrl}/ws`);
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    // Browsers cannot set headers on a WebSocket; the server takes the token here too.
    if (this.token) url.searchParams.set("token", this.token);
    return url.toString();
  }

  private async request<T>(method: string, path: string, body?: string, headers: Record<string, string> = {}): Promise<T> {
    if (this.token) headers["authorization"] = `Bearer ${this.token}`;
    let response: Response;
    try {
      response = await fetch(`${this.baseUrl}${path}`, {
        method,
        headers,
        body: body ?? null,
        signal: AbortSignal.timeout(this.requestTimeoutMs),
      });
    } catch (err) {
      throw new DagflowApiError(0, "unreachable", `${method} ${this.baseUrl}${path} failed: ${(err as Error).message}`);
    }
    const text = await response.text();
    if (!response.ok) {
      let code = `http_${response.status}`;
      let message = text || response.statusText;
      let details: unknown = null;
      try {
        const parsed = JSON.parse(text) as { error?: { code?: string; message?: string; details?: unknown } };
        if (parsed.error) {
          code = parsed.error.code ?? code;
          message = parsed.error.message ?? message;
          details = parsed.error.details ?? null;
        }
      } catch {
        // Not the API's JSON error (a proxy's page): keep the text.
      }
      throw new DagflowApiError(response.status, code, message, details);
    }
    return (text ? JSON.parse(text) : undefined) as T;
  }
}

function isTerminal(status: string): boolean {
  return (TERMINAL_FLOW_STATUSES as readonly string[]).includes(status);
}

/** An AbortSignal that fires when any of `signals` does (AbortSignal.any is Node 20.3+). */
function anySignal(signals: Array<AbortSignal | undefined>): AbortSignal {
  const controller = new AbortController();
  for (const s of signals) {
    if (!s) continue;
    if (s.aborted) {
      controller.abort(s.reason);
      break;
    }
    s.addEventListener("abort", () => controller.abort(s.reason), { once: true });
  }
  return controller.signal;
}

/** One WebSocket connection subscribed to one flow, read as a queue of messages. */
class WatchSession {
  private readonly queue: WatchMessage[] = [];
  private waiting: (() => void) | null = null;
  private closed = false;
  private failure: Error | null = null;
  /** Why the socket closed, for the error after repeated drops. */
  closeReason = "";

  constructor(
    private readonly socket: MinimalWebSocket,
    private readonly flowId: string,
    private readonly signal: AbortSignal | undefined,
  ) {
    socket.addEventListener("open", () => socket.send(JSON.stringify({ type: "subscribe", flowId })));
    socket.addEventListener("message", (event) => this.onMessage(event.data));
    socket.addEventListener("error", (event) => {
      this.closeReason = event.message ?? "WebSocket error";
      this.end();
    });
    socket.addEventListener("close", (event) => {
      this.closeReason ||= `closed with code ${event.code ?? "?"} ${event.reason ?? ""}`.trim();
      this.end();
    });
    signal?.addEventListener("abort", () => this.end(), { once: true });
  }

  private onMessage(data: unknown): void {
    let message: ServerMessage;
    try {
      message = JSON.parse(typeof data === "string" ? data : String(data)) as ServerMessage;
    } catch {
      return;
    }
    switch (message.type) {
      case "snapshot":
        if (message.flow.id === this.flowId) this.push(message);
        break;
      case "flow:updated":
        if (message.flowId === this.flowId) this.push(message);
        break;
      case "lagged":
        this.push(message);
        break;
      case "error": {
        const notFound = /not found|unknown|no flow/i.test(message.message);
        this.failure = new DagflowApiError(notFound ? 404 : 0, notFound ? "flow_not_found" : "watch_error", message.message);
        this.end();
        break;
      }
      default:
        break;
    }
  }

  private push(message: WatchMessage): void {
    this.queue.push(message);
    this.wakeUp();
  }

  private end(): void {
    this.closed = true;
    this.wakeUp();
  }

  private wakeUp(): void {
    const w = this.waiting;
    this.waiting = null;
    w?.();
  }

  /** The next message; `null` when the connection ended or the signal fired. Throws the server's error about the flow. */
  async next(): Promise<WatchMessage | null> {
    for (;;) {
      if (this.failure) throw this.failure;
      if (this.signal?.aborted) return null;
      const message = this.queue.shift();
      if (message) return message;
      if (this.closed) return null;
      await new Promise<void>((resolve) => (this.waiting = resolve));
    }
  }

  close(): void {
    this.closed = true;
    try {
      this.socket.close(1000);
    } catch {
      // Closing a socket that never opened throws in some implementations.
    }
  }
}
