// A TypeScript app using the package by its published name (resolved through its "exports"):
// `tsc -p test/types` must accept this, including each @ts-expect-error being an error.
import {
  BrokerError,
  createCaptureSession,
  followCaptureSession,
  tokenSource,
  type CaptureEvent,
  type SessionToken,
} from "videodb-token-broker-client";

export async function app(): Promise<void> {
  const source = tokenSource({
    brokerUrl: "https://broker.example.com",
    getIdToken: async ({ forceRefresh }) => (forceRefresh ? "fresh" : "cached"),
    onToken: (token: SessionToken) => void token.expiresAt.getTime(),
  });
  const session = await createCaptureSession(source, { metadata: { app: "types" } });
  const sessionId: string = session.sessionId;
  for await (const event of followCaptureSession(source, sessionId)) {
    const seen: CaptureEvent = event;
    if (seen.type === "status") {
      const status: string = seen.data.status;
      void status;
    } else {
      const text: string | undefined = seen.data.text;
      void text;
    }
  }
  try {
    await source.getToken();
  } catch (error) {
    if (error instanceof BrokerError) {
      const code: string = error.code;
      const wait: number | undefined = error.retryAfter;
      void [code, wait];
    }
  }
  // @ts-expect-error: getIdToken must give a string
  tokenSource({ brokerUrl: "https://b", getIdToken: () => 42 });
  // @ts-expect-error: the broker takes no user id from the client
  await createCaptureSession(source, { endUserId: "someone-else" });
}
