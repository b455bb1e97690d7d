// What an Electron app's main process does at start-up, as a plain Node program: get a VideoDB
// session token (and, with --session, a capture session) from the broker through
// videodb-token-broker-client, start VideoDB's CaptureClient (`videodb/capture`) with them,
// and keep the token fresh. One JSON line per event on stdout; a token only as a fingerprint.
//
//   ID_TOKEN_FILE=~/.config/app/id-token node main.mjs --broker https://broker.example.com --session
//
// The user's JWT never comes on the command line (where `ps` shows it): ID_TOKEN_FILE is read
// again before every request (the login may have been renewed), else ID_TOKEN.

import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import { pathToFileURL } from "node:url";
import { parseArgs } from "node:util";
import { createCaptureSession, tokenSource, BrokerError } from "videodb-token-broker-client";

const emit = (event, fields = {}) => process.stdout.write(JSON.stringify({ event, ...fields }) + "\n");
const fingerprint = (token) => "sha256:" + createHash("sha256").update(token).digest("hex").slice(0, 12);

/** The user's JWT, asked for before every request to the broker. */
export function idTokenFromEnvironment(env = process.env) {
  if (env.ID_TOKEN_FILE) return () => readFileSync(env.ID_TOKEN_FILE, "utf8").trim();
  if (env.ID_TOKEN) return () => env.ID_TOKEN;
  return undefined;
}

/** Start VideoDB's capture client on the session; a missing native recorder is one line. */
export async function startCapture(sessionId, token) {
  let CaptureClient;
  try {
    ({ CaptureClient } = await import("videodb/capture"));
  } catch {
    emit("videodb_sdk_absent", { note: "npm install videodb to start capturing" });
    return null;
  }
  const client = new CaptureClient({ sessionToken: token });
  try {
    // The first call starts the native recorder, which VideoDB downloads at run time for
    // macOS and Windows only.
    const channels = await client.listChannels();
    const chosen = [channels.mics.default, channels.displays.default].filter(Boolean);
    await client.startSession({
      sessionId,
      channels: chosen.map((c) => ({ channelId: c.id, type: c.type, record: true })),
    });
    emit("capture_started", { session_id: sessionId });
    return client;
  } catch (error) {
    emit("videodb_recorder_missing", { note: String(error?.message ?? error).split("\n")[0] });
    await client.shutdown().catch(() => {});
    return null;
  }
}

const OPTIONS = {
  broker: { type: "string", default: process.env.BROKER_URL ?? "http://127.0.0.1:8080" },
  "expires-in": { type: "string" },
  margin: { type: "string", default: "300" },
  "run-for": { type: "string", default: "0" },
  session: { type: "boolean", default: false },
};

async function main() {
  if (process.argv.some((arg) => arg === "--id-token" || arg.startsWith("--id-token="))) {
    // Refused by name, never echoed: a token on the command line shows in `ps` and shell history.
    process.stderr.write("--id-token is not taken: set ID_TOKEN_FILE (or ID_TOKEN) instead\n");
    return 2;
  }
  let values;
  try {
    ({ values } = parseArgs({ options: OPTIONS }));
  } catch (error) {
    process.stderr.write(`${error.message.split(".")[0]}; options: --broker, --expires-in, --margin, --run-for, --session\n`);
    return 2;
  }
  const getIdToken = idTokenFromEnvironment();
  if (!getIdToken) {
    process.stderr.write("no bearer token: set ID_TOKEN_FILE (or ID_TOKEN), never an argument\n");
    return 2;
  }
  let resolveFirst;
  const firstToken = new Promise((resolve) => { resolveFirst = resolve; });
  const tokens = tokenSource({
    brokerUrl: values.broker,
    getIdToken,
    expiresIn: values["expires-in"] ? Number(values["expires-in"]) : undefined,
    refreshMarginSeconds: Number(values.margin),
    onToken: ({ token, expiresIn }) => {
      emit("token_received", { token: fingerprint(token), expires_in: expiresIn, fetches: tokens.fetches });
      resolveFirst();
    },
    onError: (error) => {
      const reason = error instanceof BrokerError ? error.code : error?.name;
      emit("refresh_failed", { reason, token_seconds_left: Math.round(tokens.secondsLeft() * 10) / 10 });
    },
  });
  const keepAlive = setInterval(() => {}, 1 << 30); // the source's own timers never hold Node
  const stopped = new Promise((resolve) => {
    process.once("SIGINT", resolve);
    process.once("SIGTERM", resolve);
    const runFor = Number(values["run-for"]);
    if (runFor > 0) setTimeout(resolve, runFor * 1000);
  });
  let client = null;
  let code = 0;
  try {
    if (values.session) {
      const session = await createCaptureSession(tokens, { metadata: { app: "node-example" } });
      emit("capture_session_created", { session_id: session.sessionId });
      client = await startCapture(session.sessionId, session.token);
    } else {
      // A passing failure is retried by the source itself; the first token ends the wait.
      await Promise.race([tokens.getToken().catch((error) => refusedOrWait(error, firstToken)), stopped]);
    }
    await stopped;
  } catch (error) {
    code = reportRefusal(error);
  } finally {
    clearInterval(keepAlive);
    await client?.stopSession().catch(() => {});
    await client?.shutdown().catch(() => {});
    tokens.stop();
  }
  emit("stopped", { fetches: tokens.fetches });
  return code || (tokens.fetches ? 0 : 1); // stopped without ever getting a token: a failure
}

function refusedOrWait(error, firstToken) {
  if (error instanceof BrokerError && !error.passing) throw error;
  return firstToken;
}

function reportRefusal(error) {
  if (error instanceof BrokerError) {
    emit("broker_refused", { status: error.status, code: error.code, detail: error.message, retry_after: error.retryAfter });
  } else {
    emit("broker_unreachable", { error: error?.name ?? String(error) });
  }
  return 1;
}

if (import.meta.url === pathToFileURL(process.argv[1]).href) process.exitCode = await main();
