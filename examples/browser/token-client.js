// A dependency-free helper for browser apps: gets a VideoDB session token from the broker
// with the user's bearer token, keeps it, and refreshes it ahead of expiry (and when VideoDB
// answers 401), with at most one request to the broker in flight. A refresh that fails for a
// passing reason (network, 408, 429, 5xx) is retried after Retry-After or a growing backoff,
// and the token already held is used until it expires.

// Statuses worth trying again later; anything else (401, 403, 422) needs the app to act.
const RETRYABLE = new Set([408, 429, 500, 502, 503, 504]);
const MAX_BACKOFF_SECONDS = 60;

export class BrokerError extends Error {
  constructor(problem, status) {
    super(problem.detail || problem.title || `broker answered ${status}`);
    this.name = "BrokerError";
    this.status = status;
    this.code = problem.code;
    this.requestId = problem.request_id;
    this.retryAfter = problem.retryAfter;
  }
}

export class SessionTokenClient {
  /**
   * @param {object} options
   * @param {string} options.brokerUrl e.g. "https://broker.example.com"
   * @param {() => Promise<string> | string} [options.getIdToken] the user's JWT from your IdP
   * @param {boolean} [options.cookie=false] send the JWT cookie your backend set instead
   *   (the broker's BROKER_AUTH_COOKIE_NAME mode): credentials included, plus `X-CSRF: 1`
   * @param {number} [options.expiresIn] lifetime to ask for, in seconds (broker default if unset)
   * @param {number} [options.refreshMarginSeconds=300] refresh this long before expiry
   * @param {(token: {token: string, expiresAt: number}) => void} [options.onToken]
   * @param {(error: Error) => void} [options.onError]
   */
  constructor({
    brokerUrl,
    getIdToken,
    cookie = false,
    expiresIn,
    refreshMarginSeconds = 300,
    onToken,
    onError,
  }) {
    if (!cookie && !getIdToken) throw new TypeError("pass getIdToken, or cookie: true");
    this.endpoint = new URL("/v1/capture/session/token", brokerUrl).toString();
    this.getIdToken = getIdToken;
    this.cookie = cookie;
    this.expiresIn = expiresIn;
    this.refreshMarginSeconds = refreshMarginSeconds;
    this.onToken = onToken || (() => {});
    this.onError = onError || (() => {});
    this.current = null; // {token, expiresAt}
    this.inFlight = null; // the one pending request, shared by every caller
    this.timer = null;
    this.refreshes = 0;
    this.failures = 0; // consecutive failed refreshes, for the backoff
    this.generation = 0; // bumped by stop(): an answer to an older request is dropped
  }

  /**
   * The current token, fetching a new one if there is none or it is about to expire. If that
   * fetch fails while the token held has not expired, the token held is returned.
   */
  async getToken() {
    if (this.current && this.secondsLeft() > this.margin(this.current)) {
      return this.current.token;
    }
    const held = this.current;
    try {
      return (await this.refresh()).token;
    } catch (error) {
      if (held && held === this.current && this.secondsLeft() > 1) return held.token;
      throw error;
    }
  }

  /** Call when VideoDB answers 401 to the token: the next getToken() fetches a fresh one. */
  invalidate() {
    this.current = null;
    return this.refresh();
  }

  /** Stop the background refresh (e.g. on sign-out) and forget the token. */
  stop() {
    clearTimeout(this.timer);
    this.timer = null;
    this.current = null;
    this.generation += 1;
  }

  secondsLeft() {
    return this.current ? this.current.expiresAt - Date.now() / 1000 : 0;
  }

  margin(token) {
    // Never wait past half a short token's life.
    const lifetime = token.expiresAt - token.receivedAt;
    return Math.min(this.refreshMarginSeconds, lifetime / 2);
  }

  refresh() {
    if (!this.inFlight) {
      this.inFlight = this.fetchToken().finally(() => {
        this.inFlight = null;
      });
    }
    return this.inFlight;
  }

