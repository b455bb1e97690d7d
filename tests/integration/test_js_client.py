"""clients/js under Node's own test runner: its unit tests (a mocked clock, the feed over real
sockets, the event-stream reader against eventsource-parser), then its calls against a running
broker, whose log lines tell what reached it."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Iterator

import httpx
import pytest
from jose import jwt

from app.sandbox.stand_in_videodb import StandInVideoDB
from harness.broker_process import BrokerProcess, free_port
from harness.servers import ThreadedServer
from tests.fakes.videodb_live import FakeLiveVideoDB, live_plane
from tests.integration.conftest import API_KEY, TOKEN_PATH, assert_no_secret_in
from tests.integration.js_package import (
    JS_DIR,
    built_package,
    node_process,
    node_test,
    summary,
)

pytestmark = pytest.mark.integration

AUDIENCE = "js-client-tests"
SHARED_SECRET = "js-client-tests-shared-secret-not-for-production"
UNIT_FILES = ["event-stream.test.mjs", "token-source.test.mjs", "capture-sessions.test.mjs"]


@pytest.mark.parametrize("name", [*UNIT_FILES, "follow.test.mjs"])
def test_the_package_passes_its_own_tests(name: str) -> None:
    code, output = node_test([name])
    counts = summary(output)
    assert code == 0, output
    assert counts.get("fail") == 0, output
    assert counts.get("pass", 0) >= 4, output  # they ran, not skipped
    assert counts.get("skipped") == 0, output


def _settings(videodb_url: str, **extra: str) -> dict[str, str]:
    """The broker in shared-secret mode, so that the Node tests sign their users' JWTs."""
    return {
        "VIDEO_DB_API_KEY": API_KEY,
        "VIDEO_DB_API": videodb_url,
        "BROKER_AUTH_HS256_SECRET": SHARED_SECRET,
        "BROKER_AUTH_ALGORITHMS": "HS256",
        "BROKER_AUTH_AUDIENCE": AUDIENCE,
        "BROKER_AUTH_LEEWAY_SECONDS": "0",
        "BROKER_CAPTURE_SESSIONS": "on",
        "BROKER_RATE_LIMIT": "5/minute",
        "BROKER_UPSTREAM_TIMEOUT": "2",
        "BROKER_CIRCUIT_FAILURE_THRESHOLD": "1000",
        **extra,
    }


@pytest.fixture(scope="module")
def js_broker(videodb_server: tuple[StandInVideoDB, ThreadedServer]) -> Iterator[BrokerProcess]:
    """The broker with live capture off."""
    _, server = videodb_server
    process = BrokerProcess(_settings(server.url)).wait_ready()
    yield process
    process.terminate()
    assert_no_secret_in(process.output())


def test_the_package_against_a_running_broker(js_broker: BrokerProcess) -> None:
    code, output = node_test(
        ["broker.test.mjs"],
        env={
            "BROKER_URL": js_broker.url,
            "BROKER_TEST_HS256_SECRET": SHARED_SECRET,
            "BROKER_TEST_AUDIENCE": AUDIENCE,
        },
    )
    counts = summary(output)
    assert code == 0, output
    assert (counts.get("fail"), counts.get("pass")) == (0, 6), output
    records = js_broker.log_records()

    def issued(user: str) -> int:
        return sum(r.get("event") == "token_issued" and r.get("user_id") == user for r in records)

    assert issued("js-token") == 1  # three callers, one request
    assert issued("js-relogin") == 1  # after the expired JWT's 401
    assert issued("js-recorder") == 0  # the session's own token served getToken()
    created = [r for r in records if r.get("event") == "capture_session_created"]
    assert {"js-recorder", "js-no-live"} <= {r["user_id"] for r in created}
    limited = [r for r in records if r.get("status") == 429 and r.get("path") == TOKEN_PATH]
    assert len(limited) == 1  # asked again within Retry-After: nothing was sent
    assert_no_secret_in(output)


