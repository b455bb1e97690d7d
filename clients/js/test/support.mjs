// Test doubles: a scripted fetch (every request recorded) and answers as the broker writes them.

/** A fetch whose answers come from `answer(n, request)`; `.calls` records every request. */
export function scriptedFetch(answer) {
  const calls = [];
  const fetch = async (url, init = {}) => {
    const call = { url: String(url), init, headers: new Headers(init.headers) };
    calls.push(call);
    return answer(calls.length, call);
  };
  fetch.calls = calls;
  return fetch;
}

export function json(status, body, headers = {}) {
  return new Response(JSON.stringify(body), {
    status,
    headers: { "Content-Type": "application/json", ...headers },
  });
}

export function problem(status, code, headers = {}) {
  return new Response(
    JSON.stringify({ type: "about:blank", title: code, status, detail: `because ${code}`, code, request_id: "req-1" }),
    { status, headers: { "Content-Type": "application/problem+json", ...headers } },
  );
}

export function tokenAnswer(n, expiresIn = 600) {
  return json(200, { token: `st-token-${n}`, expires_at: 0, expires_in: expiresIn });
}

/** Let every pending promise callback run (timers are mocked, setImmediate is not). */
export async function settle(rounds = 5) {
  for (let i = 0; i < rounds; i += 1) await new Promise((resolve) => setImmediate(resolve));
}
