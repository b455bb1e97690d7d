/** Capture sessions through the broker (BROKER_CAPTURE_SESSIONS=on): create, read, export. */

import { jsonObject, unusable } from "./connection.js";
import { isPassing, BrokerError } from "./errors.js";
import { internalsOf, type TokenSource } from "./token-source.js";
import { sleep } from "./sleep.js";

export const SESSIONS_PATH = "/v1/capture/sessions";
const SESSION_ID = /^[A-Za-z0-9_-]{1,128}$/;

/** A new capture session and the token to start capturing with (the source now holds it). */
export interface CaptureSession {
  readonly sessionId: string;
  readonly status: string;
  readonly collectionId: string;
  readonly token: string;
  readonly expiresAt: Date;
  readonly expiresIn: number;
  /** Where to read it back: the broker's absolute URL of `GET /v1/capture/sessions/{id}`. */
  readonly location: string;
}

export interface CreateCaptureSessionOptions {
  /** Any JSON object, at most 2048 bytes as compact JSON. */
  metadata?: Record<string, unknown>;
  /** A VideoDB WebSocket connection id for the session's events. */
  wsConnectionId?: string;
  /** The token's lifetime in seconds; the source's own by default. */
  expiresIn?: number;
  signal?: AbortSignal;
}

/** What the owner may see of a capture session; each field only where VideoDB gave it. */
export interface CaptureSessionView {
  readonly sessionId: string;
  readonly status?: string;
  readonly collectionId?: string;
  readonly metadata?: Record<string, unknown>;
  readonly createdAt?: string | number;
  readonly exportStatus?: string;
  readonly exportedVideoId?: string;
  readonly primaryVideoChannelId?: string;
  readonly channels?: unknown[];
}

/** An export's state: `exporting`, `exported` (with the video) or `failed`. */
export interface CaptureExport {
  readonly sessionId: string;
  readonly exportStatus: string;
  readonly videoId?: string;
  readonly streamUrl?: string;
  readonly playerUrl?: string;
}

export interface ExportOptions {
  /** Ask again until the export is `exported` or `failed` (default false: one answer). */
  wait?: boolean;
  /** Seconds between two asks while waiting (default 10: exports count against the
   * broker's creation limit, 10 a minute by default). */
  pollIntervalSeconds?: number;
  signal?: AbortSignal;
}

/**
 * Create a capture session for the signed-in user: its id and a token in one round trip; the
 * token becomes the one the source holds and refreshes. Never retried: the broker does not
 * repeat a creation that may have reached VideoDB, and neither should a client behind the
 * user's back (a 401 is asked again with a fresh JWT: nothing was created then).
 */
export async function createCaptureSession(
  source: TokenSource,
  options: CreateCaptureSessionOptions = {},
): Promise<CaptureSession> {
  const { connection, expiresIn: sourceLifetime, adopt } = internalsOf(source);
  const body: Record<string, unknown> = {};
  const expiresIn = options.expiresIn ?? sourceLifetime;
  if (expiresIn !== undefined) body.expires_in = expiresIn;
  if (options.metadata !== undefined) body.metadata = options.metadata;
  if (options.wsConnectionId !== undefined) body.ws_connection_id = options.wsConnectionId;
  const response = await connection.send(
    SESSIONS_PATH,
    { method: "POST", json: body, signal: options.signal },
    [201],
  );
  const answer = await jsonObject(response);
  const { session_id: sessionId, status, collection_id: collectionId } = answer;
  if (typeof sessionId !== "string") throw unusable(201, "The broker's answer has no session id.");
  const token = adopt(answer, 201);
  const location = response.headers.get("Location") ?? `${SESSIONS_PATH}/${sessionId}`;
  return {
    sessionId,
    status: String(status),
    collectionId: String(collectionId),
    token: token.token,
    expiresAt: token.expiresAt,
    expiresIn: token.expiresIn,
    location: connection.url(location),
  };
}

/** The owner's view of a session; another user's and an unknown one are both `not_found`. */
export async function getCaptureSession(
  source: TokenSource,
  sessionId: string,
  options: { signal?: AbortSignal } = {},
): Promise<CaptureSessionView> {
  const { connection } = internalsOf(source);
  const response = await connection.send(
    sessionPath(sessionId),
    { method: "GET", signal: options.signal },
    [200],
  );
  const answer = await jsonObject(response);
  if (typeof answer.session_id !== "string") throw unusable(200, "The broker's answer has no session id.");
  return picked(answer, {
    sessionId: "session_id",
    status: "status",
    collectionId: "collection_id",
    metadata: "metadata",
    createdAt: "created_at",
    exportStatus: "export_status",
    exportedVideoId: "exported_video_id",
    primaryVideoChannelId: "primary_video_channel_id",
    channels: "channels",
  }) as unknown as CaptureSessionView;
}

/**
 * Export the session's recording to a video (`POST …/export`, VideoDB's export, asked again
 * to poll). With `wait`, asks every `pollIntervalSeconds` until it is `exported` or `failed`,
 * riding out passing refusals (429, 503) after their `Retry-After`.
 */
export async function exportCaptureSession(
  source: TokenSource,
  sessionId: string,
  options: ExportOptions = {},
): Promise<CaptureExport> {
  const { connection } = internalsOf(source);
  const path = sessionPath(sessionId) + "/export";
  const interval = options.pollIntervalSeconds ?? 10;
  for (;;) {
    let state: CaptureExport | undefined;
    let wait = interval;
    try {
      const response = await connection.send(
        path,
        { method: "POST", json: {}, signal: options.signal },
        [200],
      );
      state = exportFrom(await jsonObject(response));
    } catch (error) {
      if (!options.wait || !isPassing(error)) throw error;
      if (error instanceof BrokerError && error.retryAfter !== undefined) wait = error.retryAfter;
    }
    if (state && (!options.wait || state.exportStatus === "exported" || state.exportStatus === "failed")) {
      return state;
    }
    await sleep(wait, options.signal);
  }
}

function exportFrom(answer: Record<string, unknown>): CaptureExport {
  if (typeof answer.session_id !== "string" || typeof answer.export_status !== "string") {
    throw unusable(200, "The broker's answer has no export status.");
  }
  return picked(answer, {
    sessionId: "session_id",
    exportStatus: "export_status",
    videoId: "video_id",
    streamUrl: "stream_url",
    playerUrl: "player_url",
  }) as unknown as CaptureExport;
}

/** The path of one session, its id checked first (no request for a malformed one). */
export function sessionPath(sessionId: string): string {
  if (typeof sessionId !== "string" || !SESSION_ID.test(sessionId)) {
    throw new TypeError("sessionId must be 1-128 characters of A-Z a-z 0-9 _ -");
  }
  return `${SESSIONS_PATH}/${sessionId}`;
}

/** The named members of the answer under their JavaScript names, only those present. */
function picked(answer: Record<string, unknown>, names: Record<string, string>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [name, member] of Object.entries(names)) {
    if (answer[member] !== undefined && answer[member] !== null) out[name] = answer[member];
  }
  return out;
}
