// The event-stream reader, against the HTML standard's rules and against eventsource-parser
// (a widely used reader, here only as a test's reference) on the same bytes cut anywhere.
import { test } from "node:test";
import assert from "node:assert/strict";
import { createParser } from "eventsource-parser";
import { EventStreamParser } from "../dist/index.js";

function readAll(chunks) {
  const parser = new EventStreamParser();
  const events = chunks.flatMap((chunk) => parser.feed(chunk));
  return { events, parser };
}

test("fields, comments and the blank line that dispatches", () => {
  const { events, parser } = readAll([
    ": keep-alive\n\nid: 1\nevent: transcript\ndata: {\"text\":\"hi\"}\n\n",
    "retry: 2500\nid: 2\ndata:first\ndata: second\n\n",
  ]);
  assert.deepEqual(events, [
    { type: "transcript", data: "{\"text\":\"hi\"}", lastEventId: "1" },
    { type: "message", data: "first\nsecond", lastEventId: "2" },
  ]);
  assert.equal(parser.retry, 2500);
  assert.equal(parser.lastEventId, "2");
});

test("CRLF, CR and LF line ends, a CRLF split across chunks, and a leading BOM", () => {
  const { events } = readAll(["\uFEFFdata: a\r", "\n\r", "\ndata: b\r\rdata: c\n\n"]);
  assert.deepEqual(
    events.map((e) => e.data),
    ["a", "b", "c"],
  );
});

test("the id persists, an id with NUL is ignored, an event cut off by the end is dropped", () => {
  const { events, parser } = readAll(["id: 7\ndata: x\n\ndata: y\n\nid: 8\0\ndata: z\n\nid: 9\ndata: cut"]);
  assert.deepEqual(
    events.map((e) => [e.data, e.lastEventId]),
    [["x", "7"], ["y", "7"], ["z", "7"]],
  );
  assert.equal(parser.lastEventId, "7"); // 9 never dispatched
});

test("retry counts only as ASCII digits; an event with no data only moves the id", () => {
  const { events, parser } = readAll(["retry: 10s\n\nretry: 300\n\nid: 5\nevent: status\n\n"]);
  assert.deepEqual(events, []);
  assert.equal(parser.retry, 300);
  assert.equal(parser.lastEventId, "5");
});

test("a line past 1 MiB is refused rather than kept in memory", () => {
  const parser = new EventStreamParser();
  assert.throws(() => parser.feed("data: " + "x".repeat(1 << 20) + "x"), RangeError);
});

// Streams with the cases readers get wrong, then each cut at random places.
const STREAMS = [
  "id: 1\nevent: transcript\ndata: {\"text\":\"one\",\"is_final\":true}\n\n: ping\n\nid: 2\ndata: two\n\n",
  "data:no-space\r\ndata:  two-spaces\r\n\r\nevent\ndata\n\ndata: after-empty\n\n",
  "\uFEFFretry: 1000\rid: a\rdata: cr only\r\rid\rdata: id reset\r\r",
  "event: status\ndata: {\"status\":\"stopped\"}\n\nfoo: bar\ndata: unknown field\n\n:comment\ndata: end\n\n",
  "id: \u0000x\ndata: nul id\n\ndata: é ü 😀\n\n\n\n\ndata: x\r\n\r\n",
];

function reference(chunks) {
  const events = [];
  let retry;
  let lastId = "";
  const parser = createParser({
    onEvent: (event) => {
      if (event.id !== undefined) lastId = event.id;
      events.push({ type: event.event || "message", data: event.data, lastEventId: lastId });
    },
    onRetry: (ms) => {
      retry = ms;
    },
  });
  for (const chunk of chunks) parser.feed(chunk);
  return { events, retry };
}

function randomCuts(text, seed) {
  let state = seed;
  const next = () => ((state = (state * 1103515245 + 12345) % 2 ** 31) / 2 ** 31);
  const chunks = [];
  let i = 0;
  while (i < text.length) {
    const size = 1 + Math.floor(next() * 7);
    chunks.push(text.slice(i, i + size));
    i += size;
  }
  return chunks;
}

test("reads every stream as eventsource-parser does, however the bytes are cut", () => {
  for (const stream of STREAMS) {
    for (let seed = 1; seed <= 40; seed += 1) {
      const chunks = randomCuts(stream, seed);
      const ours = readAll(chunks);
      const theirs = reference(chunks);
      assert.deepEqual(ours.events, theirs.events, JSON.stringify(chunks));
      assert.equal(ours.parser.retry, theirs.retry);
    }
  }
});
