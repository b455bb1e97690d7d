"""What a desktop capture app does at start-up: with `--session`, create a capture session
through the broker (its id and a token in one round trip, the broker holding the key) and
start VideoDB's capture client on it; without, get a session token alone. Then keep the
token fresh: refreshed before expiry, and fresh before each new recording, as VideoDB's
clients need. A refresh that fails for a passing reason (the broker unreachable, 408, 429,
5xx) is tried again after Retry-After or a growing backoff while the token held stays in use.

    python capture_app.py --broker https://broker.example.com --id-token-file ~/.app/id-token

The user's JWT comes from an id-token provider asked before every request (session_keeper.py):
a file reread each time (--id-token-file), a command run each time (--id-token-command), or
one token from stdin (--id-token-stdin) or the ID_TOKEN environment variable; never from the
command line, where `ps` shows it. On a 401 the provider is asked once more before giving up.

Only httpx is needed. With VideoDB's SDK (`pip install "videodb[capture]"`) the session is
started with `CaptureClient(client_token=...)` and `start_session(...)`; without its native
runtime (`videodb-capture-bin`), the program says so in one line and goes on keeping the
token fresh. The whole token is never printed: only a fingerprint.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from session_keeper import (
    BrokerRefused,
    IdTokenProvider,
    IdTokenUnavailable,
    SessionTokenKeeper,
    describe,
    fingerprint,
    id_token_fixed,
    id_token_from_command,
    id_token_from_file,
    retry_delay,
)


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


WHERE = "Use --id-token-file PATH, --id-token-command CMD, --id-token-stdin or ID_TOKEN."


def id_token_provider(args: argparse.Namespace) -> IdTokenProvider | None:
    """The provider the options name, else ID_TOKEN; None when there is none."""
    if args.id_token_file is not None:
        return id_token_from_file(args.id_token_file.expanduser())
    if args.id_token_command:
        return id_token_from_command(shlex.split(args.id_token_command))
    if args.id_token_stdin:
        token = sys.stdin.readline().strip()
        return id_token_fixed(token) if token else None
    token = os.environ.get("ID_TOKEN", "")
    return id_token_fixed(token) if token else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--broker", default=os.environ.get("BROKER_URL", "http://127.0.0.1:8080"))
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--id-token-file", type=Path, help="reread before every request")
    source.add_argument("--id-token-command", help="run before every request; prints the JWT")
    source.add_argument("--id-token-stdin", action="store_true", help="read one JWT from stdin")
    parser.add_argument("--expires-in", type=int, default=None)
    parser.add_argument("--margin", type=float, default=300, help="refresh this early (s)")
    parser.add_argument("--run-for", type=float, default=0, help="stop after N s (0: forever)")
    parser.add_argument(
        "--session", action="store_true", help="create a capture session and start capturing"
    )
    argv = sys.argv[1:] if argv is None else argv
    if any(arg == "--id-token" or arg.startswith("--id-token=") for arg in argv):
        # Refused by name and never echoed (argparse would repeat the value in its error).
        print(
            f"--id-token is not taken: a token on the command line shows in ps. {WHERE}",
            file=sys.stderr,
        )
        return 2
    args = parser.parse_args(argv)
    id_token = id_token_provider(args)
    if id_token is None:
        print(f"no bearer token. {WHERE}", file=sys.stderr)
        return 2
    keeper = SessionTokenKeeper(args.broker, id_token, args.expires_in, args.margin, on_event=emit)
    deadline = time.time() + args.run_for if args.run_for else float("inf")
    handed, failures = False, 0
    session_id: str | None = None
    try:
        while True:
            try:
                if args.session and session_id is None:
                    session_id = keeper.create_session()  # a fresh token comes with it
                token = keeper.get()
            except (BrokerRefused, httpx.HTTPError, IdTokenUnavailable) as exc:
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
