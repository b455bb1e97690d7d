// The live feed over real sockets: a node:http server plays the broker's
// GET /v1/capture/sessions/{id}/events as CONTRACT.md "Live capture" describes it.
import { test } from "node:test";
import assert from "node:assert/strict";
import { createServer } from "node:http";
import { followCaptureSession, tokenSource, BrokerError } from "../dist/index.js";

const PATH = "/v1/capture/sessions/cap-1/events";

/** A server whose n-th request to the feed is answered by `handlers[n-1]` (the last repeats). */
async function feedServer(handlers) {
  const requests = [];
  const closed = [];
  const server = createServer((req, res) => {
    const n = requests.push({ url: req.url, headers: req.headers });
    req.on("close", () => closed.push(n));
    const handler = handlers[Math.min(n, handlers.length) - 1];
    handler(req, res);
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  const url = `http://127.0.0.1:${server.address().port}`;
  return {
    url, requests, closed,
    close: () => new Promise((resolve) => { server.closeAllConnections(); server.close(resolve); }),
  };
}

function stream(res, ...parts) {
  res.writeHead(200, { "Content-Type": "text/event-stream", "Cache-Control": "no-store" });
  for (const part of parts) res.write(part);
}

function sourceFor(url, getIdToken = () => "jwt") {
  return tokenSource({ brokerUrl: url, getIdToken, autoRefresh: false });
}

async function collect(feed, limit = 100) {
  const events = [];
  for await (const event of feed) {
    events.push(event);
    if (events.length >= limit) break;
  }
  return events;
}

test("events in the contract's shape; the feed ends after the final status", async () => {
  const server = await feedServer([
    (req, res) => {
      stream(
        res,
        ": keep-alive\n\n",
        'id: 1\nevent: transcript\ndata: {"text":"hello","is_final":true,"start":1.5,"end":2.0}\n\n',
        'id: 2\nevent: visual_index\ndata: {"text":"a slide"}\n\n',
        "id: 3\nevent: transcript\ndata: not json\n\n", // dropped
        'id: 4\nevent: rtstream_url\ndata: {"url":"x"}\n\n', // no such event: dropped
        'id: 5\nevent: status\ndata: {"status":"exported","exported_video_id":"m-1"}\n\n',
      );
      res.end();
    },
  ]);
  try {
    const feed = followCaptureSession(sourceFor(server.url), "cap-1");
    const events = await collect(feed);
    assert.deepEqual(events, [
      { id: "1", type: "transcript", data: { text: "hello", isFinal: true, start: 1.5, end: 2 } },
      { id: "2", type: "visual_index", data: { text: "a slide" } },
      { id: "5", type: "status", data: { status: "exported", exportedVideoId: "m-1" } },
    ]);
    assert.equal(feed.lastEventId, "5");
    assert.equal(server.requests.length, 1); // ended: no reconnection
    const [request] = server.requests;
    assert.equal(request.url, PATH);
    assert.equal(request.headers.authorization, "Bearer jwt");
    assert.equal(request.headers.accept, "text/event-stream");
  } finally {
    await server.close();
  }
});

test("a connection cut mid-event reconnects after the server's retry, with Last-Event-ID", async () => {
  const server = await feedServer([
    (req, res) => {
      stream(res, "retry: 20\n\n", 'id: 41\nevent: transcript\ndata: {"text":"one"}\n\n', 'id: 42\nevent: transcript\ndata: {"te');
      setTimeout(() => res.socket.destroy(), 50); // cut in the middle of event 42
    },
    (req, res) => {
      stream(res, 'id: 42\nevent: transcript\ndata: {"text":"two"}\n\n', 'id: 43\nevent: status\ndata: {"status":"stopped"}\n\n');
      res.end();
    },
  ]);
  const reconnects = [];
  try {
    const feed = followCaptureSession(sourceFor(server.url), "cap-1", {
      lastEventId: "40",
      onReconnect: (info) => reconnects.push(info),
    });
    const events = await collect(feed);
    assert.deepEqual(events.map((e) => [e.id, e.data.text ?? e.data.status]), [["41", "one"], ["42", "two"], ["43", "stopped"]]);
    assert.deepEqual(server.requests.map((r) => r.headers["last-event-id"]), ["40", "41"]);
    assert.equal(reconnects.length, 1);
    assert.equal(reconnects[0].delaySeconds, 0.02);
  } finally {
    await server.close();
  }
});

test("a feed that ends without a final status reconnects; a silent one too", async () => {
  const server = await feedServer([
    (req, res) => {
      stream(res, "retry: 10\nid: 1\nevent: status\ndata: {\"status\":\"active\"}\n\n");
      res.end(); // a replica going away: not the end of the session
    },
    (req, res) => {
      stream(res, ": connected\n\n"); // then nothing, not even keep-alives
    },
    (req, res) => {
      stream(res, 'id: 2\nevent: status\ndata: {"status":"failed"}\n\n');
      res.end();
    },
  ]);
  try {
    const feed = followCaptureSession(sourceFor(server.url), "cap-1", { idleTimeoutSeconds: 0.3 });
    const events = await collect(feed);
    assert.deepEqual(events.map((e) => e.data.status), ["active", "failed"]);
    assert.equal(server.requests.length, 3);
    assert.deepEqual(server.requests.map((r) => r.headers["last-event-id"]), [undefined, "1", "1"]);
  } finally {
    await server.close();
  }
});

test("429 (too many feeds) waits for Retry-After, then connects", async () => {
  const server = await feedServer([
    (req, res) => {
      res.writeHead(429, { "Content-Type": "application/problem+json", "Retry-After": "1" });
      res.end(JSON.stringify({ status: 429, code: "rate_limited", title: "Too many requests" }));
    },
    (req, res) => {
      stream(res, 'id: 1\nevent: status\ndata: {"status":"stopped"}\n\n');
      res.end();
    },
  ]);
  const reconnects = [];
  try {
    const started = Date.now();
    const feed = followCaptureSession(sourceFor(server.url), "cap-1", { onReconnect: (i) => reconnects.push(i) });
    const events = await collect(feed);
    assert.equal(events.length, 1);
    // waited the Retry-After, not retried at once (timers run on the loop's cached clock)
    assert.ok(Date.now() - started >= 900, "waited the Retry-After");
    assert.equal(reconnects[0].delaySeconds, 1);
    assert.equal(reconnects[0].error.code, "rate_limited");
  } finally {
    await server.close();
  }
});

test("another user's session (404) ends the feed with the typed error, no retry", async () => {
  const server = await feedServer([
    (req, res) => {
      res.writeHead(404, { "Content-Type": "application/problem+json" });
      res.end(JSON.stringify({ status: 404, code: "not_found", detail: "No such capture session." }));
    },
  ]);
  try {
    const feed = followCaptureSession(sourceFor(server.url), "cap-1");
    await assert.rejects(collect(feed), (error) => error instanceof BrokerError && error.code === "not_found");
    assert.equal(server.requests.length, 1);
  } finally {
    await server.close();
  }
});

test("a 401 asks for a fresh JWT once and reconnects with it", async () => {
  const server = await feedServer([
    (req, res) => {
      if (req.headers.authorization !== "Bearer fresh") {
        res.writeHead(401, { "Content-Type": "application/problem+json", "WWW-Authenticate": "Bearer" });
        res.end(JSON.stringify({ status: 401, code: "invalid_token" }));
        return;
      }
      stream(res, 'id: 1\nevent: status\ndata: {"status":"stopped"}\n\n');
      res.end();
    },
  ]);
  const asked = [];
  try {
    const getIdToken = ({ forceRefresh }) => {
      asked.push(forceRefresh);
      return forceRefresh ? "fresh" : "stale";
    };
    const events = await collect(followCaptureSession(sourceFor(server.url, getIdToken), "cap-1"));
    assert.equal(events.length, 1);
    assert.deepEqual(asked, [false, true]);
  } finally {
    await server.close();
  }
});

test("breaking out of the loop, or aborting, closes the connection", async () => {
  const server = await feedServer([
    (req, res) => {
      stream(res, 'id: 1\nevent: transcript\ndata: {"text":"a"}\n\n', 'id: 2\nevent: transcript\ndata: {"text":"b"}\n\n');
    },
  ]);
  try {
    const events = await collect(followCaptureSession(sourceFor(server.url), "cap-1"), 1);
    assert.equal(events.length, 1);
    const controller = new AbortController();
    const aborted = [];
    for await (const event of followCaptureSession(sourceFor(server.url), "cap-1", { signal: controller.signal })) {
      aborted.push(event);
      controller.abort();
    }
    assert.equal(aborted.length, 1);
    await waitFor(() => server.closed.length === 2);
    assert.deepEqual(server.closed.sort(), [1, 2]);
  } finally {
    await server.close();
  }
});

test("a session id that is not one is refused before any request", () => {
  const source = tokenSource({ brokerUrl: "http://127.0.0.1:9", getIdToken: () => "jwt" });
  assert.throws(() => followCaptureSession(source, "../token"), TypeError);
});

async function waitFor(condition, timeoutMs = 5000) {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error("condition not met");
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}
