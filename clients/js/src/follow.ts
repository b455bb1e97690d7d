/**
 * A capture session's live feed (`GET /v1/capture/sessions/{id}/events`, BROKER_CAPTURE_LIVE=on)
 * read over fetch, so that the bearer header goes with it (a browser's EventSource cannot send
 * one). Reconnects with `Last-Event-ID`, so the broker replays what was missed.
 */

import { BrokerError, isPassing } from "./errors.js";
import { unusable } from "./connection.js";
import { EventStreamParser, type StreamEvent } from "./event-stream.js";
import { sessionPath } from "./capture-sessions.js";
import { sleep } from "./sleep.js";
import { internalsOf, type TokenSource } from "./token-source.js";

/** What VideoDB's AI made of the session, as the broker passes it on. */
export interface InsightEvent {
  readonly id: string;
  readonly type: "transcript" | "audio_index" | "visual_index";
  readonly data: {
    readonly text?: string;
    readonly isFinal?: boolean;
    readonly start?: number;
    readonly end?: number;
  };
}

/** The session changed state: `stopped`, `failed` and `exported` are the last ones. */
export interface StatusEvent {
  readonly id: string;
  readonly type: "status";
  readonly data: { readonly status: string; readonly exportedVideoId?: string };
}

export type CaptureEvent = InsightEvent | StatusEvent;

export interface FollowOptions {
  /** Ends the feed (the iteration simply finishes). */
  signal?: AbortSignal;
  /** Resume after this event id (one from an earlier feed). */
  lastEventId?: string;
  /** Reconnect when nothing, not even a keep-alive, came for this long (default 45 s; the
   * broker sends one at least every 15 s). */
  idleTimeoutSeconds?: number;
  /** Each reconnection, before its wait: why, and how long. */
  onReconnect?: (info: { attempt: number; delaySeconds: number; error: unknown }) => void;
}

/** The feed as an async iterator: break out of the loop, or abort, to close it. */
export interface CaptureFeed extends AsyncIterableIterator<CaptureEvent> {
  /** The id of the last event received, to resume from in another feed. */
  readonly lastEventId: string | undefined;
}

const INSIGHTS = new Set(["transcript", "audio_index", "visual_index"]);
const FINAL = new Set(["stopped", "failed", "exported"]);
const DEFAULT_RETRY_MS = 1000;
const MAX_BACKOFF_SECONDS = 60;

/**
 * Follow a capture session's live events until the session ends (the broker closes the feed
 * after a final status), the signal aborts, or the loop breaks. A cut connection, a silent one
 * and a passing refusal (429: too many feeds open, 503) reconnect after the server's `retry`
 * or `Retry-After`, backing off while it keeps failing; a refusal that waiting cannot fix
 * (401 after asking getIdToken again, 403, 404) ends the iteration with that BrokerError.
 */
