/** The broker's errors, as the app sees them: a refusal with its problem, or no answer. */

/** An RFC 9457 problem, as the broker writes it (`code` and `request_id` are its own). */
export interface Problem {
  type?: string;
  title?: string;
  status?: number;
  detail?: string;
  code?: string;
  request_id?: string;
  [member: string]: unknown;
}

/** Statuses worth trying again after a while; any other refusal needs the user or the app. */
const PASSING = new Set([408, 429, 500, 502, 503, 504]);

/** The broker answered with an error (its `application/problem+json`), or with nothing usable. */
export class BrokerError extends Error {
  override readonly name = "BrokerError";
  /** The HTTP status (200 for a success answer that could not be read). */
  readonly status: number;
  /** The problem's `code` (`invalid_token`, `rate_limited`, `not_found`…), or `unknown`. */
  readonly code: string;
  /** The broker's `request_id`, for its logs. */
  readonly requestId: string | undefined;
  /** Seconds the broker asked to wait (`Retry-After`), when it said. */
  readonly retryAfter: number | undefined;
  /** The whole problem document (empty when the answer was not one). */
  readonly problem: Problem;

  constructor(status: number, problem: Problem, retryAfter?: number) {
    super(problem.detail || problem.title || `the broker answered ${status}`);
    this.status = status;
    this.code = typeof problem.code === "string" ? problem.code : "unknown";
    this.requestId = typeof problem.request_id === "string" ? problem.request_id : undefined;
    this.retryAfter = retryAfter;
    this.problem = problem;
  }

  /** Whether waiting can fix it (408, 429, 5xx); a 401, 403, 404 or 422 needs someone to act. */
  get passing(): boolean {
    return PASSING.has(this.status);
  }
}

/** No answer from the broker: offline, refused connection, or a browser's CORS refusal. */
export class BrokerUnreachableError extends Error {
  override readonly name = "BrokerUnreachableError";

  constructor(cause: unknown) {
    super("The broker could not be reached (network, or a browser refusing it: CORS).", {
      cause,
    });
  }
}

/** Whether trying again later may succeed. */
export function isPassing(error: unknown): boolean {
  return error instanceof BrokerUnreachableError || (error instanceof BrokerError && error.passing);
}

/** `Retry-After` in seconds: delta-seconds or an HTTP date; undefined when absent or unreadable. */
export function retryAfterSeconds(header: string | null, now: number = Date.now()): number | undefined {
  if (header === null) return undefined;
  const text = header.trim();
  if (/^\d+$/.test(text)) return Number(text);
  const date = Date.parse(text);
  return Number.isNaN(date) ? undefined : Math.max(0, (date - now) / 1000);
}