def test_the_package_publishes_its_build_and_types_only() -> None:
    """What `npm publish` would upload: the compiled ESM and its .d.ts, no source or tests,
    and no runtime dependency."""
    package = built_package()
    result = subprocess.run(
        ["npm", "pack", "--dry-run", "--json", "--ignore-scripts"],
        cwd=package,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    (packed,) = json.loads(result.stdout)
    files = {entry["path"] for entry in packed["files"]}
    assert {"package.json", "README.md", "dist/index.js", "dist/index.d.ts"} <= files
    assert not {f for f in files if f.startswith(("src/", "test/", "node_modules/"))}
    manifest = json.loads((JS_DIR / "package.json").read_text())
    assert "dependencies" not in manifest
    assert manifest["exports"]["."]["types"] == "./dist/index.d.ts"


def test_a_typescript_app_using_the_package_compiles_and_misuse_does_not() -> None:
    """test/types/app.ts imports the package by its name, as a user's app would; lines
    marked @ts-expect-error must be refused by the compiler."""
    package = built_package()
    result = subprocess.run(
        [str(package / "node_modules" / ".bin" / "tsc"), "-p", "test/types"],
        cwd=package,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _id_token(user: str) -> str:
    now = int(time.time())
    claims = {"sub": user, "aud": AUDIENCE, "iat": now, "exp": now + 600}
    token: str = jwt.encode(claims, SHARED_SECRET, algorithm="HS256")
    return token


@pytest.fixture(scope="module")
def plane() -> Iterator[tuple[FakeLiveVideoDB, ThreadedServer]]:
    """VideoDB's stand-in with its live plane: a real WebSocket, webhooks, export."""
    with live_plane(StandInVideoDB(api_key=API_KEY)) as live:
        server = ThreadedServer(live).start()
        yield live, server
        server.stop()


@pytest.fixture
def live_js_broker(plane: tuple[FakeLiveVideoDB, ThreadedServer]) -> Iterator[BrokerProcess]:
    """The broker with live capture on, before the live plane."""
    _, server = plane
    port = free_port()
    settings = _settings(
        server.url,
        BROKER_CAPTURE_LIVE="on",
        BROKER_PUBLIC_URL=f"http://127.0.0.1:{port}",
        BROKER_CAPTURE_WEBHOOK_SECRET="a-webhook-secret-for-the-client-tests-only",
        BROKER_CAPTURE_PIPELINES=json.dumps([{"channel": "mic", "run": "transcript"}]),
    )
    process = BrokerProcess(settings, port=port).wait_ready()
    yield process
    process.terminate()
    assert_no_secret_in(process.output())


def _metric(broker: BrokerProcess, name: str) -> float:
    """A sample of the broker's /metrics (0 when absent)."""
    for line in httpx.get(broker.url + "/metrics").text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _until(condition: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition never held")
        time.sleep(0.05)


def test_the_package_follows_a_live_session_end_to_end(
    live_js_broker: BrokerProcess, plane: tuple[FakeLiveVideoDB, ThreadedServer]
) -> None:
    """The whole loop under Node: the owner's feed open through the package, VideoDB's AI
    events relayed to it live, the recording exported; then resumed, exported, and refused to
    another user (clients/js/test/broker.test.mjs, "a live session")."""
    live, _ = plane
    created = httpx.post(
        live_js_broker.url + "/v1/capture/sessions",
        headers={"Authorization": f"Bearer {_id_token('js-follower')}"},
        json={},
    )
    assert created.status_code == 201, created.text
    session_id = created.json()["session_id"]
    live.set_status(session_id, "active")
    assert live.webhook_now(session_id).status_code == 200
    _until(lambda: live.threaded_socket.open == 1)  # the broker's socket to VideoDB
    node = node_process(
        ["broker.test.mjs"],
        env={
            "BROKER_URL": live_js_broker.url,
            "BROKER_TEST_HS256_SECRET": SHARED_SECRET,
            "BROKER_TEST_AUDIENCE": AUDIENCE,
            "BROKER_TEST_LIVE": "1",
            "BROKER_TEST_LIVE_SESSION": session_id,
        },
    )
    try:
        _until(lambda: _metric(live_js_broker, "broker_capture_open_feeds") == 1)
        transcript = {"text": "hello", "is_final": True, "start": 1.5, "end": 2.0}
        live.threaded_socket.send(json.dumps({"channel": "transcript", "data": transcript}))
        live.threaded_socket.send("not json")
        live.threaded_socket.send(
            json.dumps({"channel": "scene_index", "data": {"text": "a slide"}})
        )
        relayed = 'broker_capture_live_events_total{outcome="relayed"}'
        _until(lambda: _metric(live_js_broker, relayed) >= 2)
        live.set_status(session_id, "exported", exported_video_id="m-42")
        assert live.webhook_now(session_id, "capture_session.exported").status_code == 200
        output, _ = node.communicate(timeout=120)
    finally:
        if node.poll() is None:
            node.kill()
            node.communicate()
    counts = summary(output)
    assert node.returncode == 0, output
    assert (counts.get("fail"), counts.get("pass")) == (0, 8), output
