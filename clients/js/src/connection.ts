/** How every call reaches the broker: its URL, the user's credentials, and one fetch. */

import { BrokerError, BrokerUnreachableError, type Problem, retryAfterSeconds } from "./errors.js";

/**
 * The signed-in user's JWT, from the app's identity provider SDK. Called before every request
 * to the broker, so the SDK's own caching and refresh apply; `forceRefresh` is true when the
 * broker has just refused the last one (401), e.g. `({ forceRefresh }) =>
 * auth.currentUser.getIdToken(forceRefresh)` with Firebase.
 */
export type GetIdToken = (options: { forceRefresh: boolean }) => string | Promise<string>;

/** What every call needs to know of the broker. */
export interface BrokerOptions {
  /** The broker's origin, e.g. `https://broker.example.com`. */
  brokerUrl: string | URL;
  /** The user's JWT for each request (see {@link GetIdToken}); omit it in cookie mode. */
  getIdToken?: GetIdToken;
  /**
   * The JWT is an HttpOnly cookie your backend set for the broker's site
   * (`BROKER_AUTH_COOKIE_NAME`): requests carry credentials and `X-CSRF: 1`.
   */
  cookie?: boolean;
  /** The fetch to use (Electron's `net.fetch`, a test double); the global one by default. */
  fetch?: typeof globalThis.fetch;
}

interface Request {
  method: "GET" | "POST";
  json?: unknown;
  headers?: Record<string, string>;
  signal?: AbortSignal | undefined;
}

export class Connection {
  readonly base: URL;
  readonly cookie: boolean;
  private readonly getIdToken: GetIdToken | undefined;
  private readonly fetcher: typeof globalThis.fetch;

  constructor(options: BrokerOptions) {
    if (!options || options.brokerUrl === undefined) throw new TypeError("brokerUrl is required");
    this.base = new URL(String(options.brokerUrl));
    if (this.base.protocol !== "https:" && this.base.protocol !== "http:") {
      throw new TypeError("brokerUrl must be an http(s) URL");
    }
    this.cookie = options.cookie === true;
    if (!this.cookie && typeof options.getIdToken !== "function") {
      throw new TypeError("pass getIdToken, or cookie: true");
    }
    this.getIdToken = options.getIdToken;
    // Called through globalThis: a browser's fetch refuses to run as another object's method.
    this.fetcher = options.fetch ?? ((input, init) => globalThis.fetch(input, init));
  }

  /** The absolute URL of a broker path (the broker may sit under a path prefix). */
  url(path: string): string {
    const prefix = this.base.pathname.replace(/\/+$/, "");
    return new URL(prefix + path, this.base).toString();
  }

  /**
   * Send a request with the user's credentials. An answer with one of `expected` statuses is
   * returned; any other is thrown as a BrokerError, and no answer as BrokerUnreachableError.
   * A 401 asks getIdToken once more (forceRefresh) and tries again before giving up.
   */
  async send(path: string, request: Request, expected: readonly number[]): Promise<Response> {
    let response = await this.attempt(path, request, false);
    if (response.status === 401 && !this.cookie) {
      await discard(response);
      response = await this.attempt(path, request, true);
    }
    if (!expected.includes(response.status)) throw await refusal(response);
    return response;
  }

  private async attempt(path: string, request: Request, forceRefresh: boolean): Promise<Response> {
    const headers: Record<string, string> = { ...request.headers };
    if (request.json !== undefined) headers["Content-Type"] = "application/json";
    if (this.cookie) {
      headers["X-CSRF"] = "1"; // what a cross-site form cannot send: the broker's CSRF check
    } else {
      const idToken = await this.getIdToken?.({ forceRefresh });
      if (typeof idToken !== "string" || idToken === "") {
        throw new TypeError("getIdToken gave no token: is the user signed in?");
      }
      headers.Authorization = `Bearer ${idToken}`;
    }
    const init: RequestInit = {
      method: request.method,
      headers,
      credentials: this.cookie ? "include" : "omit",
      cache: "no-store",
    };
    if (request.json !== undefined) init.body = JSON.stringify(request.json);
    if (request.signal) init.signal = request.signal;
    try {
      return await this.fetcher(this.url(path), init);
    } catch (error) {
      if (request.signal?.aborted) throw request.signal.reason;
      throw new BrokerUnreachableError(error);
    }
  }
}

/** The answer's JSON object, or a BrokerError saying it was none. */
export async function jsonObject(response: Response): Promise<Record<string, unknown>> {
  let data: unknown;
  try {
    data = await response.json();
  } catch {
    data = undefined;
  }
  if (typeof data !== "object" || data === null || Array.isArray(data)) {
    throw unusable(response.status, "The broker's answer is not a JSON object.");
  }
  return data as Record<string, unknown>;
}

/** A BrokerError for an answer the client cannot use (code `invalid_answer`, the client's own). */
export function unusable(status: number, detail: string): BrokerError {
  return new BrokerError(status, { code: "invalid_answer", title: "Unusable answer", detail });
}

async function refusal(response: Response): Promise<BrokerError> {
  let problem: Problem = {};
  try {
    const data: unknown = await response.json();
    if (typeof data === "object" && data !== null && !Array.isArray(data)) problem = data as Problem;
  } catch {
    // not a problem document (a proxy's HTML page): the status says what there is to say
  }
  if (!problem.title && response.statusText) problem = { ...problem, title: response.statusText };
  return new BrokerError(
    response.status,
    problem,
    retryAfterSeconds(response.headers.get("Retry-After")),
  );
}

async function discard(response: Response): Promise<void> {
  try {
    await response.body?.cancel();
  } catch {
    // already read or closed: nothing to release
  }
}