export function followCaptureSession(
  source: TokenSource,
  sessionId: string,
  options: FollowOptions = {},
): CaptureFeed {
  const path = sessionPath(sessionId) + "/events";
  const { connection } = internalsOf(source);
  const state = { lastEventId: options.lastEventId };
  const idleMs = (options.idleTimeoutSeconds ?? 45) * 1000;
  const outer = options.signal;

  async function* events(): AsyncGenerator<CaptureEvent, void, undefined> {
    let retryMs = DEFAULT_RETRY_MS;
    let failures = 0; // connections in a row that brought no event
    for (let attempt = 1; ; attempt += 1) {
      if (outer?.aborted) return;
      const controller = new AbortController();
      const abort = (): void => controller.abort(outer?.reason);
      outer?.addEventListener("abort", abort, { once: true });
      let idle = false;
      let timer: ReturnType<typeof setTimeout> | undefined;
      const quiet = (): void => {
        clearTimeout(timer);
        timer = setTimeout(() => {
          idle = true;
          controller.abort(new Error("the feed went silent"));
        }, idleMs);
      };
      let finished = false;
      let received = false;
      let error: unknown = null;
      let retryAfter: number | undefined;
      try {
        const headers: Record<string, string> = { Accept: "text/event-stream" };
        if (state.lastEventId) headers["Last-Event-ID"] = state.lastEventId;
        quiet();
        const response = await connection.send(
          path,
          { method: "GET", headers, signal: controller.signal },
          [200],
        );
        const type = response.headers.get("Content-Type") ?? "";
        if (!type.startsWith("text/event-stream") || !response.body) {
          await response.body?.cancel();
          throw unusable(200, "The broker's feed is not an event stream.");
        }
        const parser = new EventStreamParser();
        const decoder = new TextDecoder();
        const reader = response.body.getReader();
        let finalSeen = false;
        try {
          for (;;) {
            const { done, value } = await reader.read();
            if (done) break;
            quiet();
            const dispatched = parser.feed(decoder.decode(value, { stream: true }));
            if (parser.retry !== undefined) retryMs = parser.retry;
            for (const raw of dispatched) {
              if (raw.lastEventId) state.lastEventId = raw.lastEventId;
              const event = captureEvent(raw);
              if (!event) continue;
              received = true;
              finalSeen = event.type === "status" && FINAL.has(event.data.status);
              clearTimeout(timer); // a consumer slow with this event is not a silent feed
              yield event;
              if (outer?.aborted) return;
              quiet();
            }
            if (parser.lastEventId) state.lastEventId = parser.lastEventId;
          }
        } finally {
          reader.releaseLock();
        }
        if (finalSeen) finished = true; // the broker closed the feed after the last status
        else error = new Error("the feed ended before the session did");
      } catch (caught) {
        if (outer?.aborted) return;
        if (!idle && !isPassing(caught) && !isCut(caught)) throw caught;
        error = caught;
        if (caught instanceof BrokerError) retryAfter = caught.retryAfter;
      } finally {
        clearTimeout(timer);
        outer?.removeEventListener("abort", abort);
        controller.abort(); // the loop broke, or the connection is done: release it
      }
      if (finished) return;
      failures = received ? 0 : failures + 1;
      const backoff = Math.min(MAX_BACKOFF_SECONDS, (retryMs / 1000) * 2 ** Math.max(0, failures - 1));
      const delaySeconds = retryAfter ?? backoff * (failures > 1 ? 1 - 0.5 * Math.random() : 1);
      options.onReconnect?.({ attempt, delaySeconds, error });
      try {
        await sleep(delaySeconds, outer);
      } catch {
        return; // aborted while waiting
      }
    }
  }

  const iterator = events();
  Object.defineProperty(iterator, "lastEventId", { get: () => state.lastEventId });
  return iterator as CaptureFeed;
}

/** A network error while reading (the connection cut mid-stream), not a refusal. */
function isCut(error: unknown): boolean {
  return error instanceof TypeError || (error instanceof DOMException && error.name !== "AbortError");
}

/** The contract's event, or undefined for one this client does not know (dropped). */
function captureEvent(raw: StreamEvent): CaptureEvent | undefined {
  let data: unknown;
  try {
    data = JSON.parse(raw.data);
  } catch {
    return undefined;
  }
  if (typeof data !== "object" || data === null || Array.isArray(data)) return undefined;
  const fields = data as Record<string, unknown>;
  const id = raw.lastEventId;
  if (raw.type === "status") {
    if (typeof fields.status !== "string") return undefined;
    const status: { status: string; exportedVideoId?: string } = { status: fields.status };
    if (typeof fields.exported_video_id === "string") status.exportedVideoId = fields.exported_video_id;
    return { id, type: "status", data: status };
  }
  if (!INSIGHTS.has(raw.type)) return undefined;
  const insight: { text?: string; isFinal?: boolean; start?: number; end?: number } = {};
  if (typeof fields.text === "string") insight.text = fields.text;
  if (typeof fields.is_final === "boolean") insight.isFinal = fields.is_final;
  if (typeof fields.start === "number") insight.start = fields.start;
  if (typeof fields.end === "number") insight.end = fields.end;
  return { id, type: raw.type as InsightEvent["type"], data: insight };
}
