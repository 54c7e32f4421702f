/**
 * Traces: the W3C `traceparent` a job's envelope carries, and, when the optional
 * `@opentelemetry/api` package is installed, a span around each handler run that
 * is a child of it, so that the handler's own spans (HTTP calls, database queries)
 * join the flow's trace.
 *
 * The API package is optional: a worker without it runs exactly as before, and
 * `job.traceparent` is there either way. With it but without an SDK registered,
 * its tracer is a no-op and costs next to nothing. The span's parent is built from
 * the envelope's traceparent directly, so no global propagator is needed.
 *
 * @module
 */

/** What a valid traceparent holds. */
export interface TraceParent {
  /** 32 lowercase hex digits, not all zero. */
  traceId: string;
  /** 16 lowercase hex digits, not all zero. */
  spanId: string;
  /** The trace flags (bit 0: sampled). */
  traceFlags: number;
}

const TRACEPARENT = /^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$/;

/**
 * Parses a W3C traceparent (`00-{trace id}-{span id}-{flags}`); `undefined` when it
 * is malformed, names an all-zero id or uses the forbidden version `ff`.
 */
export function parseTraceparent(value: string | undefined): TraceParent | undefined {
  if (value === undefined) return undefined;
  const m = TRACEPARENT.exec(value.trim());
  if (!m) return undefined;
  const [, version, traceId, spanId, flags] = m as unknown as [string, string, string, string, string];
  if (version === "ff" || /^0+$/.test(traceId) || /^0+$/.test(spanId)) return undefined;
  return { traceId, spanId, traceFlags: parseInt(flags, 16) & 1 };
}

/** The part of `@opentelemetry/api` this module uses. */
interface OtelApi {
  trace: {
    getTracer(name: string, version?: string): OtelTracer;
    setSpanContext(ctx: unknown, spanContext: TraceParent & { isRemote: boolean }): unknown;
  };
  context: { active(): unknown };
  SpanStatusCode: { ERROR: number };
  SpanKind: { CONSUMER: number };
}

interface OtelSpan {
  recordException(err: unknown): void;
  setStatus(status: { code: number; message?: string }): void;
  end(): void;
}

interface OtelTracer {
  startActiveSpan<T>(name: string, options: unknown, ctx: unknown, fn: (span: OtelSpan) => T): T;
}

/** What a handler run looks like to {@link HandlerSpans.run}. */
export interface TracedJob {
  /** `{flowId}:{node}:{attempt}`. */
  id: string;
  flowId: string;
  node: string;
  attempt: number;
  /** The handler's name: the span's name. */
  name: string;
  queue: string;
  traceparent: string | undefined;
}

/** Starts a span per handler run, as a child of the job's traceparent. */
export class HandlerSpans {
  readonly #api: OtelApi;
  readonly #tracer: OtelTracer;

  constructor(api: OtelApi) {
    this.#api = api;
    this.#tracer = api.trace.getTracer("dagflow-worker");
  }

  /**
   * Runs `fn` (the handler) inside a span. A promise's span ends when it settles; a
   * thrown error or a rejection is recorded on the span and passed on unchanged.
   */
  run(job: TracedJob, fn: () => unknown): unknown {
    const api = this.#api;
    const parent = parseTraceparent(job.traceparent);
    const ctx = parent ? api.trace.setSpanContext(api.context.active(), { ...parent, isRemote: true }) : api.context.active();
    const options = {
      kind: api.SpanKind.CONSUMER,
      attributes: {
        "dagflow.job.id": job.id,
        "dagflow.flow.id": job.flowId,
        "dagflow.node": job.node,
        "dagflow.attempt": job.attempt,
        "dagflow.queue": job.queue,
      },
    };
    return this.#tracer.startActiveSpan(job.name, options, ctx, (span) => {
      const failed = (err: unknown): void => {
        span.recordException(err);
        span.setStatus({ code: api.SpanStatusCode.ERROR, message: err instanceof Error ? err.message : String(err) });
        span.end();
      };
      let result: unknown;
      try {
        result = fn();
      } catch (err) {
        failed(err);
        throw err;
      }
      if (result !== null && typeof result === "object" && typeof (result as PromiseLike<unknown>).then === "function") {
        return (result as PromiseLike<unknown>).then(
          (value) => {
            span.end();
            return value;
          },
          (err) => {
            failed(err);
            throw err;
          },
        );
      }
      span.end();
      return result;
    });
  }
}

/**
 * Loads `@opentelemetry/api` if it is installed; `undefined` otherwise (the
 * package is an optional peer dependency). The name is in a variable so that
 * TypeScript does not need the package to build.
 */
export async function loadHandlerSpans(): Promise<HandlerSpans | undefined> {
  const name = "@opentelemetry/api";
  try {
    const api = (await import(name)) as OtelApi;
    return new HandlerSpans(api);
  } catch {
    return undefined;
  }
}
