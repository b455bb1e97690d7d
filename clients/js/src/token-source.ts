/** A session token from the broker: fetched, kept, refreshed early, one request at a time. */

import { type BrokerOptions, Connection, jsonObject, unusable } from "./connection.js";
import { BrokerError, isPassing } from "./errors.js";

export const TOKEN_PATH = "/v1/capture/session/token";
const MAX_BACKOFF_SECONDS = 60;
// Refreshes start up to this share of the wait early, so that clients started together (a
// page reload across a fleet, a broker back from an outage) do not come back together.
const JITTER = 0.1;

/** A VideoDB session token (`st-…`) and when it stops working. */
export interface SessionToken {
  readonly token: string;
  /** When VideoDB stops taking it, on this machine's clock. */
  readonly expiresAt: Date;
  /** The seconds it had left when the broker answered. */
  readonly expiresIn: number;
}

export interface TokenSourceOptions extends BrokerOptions {
  /** The lifetime to ask for, in seconds; the broker's default when unset. */
  expiresIn?: number;
  /** Refresh this many seconds before expiry (default 300), never later than half-life. */
  refreshMarginSeconds?: number;
  /** Refresh in the background ahead of expiry (default true); false: only when asked. */
  autoRefresh?: boolean;
  /** Each new token, e.g. to hand it to a capture client. */
  onToken?: (token: SessionToken) => void;
  /** Each failed fetch; a passing failure (network, 408, 429, 5xx) is tried again by itself. */
  onError?: (error: unknown) => void;
}

/** One user's session tokens from the broker. */
export interface TokenSource {
  /** A token with more than the refresh margin left, fetched if need be. */
  getToken(): Promise<string>;
  /** The same, with its expiry. */
  sessionToken(): Promise<SessionToken>;
  /** The token held, if it has not expired. */
  readonly current: SessionToken | null;
  /** Seconds left on the token held (0 without one). */
  secondsLeft(): number;
  /** VideoDB refused the token held (401): forget it and fetch another. */
  invalidate(): Promise<string>;
  /** Sign-out: forget the token, stop refreshing, drop an answer still on its way. */
  stop(): void;
  /** Tokens received so far (fetched, or with a capture session). */
  readonly fetches: number;
}

interface Held {
  token: string;
  expiresAt: number; // epoch milliseconds
  lifetime: number; // seconds granted
}

/** What the capture calls use of a source: its connection and a way to hand it a token. */
export interface SourceInternals {
  connection: Connection;
  expiresIn: number | undefined;
  adopt(answer: Record<string, unknown>, status: number): SessionToken;
}

const internals = new WeakMap<object, SourceInternals>();

/** The connection behind a source made by tokenSource(). */
export function internalsOf(source: TokenSource): SourceInternals {
  const found = internals.get(source);
  if (!found) throw new TypeError("pass the object tokenSource() returned");
  return found;
}

/**
 * A source of session tokens for the signed-in user. `getIdToken` is called before every
 * request to the broker, so the identity provider's own refresh is used.
 */
export function tokenSource(options: TokenSourceOptions): TokenSource {
  const source = new BrokerTokenSource(options);
  internals.set(source, {
    connection: source.connection,
    expiresIn: options.expiresIn,
    adopt: (answer, status) => source.adopt(answer, status),
  });
  return source;
}

class BrokerTokenSource implements TokenSource {
  readonly connection: Connection;
  #expiresIn: number | undefined;
  #margin: number;
  #autoRefresh: boolean;
  #onToken: (token: SessionToken) => void;
  #onError: (error: unknown) => void;
  #held: Held | null = null;
  #inFlight: Promise<Held> | null = null;
  #controller: AbortController | null = null;
  #timer: ReturnType<typeof setTimeout> | undefined;
  #failures = 0; // consecutive, for the backoff
  #generation = 0; // bumped by stop(): an answer to an older request is dropped
  #notBefore = 0; // the broker's Retry-After: no request before this (epoch ms)
  #waitError: unknown = null;
  #fetches = 0;

  constructor(options: TokenSourceOptions) {
    this.connection = new Connection(options);
    this.#expiresIn = options.expiresIn;
    this.#margin = options.refreshMarginSeconds ?? 300;
    this.#autoRefresh = options.autoRefresh ?? true;
    this.#onToken = options.onToken ?? (() => {});
    this.#onError = options.onError ?? (() => {});
  }

  get fetches(): number {
    return this.#fetches;
  }

  get current(): SessionToken | null {
    const held = this.#held;
    return held && held.expiresAt > Date.now() ? view(held) : null;
  }

  secondsLeft(): number {
    return this.#held ? Math.max(0, (this.#held.expiresAt - Date.now()) / 1000) : 0;
  }

  async getToken(): Promise<string> {
    return (await this.sessionToken()).token;
  }

