// Creating, reading and exporting sessions, with a scripted broker on a mocked clock.
import { test, mock, beforeEach, afterEach } from "node:test";
import assert from "node:assert/strict";
import {
  tokenSource, createCaptureSession, getCaptureSession, exportCaptureSession,
} from "../dist/index.js";
import { json, problem, scriptedFetch, settle } from "./support.mjs";

const BROKER = "https://broker.example.com";

beforeEach(() => {
  mock.timers.enable({ apis: ["setTimeout", "Date"], now: 1_000_000 });
  mock.method(Math, "random", () => 0.5);
});
afterEach(() => {
  mock.timers.reset();
  mock.restoreAll();
});

test("a new session's token becomes the one the source holds; a failed creation is never repeated", async () => {
  const fetch = scriptedFetch((n) =>
    n === 1
      ? json(201, { session_id: "cap-9", status: "created", collection_id: "default", token: "st-session", expires_at: 0, expires_in: 900 },
        { Location: "/v1/capture/sessions/cap-9" })
      : problem(503, "upstream_unavailable", { "Retry-After": "5" }),
  );
  const source = tokenSource({ brokerUrl: BROKER, getIdToken: () => "jwt", fetch, expiresIn: 900 });
  const session = await createCaptureSession(source, { metadata: { app: "test" }, wsConnectionId: "ws-1" });
  assert.deepEqual(
    { ...session, expiresAt: session.expiresAt.getTime() },
    {
      sessionId: "cap-9", status: "created", collectionId: "default", token: "st-session",
      expiresAt: 1_000_000 + 900_000, expiresIn: 900, location: `${BROKER}/v1/capture/sessions/cap-9`,
    },
  );
  assert.deepEqual(JSON.parse(fetch.calls[0].init.body), { expires_in: 900, metadata: { app: "test" }, ws_connection_id: "ws-1" });
  assert.equal(await source.getToken(), "st-session");
  assert.equal(fetch.calls.length, 1);
  await assert.rejects(createCaptureSession(source), { code: "upstream_unavailable", retryAfter: 5 });
  assert.equal(fetch.calls.length, 2); // once, even for a passing failure
  source.stop();
});

test("reading a session gives the owner's view under JavaScript names", async () => {
  const fetch = scriptedFetch(() =>
    json(200, { session_id: "cap-9", status: "active", collection_id: "c", created_at: "2026-01-01T00:00:00Z", channels: [{ channel_id: "mic" }], export_status: null }),
  );
  const source = tokenSource({ brokerUrl: BROKER, getIdToken: () => "jwt", fetch, autoRefresh: false });
  const view = await getCaptureSession(source, "cap-9");
  assert.deepEqual(view, {
    sessionId: "cap-9", status: "active", collectionId: "c", createdAt: "2026-01-01T00:00:00Z", channels: [{ channel_id: "mic" }],
  });
  assert.equal(fetch.calls[0].init.method, "GET");
  assert.equal(fetch.calls[0].url, `${BROKER}/v1/capture/sessions/cap-9`);
  await assert.rejects(getCaptureSession(source, "a/b"), TypeError);
  assert.equal(fetch.calls.length, 1);
});

test("export with wait polls until exported, riding out a 429 after its Retry-After", async () => {
  const answers = [
    json(200, { session_id: "cap-9", export_status: "exporting" }),
    problem(429, "rate_limited", { "Retry-After": "30" }),
    json(200, { session_id: "cap-9", export_status: "exported", video_id: "m-1", stream_url: "https://s/1.m3u8", player_url: "https://p/1" }),
  ];
  const fetch = scriptedFetch((n) => answers[n - 1]);
  const source = tokenSource({ brokerUrl: BROKER, getIdToken: () => "jwt", fetch, autoRefresh: false });
  const done = exportCaptureSession(source, "cap-9", { wait: true, pollIntervalSeconds: 10 });
  await settle();
  assert.equal(fetch.calls.length, 1);
  assert.equal(fetch.calls[0].url, `${BROKER}/v1/capture/sessions/cap-9/export`);
  assert.equal(fetch.calls[0].init.method, "POST");
  mock.timers.tick(10_000);
  await settle();
  assert.equal(fetch.calls.length, 2); // the 429
  mock.timers.tick(29_999);
  await settle();
  assert.equal(fetch.calls.length, 2);
  mock.timers.tick(1);
  await settle();
  assert.deepEqual(await done, {
    sessionId: "cap-9", exportStatus: "exported", videoId: "m-1", streamUrl: "https://s/1.m3u8", playerUrl: "https://p/1",
  });
});

test("export without wait is one answer; a refusal that waiting cannot fix is thrown", async () => {
  const fetch = scriptedFetch((n) => (n === 1 ? json(200, { session_id: "cap-9", export_status: "exporting" }) : problem(404, "not_found")));
  const source = tokenSource({ brokerUrl: BROKER, getIdToken: () => "jwt", fetch, autoRefresh: false });
  assert.deepEqual(await exportCaptureSession(source, "cap-9"), { sessionId: "cap-9", exportStatus: "exporting" });
  await assert.rejects(exportCaptureSession(source, "cap-9", { wait: true }), { code: "not_found", status: 404 });
});
