/**
 * videodb-token-broker-client: VideoDB session tokens and capture sessions from a
 * videodb-token-broker, for browsers, Node 18+ and Electron's main process. No dependency.
 */

export { BrokerError, BrokerUnreachableError, type Problem } from "./errors.js";
export type { BrokerOptions, GetIdToken } from "./connection.js";
export {
  tokenSource,
  type SessionToken,
  type TokenSource,
  type TokenSourceOptions,
} from "./token-source.js";
export {
  createCaptureSession,
  exportCaptureSession,
  getCaptureSession,
  type CaptureExport,
  type CaptureSession,
  type CaptureSessionView,
  type CreateCaptureSessionOptions,
  type ExportOptions,
} from "./capture-sessions.js";
export {
  followCaptureSession,
  type CaptureEvent,
  type CaptureFeed,
  type FollowOptions,
  type InsightEvent,
  type StatusEvent,
} from "./follow.js";
export { EventStreamParser, type StreamEvent } from "./event-stream.js";