  async sessionToken(): Promise<SessionToken> {
    const held = this.#held;
    if (held && this.#secondsLeftOf(held) > this.#marginOf(held)) return view(held);
    if (Date.now() < this.#notBefore) {
      // The broker asked to wait: no request before then; the token held is still good.
      if (held && this.#secondsLeftOf(held) > 1) return view(held);
      throw this.#waitError;
    }
    try {
      return view(await this.#refresh());
    } catch (error) {
      const still = this.#held;
      if (still && this.#secondsLeftOf(still) > 1) return view(still);
      throw error;
    }
  }

  async invalidate(): Promise<string> {
    this.#held = null;
    if (Date.now() < this.#notBefore) throw this.#waitError;
    return (await this.#refresh()).token;
  }

  stop(): void {
    this.#generation += 1;
    this.#controller?.abort();
    this.#controller = null;
    clearTimeout(this.#timer);
    this.#timer = undefined;
    this.#held = null;
    this.#inFlight = null;
    this.#failures = 0;
    this.#notBefore = 0;
  }

  adopt(answer: Record<string, unknown>, status: number): SessionToken {
    const held = heldFrom(answer, status);
    this.#accept(held);
    return view(held);
  }

  #secondsLeftOf(held: Held): number {
    return (held.expiresAt - Date.now()) / 1000;
  }

  #marginOf(held: Held): number {
    return Math.min(this.#margin, held.lifetime / 2); // never wait past half a short life
  }

  #refresh(): Promise<Held> {
    if (this.#inFlight) return this.#inFlight;
    const generation = this.#generation;
    const controller = new AbortController();
    this.#controller = controller;
    const flight: Promise<Held> = this.#fetch(controller.signal).then(
      (held) => {
        if (generation !== this.#generation) throw stopped();
        this.#accept(held);
        return this.#held ?? held;
      },
      (error: unknown) => {
        if (generation !== this.#generation) throw stopped();
        this.#failed(error);
        throw error;
      },
    );
    const settled = flight.finally(() => {
      if (this.#inFlight === settled) this.#inFlight = null;
    });
    settled.catch(() => {}); // a background refresh's failure is reported through onError
    this.#inFlight = settled;
    return settled;
  }

  async #fetch(signal: AbortSignal): Promise<Held> {
    const body = this.#expiresIn === undefined ? {} : { expires_in: this.#expiresIn };
    const response = await this.connection.send(
      TOKEN_PATH,
      { method: "POST", json: body, signal },
      [200],
    );
    return heldFrom(await jsonObject(response), response.status);
  }

  #accept(held: Held): void {
    // Two answers in flight (a refresh and a new capture session): keep the longer-lived.
    if (!this.#held || held.expiresAt >= this.#held.expiresAt) this.#held = held;
    this.#fetches += 1;
    this.#failures = 0;
    this.#notBefore = 0;
    this.#waitError = null;
    const kept = this.#held;
    const wait = (this.#secondsLeftOf(kept) - this.#marginOf(kept)) * (1 - JITTER * Math.random());
    this.#schedule(Math.max(0.25, wait));
    callSafely(this.#onToken, view(kept));
  }

  #failed(error: unknown): void {
    this.#failures += 1;
    callSafely(this.#onError, error);
    if (!isPassing(error)) return; // a refusal waiting cannot fix: the app acts
    const retryAfter = error instanceof BrokerError ? error.retryAfter : undefined;
    let wait: number;
    if (retryAfter !== undefined) {
      this.#notBefore = Date.now() + retryAfter * 1000;
      this.#waitError = error;
      wait = retryAfter * (1 + JITTER * Math.random()); // never before the broker said
    } else {
      const backoff = Math.min(MAX_BACKOFF_SECONDS, 2 ** this.#failures);
      wait = backoff * (1 - 0.5 * Math.random());
    }
    this.#schedule(wait);
  }

  #schedule(seconds: number): void {
    clearTimeout(this.#timer);
    this.#timer = undefined;
    if (!this.#autoRefresh) return;
    this.#timer = setTimeout(() => {
      this.#timer = undefined;
      this.#refresh().catch(() => {});
    }, seconds * 1000);
    // In Node (an Electron main process), a pending refresh never keeps the process alive.
    (this.#timer as unknown as { unref?: () => void }).unref?.();
  }
}

function heldFrom(answer: Record<string, unknown>, status: number): Held {
  const { token, expires_in: expiresIn } = answer;
  if (typeof token !== "string" || typeof expiresIn !== "number" || !(expiresIn > 0)) {
    throw unusable(status, "The broker's answer has no token and lifetime.");
  }
  // Counted from now on this machine: its clock may not agree with the broker's.
  return { token, lifetime: expiresIn, expiresAt: Date.now() + expiresIn * 1000 };
}

function view(held: Held): SessionToken {
  return {
    token: held.token,
    expiresAt: new Date(held.expiresAt),
    expiresIn: held.lifetime,
  };
}

function stopped(): DOMException {
  return new DOMException("The token source was stopped while the token was on its way.", "AbortError");
}

/** An app callback's error surfaces as the app's own, without breaking the source. */
function callSafely<T>(callback: (value: T) => void, value: T): void {
  try {
    callback(value);
  } catch (error) {
    queueMicrotask(() => {
      throw error;
    });
  }
}
