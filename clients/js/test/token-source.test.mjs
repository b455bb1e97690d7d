// The token source on a mocked clock: what reaches the broker, and when.
import { test, mock, beforeEach, afterEach } from "node:test";
import assert from "node:assert/strict";
import { tokenSource, BrokerError, BrokerUnreachableError } from "../dist/index.js";
import { json, problem, scriptedFetch, settle, tokenAnswer } from "./support.mjs";

const BROKER = "https://broker.example.com";

beforeEach(() => {
  mock.timers.enable({ apis: ["setTimeout", "Date"], now: 1_000_000 });
  mock.method(Math, "random", () => 0.5);
});
afterEach(() => {
  mock.timers.reset();
  mock.restoreAll();
});

function idTokens() {
  const asked = [];
  const getIdToken = ({ forceRefresh }) => {
    asked.push(forceRefresh);
    return `jwt-${asked.length}`;
  };
  return { asked, getIdToken };
}

test("one request for many callers, then the token is kept", async () => {
  const fetch = scriptedFetch((n) => tokenAnswer(n));
  const { asked, getIdToken } = idTokens();
  const source = tokenSource({ brokerUrl: BROKER, getIdToken, fetch, expiresIn: 600 });
  const tokens = await Promise.all([source.getToken(), source.getToken(), source.getToken()]);
  assert.deepEqual(tokens, ["st-token-1", "st-token-1", "st-token-1"]);
  assert.equal(await source.getToken(), "st-token-1");
  assert.equal(fetch.calls.length, 1);
  const [call] = fetch.calls;
  assert.equal(call.url, `${BROKER}/v1/capture/session/token`);
  assert.equal(call.init.method, "POST");
  assert.equal(call.headers.get("Authorization"), "Bearer jwt-1");
  assert.deepEqual(JSON.parse(call.init.body), { expires_in: 600 });
  assert.equal(call.init.credentials, "omit");
  assert.deepEqual(asked, [false]);
  assert.equal(source.secondsLeft(), 600);
  assert.equal(source.current.expiresAt.getTime(), 1_000_000 + 600_000);
  source.stop();
});

test("refreshes early, jittered, with a fresh JWT from getIdToken each time", async () => {
  const fetch = scriptedFetch((n) => tokenAnswer(n));
  const { asked, getIdToken } = idTokens();
  const seen = [];
  const source = tokenSource({
    brokerUrl: BROKER, getIdToken, fetch, refreshMarginSeconds: 300, onToken: (t) => seen.push(t.token),
  });
  await source.getToken();
  // 600 s token, 300 s margin: due at 300 s, brought forward by up to 10% (5% here).
  mock.timers.tick(284_000);
  await settle();
  assert.equal(fetch.calls.length, 1);
  mock.timers.tick(1_000);
  await settle();
  assert.equal(fetch.calls.length, 2);
  assert.deepEqual(seen, ["st-token-1", "st-token-2"]);
  assert.equal(fetch.calls[1].headers.get("Authorization"), "Bearer jwt-2");
  assert.deepEqual(asked, [false, false]);
  source.stop();
});

test("a short token is refreshed at half its life, not hammered", async () => {
  const fetch = scriptedFetch((n) => tokenAnswer(n, 60));
  const source = tokenSource({ brokerUrl: BROKER, getIdToken: () => "jwt", fetch });
  await source.getToken();
  mock.timers.tick(28_000);
  await settle();
  assert.equal(fetch.calls.length, 1);
  mock.timers.tick(2_000);
  await settle();
  assert.equal(fetch.calls.length, 2);
  source.stop();
});

test("429 with Retry-After: no request before it, the held token answers meanwhile", async () => {
  const fetch = scriptedFetch((n) => (n === 2 ? problem(429, "rate_limited", { "Retry-After": "30" }) : tokenAnswer(n, 100)));
  const errors = [];
  const source = tokenSource({ brokerUrl: BROKER, getIdToken: () => "jwt", fetch, onError: (e) => errors.push(e) });
  await source.getToken();
  mock.timers.tick(47_500); // 100 s token: refresh due at 50 s less 5%
  await settle();
  assert.equal(fetch.calls.length, 2);
  assert.equal(errors.length, 1);
  assert.ok(errors[0] instanceof BrokerError);
  assert.equal(errors[0].code, "rate_limited");
  assert.equal(errors[0].status, 429);
  assert.equal(errors[0].retryAfter, 30);
  assert.equal(errors[0].requestId, "req-1");
  assert.equal(errors[0].passing, true);
  // Asked meanwhile: the token held (52 s left), and still no request.
  assert.equal(await source.getToken(), "st-token-1");
  mock.timers.tick(30_000); // Retry-After, plus 5% jitter: 31.5 s
  await settle();
  assert.equal(fetch.calls.length, 2);
  mock.timers.tick(1_500);
  await settle();
  assert.equal(fetch.calls.length, 3);
  assert.equal(source.current.token, "st-token-3");
  source.stop();
});

test("with no token held, Retry-After is the error until it passes", async () => {
  const fetch = scriptedFetch((n) => (n === 1 ? problem(503, "upstream_unavailable", { "Retry-After": "10" }) : tokenAnswer(n)));
  const source = tokenSource({ brokerUrl: BROKER, getIdToken: () => "jwt", fetch, autoRefresh: false });
  await assert.rejects(source.getToken(), { name: "BrokerError", code: "upstream_unavailable", retryAfter: 10 });
  await assert.rejects(source.getToken(), { code: "upstream_unavailable" });
  assert.equal(fetch.calls.length, 1); // the second call sent nothing
  mock.timers.tick(10_000);
  assert.equal(await source.getToken(), "st-token-2");
});

