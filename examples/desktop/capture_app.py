"""What a desktop capture app does at start-up: with `--session`, create a capture session
through the broker (its id and a token in one round trip, the broker holding the key) and
start VideoDB's capture client on it; without, get a session token alone. Then keep the
token fresh: refreshed before expiry, and fresh before each new recording, as VideoDB's
clients need. A refresh that fails for a passing reason (the broker unreachable, 408, 429,
5xx) is tried again after Retry-After or a growing backoff while the token held stays in use.

    python capture_app.py --broker https://broker.example.com --id-token "$ID_TOKEN" --session

Only httpx is needed. With VideoDB's SDK (`pip install "videodb[capture]"`) the session is
started with `CaptureClient(client_token=...)` and `start_session(...)`; without its native
runtime (`videodb-capture-bin`), the program says so in one line and goes on keeping the
token fresh. The whole token is never printed: only a fingerprint.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import sys
import threading
import time
from typing import Any

import httpx

TOKEN_PATH = "/v1/capture/session/token"  # noqa: S105 - a path
SESSIONS_PATH = "/v1/capture/sessions"
# Statuses worth trying again later; anything else (401, 403, 422) needs the user or the app.
RETRYABLE = frozenset({408, 429, 500, 502, 503, 504})
MAX_BACKOFF_S = 60.0


class BrokerRefused(Exception):
    """The broker answered with a problem; `code` is its machine-readable reason."""

    def __init__(self, status: int, problem: dict[str, Any], retry_after: float | None) -> None:
        super().__init__(problem.get("detail") or f"HTTP {status}")
        self.status = status
        self.code = str(problem.get("code", "unknown"))
        self.retry_after = retry_after


def fingerprint(token: str) -> str:
    """The broker's own log format for a token."""
    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()[:12]


class SessionTokenKeeper:
    """Holds one session token and refreshes it `margin` seconds before it expires."""

    def __init__(
        self, broker: str, id_token: str, expires_in: int | None = None, margin: float = 300
    ) -> None:
        self._broker = broker.rstrip("/")
        self._url = self._broker + TOKEN_PATH
        self._id_token = id_token
        self._expires_in = expires_in
        self._margin = margin
        self._lock = threading.Lock()  # one request to the broker at a time
        self._http = httpx.Client(timeout=httpx.Timeout(10.0, connect=5.0))
        self.token: str | None = None
        self.expires_at = 0.0
        self.lifetime = 0.0  # what the broker granted the current token, in seconds
        self.fetches = 0

    def get(self) -> str:
        """A token with more than the refresh margin left, fetching if needed."""
        with self._lock:
            if self.token is None or self.expires_at - time.time() <= self._refresh_margin():
                self._fetch()
            assert self.token is not None
            return self.token

    def create_session(self) -> str:
        """Create a capture session through the broker; keep the token that came with it."""
        with self._lock:
            body = {"expires_in": self._expires_in} if self._expires_in else {}
            response = self._http.post(
                self._broker + SESSIONS_PATH,
                json=body,
                headers={"Authorization": f"Bearer {self._id_token}"},
            )
            data = _answer(response, 201)
            self._keep(data)
            emit("capture_session_created", session_id=data["session_id"])
            return str(data["session_id"])

    def invalidate(self) -> str:
        """VideoDB said 401: drop the token and fetch a new one."""
        with self._lock:
            self.token = None
            self._fetch()
            assert self.token is not None
            return self.token

    def seconds_until_refresh(self) -> float:
        return max(0.5, self.expires_at - time.time() - self._refresh_margin())

    def seconds_left(self) -> float:
        return max(0.0, self.expires_at - time.time()) if self.token else 0.0

    def _refresh_margin(self) -> float:
        # The granted lifetime, not the one asked for: the broker's default or VideoDB may
        # give less, and a margin longer than the token would mean fetching without pause.
        return min(self._margin, self.lifetime / 2)

    def _fetch(self) -> None:
        body = {"expires_in": self._expires_in} if self._expires_in else {}
        response = self._http.post(
            self._url, json=body, headers={"Authorization": f"Bearer {self._id_token}"}
        )
        self._keep(_answer(response, 200))

    def _keep(self, data: dict[str, Any]) -> None:
        self.token = data["token"]
        self.lifetime = float(data["expires_in"])
        self.expires_at = time.time() + self.lifetime
        self.fetches += 1
        emit(
            "token_received",
            token=fingerprint(data["token"]),
            expires_in=data["expires_in"],
            fetches=self.fetches,
        )

    def close(self) -> None:
        self._http.close()