  async fetchToken() {
    const generation = this.generation;
    const headers = { "Content-Type": "application/json" };
    if (this.cookie) {
      headers["X-CSRF"] = "1"; // a cross-site form cannot send it: the broker's CSRF check
    } else {
      headers.Authorization = `Bearer ${await this.getIdToken()}`;
    }
    const body = this.expiresIn ? JSON.stringify({ expires_in: this.expiresIn }) : "{}";
    let response;
    try {
      response = await fetch(this.endpoint, {
        method: "POST",
        headers,
        body,
        credentials: this.cookie ? "include" : "omit",
        cache: "no-store",
      });
    } catch (networkError) {
      throw this.failed(networkError, generation, true);
    }
    if (!response.ok) {
      let problem = {};
      try {
        problem = await response.json();
      } catch {}
      problem.retryAfter = Number(response.headers.get("Retry-After")) || undefined;
      const error = new BrokerError(problem, response.status);
      throw this.failed(error, generation, RETRYABLE.has(response.status));
    }
    const data = await response.json();
    if (generation !== this.generation) throw new Error("stopped while the token was on its way");
    const now = Date.now() / 1000;
    this.current = { token: data.token, expiresAt: now + data.expires_in, receivedAt: now };
    this.refreshes += 1;
    this.failures = 0;
    this.schedule(Math.max(1, data.expires_in - this.margin(this.current)));
    this.onToken({ token: this.current.token, expiresAt: this.current.expiresAt });
    return this.current;
  }

  /**
   * Create a capture session through the broker (BROKER_CAPTURE_SESSIONS=on): its id and a
   * token in one round trip; the token becomes the one this client holds and refreshes.
   * Never retried here: a failed creation is reported, and the app decides to ask again.
   * @param {{metadata?: object, wsConnectionId?: string}} [options]
   * @returns {Promise<{sessionId: string, status: string, collectionId: string, token: string, expiresAt: number, location: string}>}
   */
  async createCaptureSession({ metadata, wsConnectionId } = {}) {
    const headers = { "Content-Type": "application/json" };
    if (this.cookie) {
      headers["X-CSRF"] = "1";
    } else {
      headers.Authorization = `Bearer ${await this.getIdToken()}`;
    }
    const body = {};
    if (this.expiresIn) body.expires_in = this.expiresIn;
    if (metadata) body.metadata = metadata;
    if (wsConnectionId) body.ws_connection_id = wsConnectionId;
    const response = await fetch(new URL("/v1/capture/sessions", this.endpoint).toString(), {
      method: "POST",
      headers,
      body: JSON.stringify(body),
      credentials: this.cookie ? "include" : "omit",
      cache: "no-store",
    });
    if (response.status !== 201) {
      let problem = {};
      try {
        problem = await response.json();
      } catch {}
      problem.retryAfter = Number(response.headers.get("Retry-After")) || undefined;
      throw new BrokerError(problem, response.status);
    }
    const data = await response.json();
    const now = Date.now() / 1000;
    this.generation += 1; // an older refresh still on its way must not replace this token
    this.inFlight = null;
    this.current = { token: data.token, expiresAt: now + data.expires_in, receivedAt: now };
    this.failures = 0;
    this.schedule(Math.max(1, data.expires_in - this.margin(this.current)));
    this.onToken({ token: this.current.token, expiresAt: this.current.expiresAt });
    return {
      sessionId: data.session_id,
      status: data.status,
      collectionId: data.collection_id,
      token: data.token,
      expiresAt: this.current.expiresAt,
      location: response.headers.get("Location"),
    };
  }

  /** Report a failed refresh and, for a passing failure, schedule the next attempt. */
  failed(error, generation, retryable) {
    if (generation !== this.generation) return error; // stopped meanwhile: stay quiet
    this.failures += 1;
    this.onError(error);
    if (retryable) {
      const backoff = Math.min(MAX_BACKOFF_SECONDS, 2 ** this.failures);
      this.schedule(error.retryAfter || backoff);
    }
    return error;
  }

  schedule(seconds) {
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.refresh().catch(() => {}), seconds * 1000);
  }
}
