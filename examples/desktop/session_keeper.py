"""A VideoDB session token from the broker, kept fresh for a desktop capture app: fetched with
the user's JWT from an id-token provider asked before every request (a callable, a command to
run, a file to reread), asked once more when the broker says 401 (the login may have been
renewed meanwhile), refreshed before it expires, one request at a time. Only httpx is needed.

    keeper = SessionTokenKeeper(broker_url, id_token_from_file(Path("~/.app/id-token")))
    token = keeper.get()
"""

from __future__ import annotations

import hashlib
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx

TOKEN_PATH = "/v1/capture/session/token"  # noqa: S105 - a path
SESSIONS_PATH = "/v1/capture/sessions"
# Statuses worth trying again later; anything else (401, 403, 422) needs the user or the app.
RETRYABLE = frozenset({408, 429, 500, 502, 503, 504})
MAX_BACKOFF_S = 60.0

IdTokenProvider = Callable[[], str]
"""The user's current JWT; called before every request to the broker."""

EventSink = Callable[..., None]
"""Told of each event: `sink("token_received", token=<fingerprint>, ...)`."""


class BrokerRefused(Exception):
    """The broker answered with a problem; `code` is its machine-readable reason."""

    def __init__(self, status: int, problem: dict[str, Any], retry_after: float | None) -> None:
        super().__init__(problem.get("detail") or f"HTTP {status}")
        self.status = status
        self.code = str(problem.get("code", "unknown"))
        self.retry_after = retry_after


class IdTokenUnavailable(Exception):
    """The id-token provider gave no token (its command failed, its file is missing or empty)."""


def fingerprint(token: str) -> str:
    """The broker's own log format for a token."""
    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()[:12]


def id_token_from_file(path: Path) -> IdTokenProvider:
    """Reread the file before every request: whatever renews the login rewrites it."""

    def read() -> str:
        try:
            token = path.read_text().strip()
        except OSError as exc:
            raise IdTokenUnavailable(f"cannot read the id-token file ({exc.strerror})") from None
        if not token:
            raise IdTokenUnavailable("the id-token file is empty")
        return token

    return read


def id_token_from_command(argv: Sequence[str], timeout: float = 30.0) -> IdTokenProvider:
    """Run the command before every request; its output is the JWT (e.g. a CLI's
    `print-identity-token`, which renews the login itself)."""
    command = list(argv)

    def run() -> str:
        try:
            result = subprocess.run(  # noqa: S603 - the user's own command, no shell
                command, capture_output=True, text=True, timeout=timeout, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise IdTokenUnavailable(
                f"the id-token command failed ({type(exc).__name__})"
            ) from None
        token = result.stdout.strip()
        if result.returncode != 0 or not token:  # its output is never shown: it may be a token
            raise IdTokenUnavailable(f"the id-token command exited {result.returncode}")
        return token

    return run


def id_token_fixed(token: str) -> IdTokenProvider:
    """One token (from the environment or stdin): nothing new to ask for after a 401."""
    return lambda: token


def _quiet(event: str, **fields: Any) -> None:
    """The default sink: events go nowhere."""


class SessionTokenKeeper:
    """Holds one session token and refreshes it `margin` seconds before it expires."""

    def __init__(
        self,
        broker: str,
        id_token: IdTokenProvider,
        expires_in: int | None = None,
        margin: float = 300,
        on_event: EventSink = _quiet,
    ) -> None:
        self._broker = broker.rstrip("/")
        self._id_token = id_token
        self._expires_in = expires_in
        self._margin = margin
        self._emit = on_event
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
                self._keep(self._post(TOKEN_PATH, 200))
            assert self.token is not None
            return self.token

    def create_session(self) -> str:
        """Create a capture session through the broker; keep the token that came with it."""
        with self._lock:
            data = self._post(SESSIONS_PATH, 201)
            self._keep(data)
            self._emit("capture_session_created", session_id=data["session_id"])
            return str(data["session_id"])

    def invalidate(self) -> str:
        """VideoDB said 401: drop the token and fetch a new one."""
        with self._lock:
            self.token = None
            self._keep(self._post(TOKEN_PATH, 200))
            assert self.token is not None
            return self.token

    def seconds_until_refresh(self) -> float:
        """How long the token held may be used before refreshing it."""
        return max(0.5, self.expires_at - time.time() - self._refresh_margin())

    def seconds_left(self) -> float:
        """Seconds before the token held expires (0 without one)."""
        return max(0.0, self.expires_at - time.time()) if self.token else 0.0

    def close(self) -> None:
        """Close the connection to the broker."""
        self._http.close()

    def _refresh_margin(self) -> float:
        # The granted lifetime, not the one asked for: the broker's default or VideoDB may
        # give less, and a margin longer than the token would mean fetching without pause.
        return min(self._margin, self.lifetime / 2)

    def _post(self, path: str, expected: int) -> dict[str, Any]:
        """POST with the provider's JWT; on a 401, ask the provider again and retry once."""
        body = {"expires_in": self._expires_in} if self._expires_in else {}
        response = self._send(path, body)
        if response.status_code == 401:
            # A creation refused at authentication created nothing: asking again is safe.
            self._emit("id_token_refused", note="asking the id-token provider again")
            response = self._send(path, body)
        return _answer(response, expected)

    def _send(self, path: str, body: dict[str, Any]) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self._id_token()}"}
        return self._http.post(self._broker + path, json=body, headers=headers)

    def _keep(self, data: dict[str, Any]) -> None:
        self.token = data["token"]
        self.lifetime = float(data["expires_in"])
        self.expires_at = time.time() + self.lifetime
        self.fetches += 1
        self._emit(
            "token_received",
            token=fingerprint(data["token"]),
            expires_in=data["expires_in"],
            fetches=self.fetches,
        )


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
    elif not isinstance(error, httpx.TransportError | IdTokenUnavailable):
        return None
    return min(MAX_BACKOFF_S, 2.0**failures)


def describe(error: Exception) -> str:
    """The problem's code, or the kind of failure (never a token)."""
    if isinstance(error, BrokerRefused):
        return error.code
    if isinstance(error, IdTokenUnavailable):
        return "id_token_unavailable"
    return type(error).__name__
