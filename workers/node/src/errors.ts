/**
 * Errors a handler throws to say whether another attempt may help, the reason a
 * job's signal carries when it is aborted, and the error of the API client.
 *
 * @module
 */

/**
 * Thrown by a handler when another attempt may succeed (a timeout, a 503, a lost
 * connection). The engine retries the node if it has attempts left (`opts.attempts`)
 * after its backoff. A plain `Error` (or any other thrown value) counts as
 * retryable too; this class only makes the intent explicit.
 */
export class RetryableError extends Error {
  override name = "RetryableError";
  /** Always true: read by the worker when it reports the failure. */
  readonly retryable = true;
}

/**
 * Thrown by a handler when no attempt can succeed (bad input, a 404, a rejected
 * payment): the node fails at once, whatever attempts it has left. BullMQ calls
 * this `UnrecoverableError`; that name is exported too.
 */
export class FatalError extends Error {
  override name = "FatalError";
  /** Always false: read by the worker when it reports the failure. */
  readonly retryable = false;
}

/** BullMQ's name for {@link FatalError}. */
export const UnrecoverableError = FatalError;

/** Why a job's `signal` fired. */
export type AbortCause = "cancelled" | "timeout" | "closing";

/**
 * The `reason` of an aborted job signal. `cause` says why: the flow was cancelled,
 * the node's `timeoutMs` passed, or the worker is closing and its deadline passed
 * (the job is then abandoned unreported and runs again elsewhere).
 */
export class JobAbortedError extends Error {
  override name = "AbortError";
  /** @param why what stopped the job @param message for people */
  constructor(
    readonly why: AbortCause,
    message: string,
  ) {
    super(message);
  }
}

/**
 * Whether an error thrown by a handler allows a retry: only {@link FatalError}
 * (or any error with `retryable === false`) does not.
 */
export function isRetryable(err: unknown): boolean {
  if (err && typeof err === "object" && "retryable" in err) return (err as { retryable: unknown }).retryable !== false;
  return true;
}

/** The message of anything a handler may throw. */
export function messageOf(err: unknown): string {
  if (err instanceof Error) return err.message || err.name;
  if (typeof err === "string") return err;
  try {
    return JSON.stringify(err) ?? String(err);
  } catch {
    return String(err);
  }
}

/**
 * An error answer of the dagflow API (`{"error": {"code", "message", "details"}}`),
 * or a failure to reach it (`status` 0, `code` `unreachable`).
 */
export class DagflowApiError extends Error {
  override name = "DagflowApiError";
  /**
   * @param status HTTP status (0 when the server could not be reached)
   * @param code the error's stable code (`invalid_flow`, `flow_not_found`, ...)
   * @param message for people
   * @param details for programs: `{"problems": [...]}` for an invalid flow
   */
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly details: unknown = null,
  ) {
    super(message);
  }
}