def _answer(response: httpx.Response, expected: int) -> dict[str, Any]:
    """The broker's JSON answer, or BrokerRefused with its problem."""
    if response.status_code != expected:
        try:
            problem = response.json()
        except ValueError:
            problem = {}
        retry = response.headers.get("Retry-After")
        raise BrokerRefused(response.status_code, problem, float(retry) if retry else None)
    data: dict[str, Any] = response.json()
    return data


def retry_delay(error: Exception, failures: int) -> float | None:
    """Seconds to wait before the next attempt, or None when trying again cannot help."""
    if isinstance(error, BrokerRefused):
        if error.status not in RETRYABLE:
            return None
        if error.retry_after:
            return error.retry_after
    elif not isinstance(error, httpx.TransportError):
        return None
    return min(MAX_BACKOFF_S, 2.0**failures)


def emit(event: str, **fields: Any) -> None:
    """One JSON line per event, for humans and for tests."""
    print(json.dumps({"event": event, **fields}), flush=True)


def start_capture(session_id: str | None, token: str) -> None:
    """Start VideoDB's capture client on the session with this token, if the SDK can run."""
    try:
        from videodb.capture import CaptureClient  # type: ignore[import-untyped, import-not-found, unused-ignore]
    except ImportError:
        emit("videodb_sdk_absent", note='pip install "videodb[capture]" to start capturing')
        return
    try:
        client = CaptureClient(client_token=token)
    except RuntimeError as exc:  # the SDK without its native runtime (videodb-capture-bin)
        emit("videodb_capture_runtime_missing", note=str(exc).splitlines()[0])
        return
    emit("videodb_capture_client_ready", token=fingerprint(token))
    if session_id is not None:
        asyncio.run(_record(client, session_id))


async def _record(client: Any, session_id: str) -> None:
    channels = await client.list_channels()
    # the first microphone and the first display, as VideoDB's samples record
    chosen = [c for c in (channels.mics.default, channels.displays.default) if c is not None]
    if chosen:
        chosen[-1].is_primary = True
    await client.start_session(capture_session_id=session_id, channels=chosen)
    emit("capture_started", session_id=session_id)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--broker", default=os.environ.get("BROKER_URL", "http://127.0.0.1:8080"))
    parser.add_argument("--id-token", default=os.environ.get("ID_TOKEN"))
    parser.add_argument("--expires-in", type=int, default=None)
    parser.add_argument("--margin", type=float, default=300, help="refresh this early (s)")
    parser.add_argument("--run-for", type=float, default=0, help="stop after N s (0: forever)")
    parser.add_argument(
        "--session", action="store_true", help="create a capture session and start capturing"
    )
    args = parser.parse_args(argv)
    if not args.id_token:
        print("no bearer token: pass --id-token or set ID_TOKEN", file=sys.stderr)
        return 2
    keeper = SessionTokenKeeper(args.broker, args.id_token, args.expires_in, args.margin)
    deadline = time.time() + args.run_for if args.run_for else float("inf")
    handed, failures = False, 0
    session_id: str | None = None
    try:
        while True:
            try:
                if args.session and session_id is None:
                    session_id = keeper.create_session()  # a fresh token comes with it
                token = keeper.get()
            except (BrokerRefused, httpx.HTTPError) as exc:
                failures += 1
                delay = retry_delay(exc, failures)
                if delay is None:
                    report_failure(exc)
                    return 1
                emit(
                    "refresh_failed",
                    reason=describe(exc),
                    retry_in=delay,
                    token_seconds_left=round(keeper.seconds_left(), 1),
                )
                wait = delay
            else:
                failures = 0
                if not handed:
                    start_capture(session_id, token)
                    handed = True
                wait = keeper.seconds_until_refresh()
            now = time.time()
            if now + wait >= deadline:
                time.sleep(max(0.0, deadline - now))
                break
            time.sleep(wait)
    except KeyboardInterrupt:
        pass
    finally:
        keeper.close()
    emit("stopped", fetches=keeper.fetches)
    return 0 if keeper.fetches else 1  # stopped without ever getting a token: a failure


def describe(error: Exception) -> str:
    """The problem's code, or the kind of network failure (never a token)."""
    return error.code if isinstance(error, BrokerRefused) else type(error).__name__


def report_failure(error: Exception) -> None:
    if isinstance(error, BrokerRefused):
        emit(
            "broker_refused",
            status=error.status,
            code=error.code,
            detail=str(error),
            retry_after=error.retry_after,
        )
    else:
        emit("broker_unreachable", error=type(error).__name__)


if __name__ == "__main__":
    sys.exit(main())