test("network failures back off 2, 4, 8 s (jittered) while the token held is used", async () => {
  let down = false;
  const fetch = scriptedFetch((n) => {
    if (down) throw new TypeError("fetch failed");
    return tokenAnswer(n, 100);
  });
  const errors = [];
  const source = tokenSource({ brokerUrl: BROKER, getIdToken: () => "jwt", fetch, onError: (e) => errors.push(e) });
  await source.getToken();
  down = true;
  const times = [];
  const before = fetch.calls.length;
  mock.timers.tick(47_500);
  await settle();
  times.push(Date.now());
  for (const wait of [1_500, 3_000, 6_000]) { // 2, 4, 8 s less half of the 50% jitter
    mock.timers.tick(wait - 1);
    await settle();
    const count = fetch.calls.length;
    mock.timers.tick(1);
    await settle();
    assert.equal(fetch.calls.length, count + 1, `retried after ${wait} ms`);
  }
  assert.equal(fetch.calls.length - before, 4);
  assert.ok(errors.every((e) => e instanceof BrokerUnreachableError));
  assert.equal(await source.getToken(), "st-token-1"); // held: 100 - 58 s left
  source.stop();
});

test("a 401 asks getIdToken to refresh and tries once more; a second 401 is the error", async () => {
  const fetch = scriptedFetch((n, call) =>
    call.headers.get("Authorization") === "Bearer fresh" ? tokenAnswer(n) : problem(401, "invalid_token"),
  );
  const asked = [];
  const source = tokenSource({
    brokerUrl: BROKER, fetch, autoRefresh: false,
    getIdToken: ({ forceRefresh }) => {
      asked.push(forceRefresh);
      return forceRefresh ? "fresh" : "expired";
    },
  });
  assert.equal(await source.getToken(), "st-token-2");
  assert.deepEqual(asked, [false, true]);

  const refusing = scriptedFetch(() => problem(401, "invalid_token"));
  const errors = [];
  const other = tokenSource({ brokerUrl: BROKER, fetch: refusing, getIdToken: () => "revoked", onError: (e) => errors.push(e) });
  await assert.rejects(other.getToken(), { name: "BrokerError", status: 401, code: "invalid_token", passing: false });
  assert.equal(refusing.calls.length, 2);
  mock.timers.tick(3_600_000);
  await settle();
  assert.equal(refusing.calls.length, 2); // a refusal waiting cannot fix is not retried
  assert.equal(errors.length, 1);
});

test("an answer that is no problem document still comes as a typed error", async () => {
  const fetch = scriptedFetch(() => new Response("<html>Bad gateway</html>", { status: 502, statusText: "Bad Gateway" }));
  const source = tokenSource({ brokerUrl: BROKER, getIdToken: () => "jwt", fetch, autoRefresh: false });
  await assert.rejects(source.getToken(), { name: "BrokerError", status: 502, code: "unknown", message: "Bad Gateway" });
  const garbage = scriptedFetch(() => json(200, ["not", "an", "object"]));
  const other = tokenSource({ brokerUrl: BROKER, getIdToken: () => "jwt", fetch: garbage, autoRefresh: false });
  await assert.rejects(other.getToken(), { name: "BrokerError", code: "invalid_answer" });
});

test("stop() drops the answer on its way and schedules nothing", async () => {
  let release;
  const fetch = scriptedFetch(async (n) => {
    await new Promise((resolve) => { release = resolve; });
    return tokenAnswer(n);
  });
  const source = tokenSource({ brokerUrl: BROKER, getIdToken: () => "jwt", fetch });
  const pending = source.getToken();
  await settle();
  source.stop();
  release();
  await assert.rejects(pending, { name: "AbortError" });
  assert.equal(source.current, null);
  assert.equal(fetch.calls[0].init.signal.aborted, true); // the request itself was cancelled
  mock.timers.tick(3_600_000);
  await settle();
  assert.equal(fetch.calls.length, 1);
});

test("invalidate() after VideoDB's 401 fetches a new token, shared by concurrent callers", async () => {
  const fetch = scriptedFetch((n) => tokenAnswer(n));
  const source = tokenSource({ brokerUrl: BROKER, getIdToken: () => "jwt", fetch });
  await source.getToken();
  const answers = await Promise.all([source.invalidate(), source.invalidate(), source.getToken()]);
  assert.deepEqual(answers, ["st-token-2", "st-token-2", "st-token-2"]);
  assert.equal(fetch.calls.length, 2);
  source.stop();
});

test("cookie mode sends the cookie and X-CSRF, never an Authorization header", async () => {
  const fetch = scriptedFetch((n) => tokenAnswer(n));
  const source = tokenSource({ brokerUrl: `${BROKER}/broker/`, cookie: true, fetch, autoRefresh: false });
  await source.getToken();
  const [call] = fetch.calls;
  assert.equal(call.url, `${BROKER}/broker/v1/capture/session/token`); // under a path prefix
  assert.equal(call.init.credentials, "include");
  assert.equal(call.headers.get("X-CSRF"), "1");
  assert.equal(call.headers.has("Authorization"), false);
  assert.deepEqual(JSON.parse(call.init.body), {});
});

test("misuse is caught before any request", async () => {
  assert.throws(() => tokenSource({ brokerUrl: BROKER }), /getIdToken/);
  assert.throws(() => tokenSource({ brokerUrl: "ftp://x", getIdToken: () => "t" }), /http/);
  const fetch = scriptedFetch((n) => tokenAnswer(n));
  const source = tokenSource({ brokerUrl: BROKER, getIdToken: () => "", fetch });
  await assert.rejects(source.getToken(), /signed in/);
  assert.equal(fetch.calls.length, 0);
});
