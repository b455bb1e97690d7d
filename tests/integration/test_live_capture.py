"""Live capture from outside: the broker as a process (or two, sharing a real Redis),
VideoDB's REST side stood in over HTTP and its WebSocket by a real `websockets` server."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import httpx
import pytest

from app.sandbox.stand_in_videodb import StandInVideoDB
from harness.broker_process import BrokerProcess, free_port
from harness.servers import ThreadedServer
from tests.fakes.identity_provider import FakeIdentityProvider
from tests.fakes.redis_server import RedisServer
from tests.fakes.videodb_live import FakeLiveVideoDB, live_plane
from tests.integration.conftest import API_KEY, AUDIENCE, assert_no_secret_in, broker_settings

pytestmark = pytest.mark.integration

WEBHOOK_SECRET = "live-capture-webhook-secret-of-32-bytes!"
PIPELINES = [
    {"channel": "mic", "run": "transcript"},
    {"channel": "system_audio", "run": "audio_index", "prompt": "Summarise"},
    {"channel": "screen", "run": "visual_index", "batch": {"time": 5, "frame_count": 2}},
]
SESSIONS = "/v1/capture/sessions"


@pytest.fixture(scope="module")
def plane() -> Iterator[tuple[FakeLiveVideoDB, ThreadedServer]]:
    fake = StandInVideoDB(api_key=API_KEY)
    with live_plane(fake) as live:
        server = ThreadedServer(live).start()
        yield live, server
        server.stop()


@pytest.fixture
def live(plane: tuple[FakeLiveVideoDB, ThreadedServer]) -> FakeLiveVideoDB:
    fake, _ = plane
    fake.base.reset()
    fake.step_calls.clear()
    fake.export_calls.clear()
    fake.step_fault = None
    fake.websocket_requests = 0
    return fake


def _live_settings(
    idp: FakeIdentityProvider, videodb_url: str, port: int, **extra: str
) -> dict[str, str]:
    return broker_settings(
        idp,
        videodb_url,
        BROKER_CAPTURE_SESSIONS="on",
        BROKER_CAPTURE_LIVE="on",
        BROKER_PUBLIC_URL=f"http://127.0.0.1:{port}",
        BROKER_CAPTURE_WEBHOOK_SECRET=WEBHOOK_SECRET,
        BROKER_CAPTURE_PIPELINES=json.dumps(PIPELINES),
        BROKER_UPSTREAM_TIMEOUT="5",
        **extra,
    )


@pytest.fixture
def broker(
    idp: FakeIdentityProvider, plane: tuple[FakeLiveVideoDB, ThreadedServer]
) -> Iterator[BrokerProcess]:
    _, server = plane
    port = free_port()
    process = BrokerProcess(_live_settings(idp, server.url, port), port=port).wait_ready()
    yield process
    process.terminate()


def _bearer(idp: FakeIdentityProvider, user: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {idp.issuers[-1].mint(user, AUDIENCE)}"}


def _create(broker: BrokerProcess, headers: dict[str, str]) -> str:
    resp = httpx.post(broker.url + SESSIONS, headers=headers, json={})
    assert resp.status_code == 201, resp.text
    session_id: str = resp.json()["session_id"]
    return session_id


@dataclass
class Feed:
    """An owner's feed read in a thread until it ends: its events and its status."""

    url: str
    headers: dict[str, str]
    events: list[dict[str, str]] = field(default_factory=list)
    status: int = 0
    opened: threading.Event = field(default_factory=threading.Event)
    ended: threading.Event = field(default_factory=threading.Event)

    def start(self) -> Feed:
        threading.Thread(target=self._read, daemon=True).start()
        assert self.opened.wait(15), "the feed did not open"
        return self

    def _read(self) -> None:
        try:
            with httpx.stream("GET", self.url, headers=self.headers, timeout=60) as resp:
                self.status = resp.status_code
                self.opened.set()
                current: dict[str, str] = {}
                for line in resp.iter_lines():
                    if not line:
                        if current:
                            self.events.append(current)
                        current = {}
                    elif not line.startswith(":"):
                        name, _, value = line.partition(":")
                        current[name] = value.removeprefix(" ")
        finally:
            self.opened.set()
            self.ended.set()

    def wait_for(self, count: int, timeout: float = 20) -> list[dict[str, str]]:
        deadline = time.monotonic() + timeout
        while len(self.events) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.events


def _until(condition: object, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(condition) and condition():
            return
        time.sleep(0.05)
    raise AssertionError("condition never held")


def test_the_whole_loop_for_the_owner(
    broker: BrokerProcess, idp: FakeIdentityProvider, live: FakeLiveVideoDB
) -> None:
    owner = _bearer(idp, "live-owner")
    session_id = _create(broker, owner)
    callback = live.base.sessions[session_id]["callback_url"]
    assert callback.startswith(f"{broker.url}/v1/capture/webhooks/")
    assert WEBHOOK_SECRET not in callback
    feed = Feed(f"{broker.url}{SESSIONS}/{session_id}/events", owner).start()
    assert feed.status == 200
    live.set_status(session_id, "active")
    answer = live.webhook_now(session_id)
    assert (answer.status_code, answer.json()) == (200, {"received": True})
    _until(lambda: len(live.step_calls) == 2 and live.threaded_socket.open == 1)
    # audio_index is skipped: the session has no system_audio stream
    assert sorted(path for path, _ in live.step_calls) == [
        "/rtstream/rts-mic-1/transcription",
        "/rtstream/rts-screen-1/index/scene",
    ]
    connection = f"conn-{live.threaded_socket.opened}"
    assert all(body["ws_connection_id"] == connection for _, body in live.step_calls)
    visual = dict(live.step_calls)["/rtstream/rts-screen-1/index/scene"]
    assert visual["extraction_type"] == "time"
    assert visual["extraction_config"] == {"time": 5, "frame_count": 2}
    assert "live_step_skipped" in broker.output()
    live.threaded_socket.send("not json")
    live.threaded_socket.send(json.dumps({"channel": "unknown", "data": {"text": "x"}}))
    transcript = {"text": "hello", "is_final": True, "start": 1.5, "end": 2.0}
    live.threaded_socket.send(
        json.dumps({"channel": "transcript", "data": {**transcript, "rtstream_id": "rts-mic-1"}})
    )
    live.threaded_socket.send(json.dumps({"channel": "scene_index", "data": {"text": "a slide"}}))
    (first, second) = feed.wait_for(2)[:2]
    assert (first["event"], json.loads(first["data"])) == ("transcript", transcript)
    assert (second["event"], json.loads(second["data"])) == ("visual_index", {"text": "a slide"})
    live.set_status(session_id, "exported", exported_video_id="m-42")
    assert live.webhook_now(session_id, "capture_session.exported").status_code == 200
    assert feed.ended.wait(20), "the feed did not end after the final status"
    final = feed.events[-1]
    assert (final["event"], json.loads(final["data"])) == (
        "status",
        {"status": "exported", "exported_video_id": "m-42"},
    )
    assert [int(e["id"]) for e in feed.events] == list(range(1, len(feed.events) + 1))
    _until(lambda: live.threaded_socket.open == 0)  # closed after the grace for trailing events
    replay = Feed(
        f"{broker.url}{SESSIONS}/{session_id}/events", {**owner, "Last-Event-ID": "1"}
    ).start()
    assert replay.ended.wait(20)
    assert [e["id"] for e in replay.events] == [e["id"] for e in feed.events[1:]]
    output = broker.output()
    assert live.threaded_socket.secret not in output
    assert WEBHOOK_SECRET not in output
    assert callback.rsplit("/", 1)[1] not in output
    assert_no_secret_in(output)


def test_a_forged_webhook_starts_nothing_and_a_wrong_path_reaches_nothing(
    broker: BrokerProcess, idp: FakeIdentityProvider, live: FakeLiveVideoDB
) -> None:
    session_id = _create(broker, _bearer(idp, "forged-owner"))
    reads_before = len(live.base.session_calls)
    wrong = httpx.post(
        f"{broker.url}/v1/capture/webhooks/not-the-segment",
        json={"capture_session_id": session_id},
    )
    assert wrong.status_code == 404
    assert wrong.json()["code"] == "not_found"
    assert len(live.base.session_calls) == reads_before  # no upstream call
    answer = live.webhook_now(session_id)  # VideoDB says the session is only `created`
    assert answer.status_code == 200
    _until(lambda: len(live.base.session_calls) == reads_before + 1)  # one read, nothing else
    time.sleep(0.5)
    assert live.websocket_requests == 0
    assert live.step_calls == []
    callback = live.base.sessions[session_id]["callback_url"]
    garbage = httpx.post(callback, content=b"[1, 2")
    assert garbage.status_code == 422


def test_another_users_feed_and_export_are_404_and_reach_nothing_upstream(
    broker: BrokerProcess, idp: FakeIdentityProvider, live: FakeLiveVideoDB
) -> None:
    session_id = _create(broker, _bearer(idp, "the-owner"))
    stranger = _bearer(idp, "a-stranger")
    feed = httpx.get(f"{broker.url}{SESSIONS}/{session_id}/events", headers=stranger)
    export = httpx.post(f"{broker.url}{SESSIONS}/{session_id}/export", headers=stranger)
    unknown = httpx.post(f"{broker.url}{SESSIONS}/cap-nobody/export", headers=stranger)
    assert [r.status_code for r in (feed, export, unknown)] == [404, 404, 404]
    assert live.export_calls == []


def test_export_is_polled_by_calling_again(
    broker: BrokerProcess, idp: FakeIdentityProvider, live: FakeLiveVideoDB
) -> None:
    owner = _bearer(idp, "exporter")
    session_id = _create(broker, owner)
    url = f"{broker.url}{SESSIONS}/{session_id}/export"
    first = httpx.post(url, headers=owner)
    assert first.status_code == 200
    assert first.json() == {"session_id": session_id, "export_status": "exporting"}
    done = httpx.post(url, headers=owner).json()
    assert done == {
        "session_id": session_id,
        "export_status": "exported",
        "video_id": "m-123",
        "stream_url": "https://stream.videodb.io/m-123.m3u8",
        "player_url": "https://console.videodb.io/player?m-123",
    }


def test_a_user_has_at_most_five_open_feeds(
    broker: BrokerProcess, idp: FakeIdentityProvider, live: FakeLiveVideoDB
) -> None:
    owner = _bearer(idp, "many-tabs")
    session_id = _create(broker, owner)
    url = f"{broker.url}{SESSIONS}/{session_id}/events"
    feeds = [Feed(url, owner).start() for _ in range(5)]
    assert [f.status for f in feeds] == [200] * 5
    sixth = httpx.get(url, headers=owner)
    assert sixth.status_code == 429
    assert sixth.json()["code"] == "rate_limited"


def test_a_refused_step_is_counted_and_the_others_still_run(
    broker: BrokerProcess, idp: FakeIdentityProvider, live: FakeLiveVideoDB
) -> None:
    live.step_fault = "400"
    session_id = _create(broker, _bearer(idp, "refused-steps"))
    live.set_status(session_id, "active")
    assert live.webhook_now(session_id).status_code == 200
    _until(lambda: len(live.step_calls) >= 2)
    time.sleep(0.5)
    metrics = httpx.get(broker.url + "/metrics").text
    assert 'broker_capture_pipeline_starts_total{outcome="failed",step="transcript"}' in metrics


def test_two_replicas_start_each_step_once_and_either_serves_the_feed(
    idp: FakeIdentityProvider, plane: tuple[FakeLiveVideoDB, ThreadedServer], live: FakeLiveVideoDB
) -> None:
    _, server = plane
    redis_server = RedisServer().start()
    port_a, port_b = free_port(), free_port()
    replicas = [
        BrokerProcess(
            _live_settings(idp, server.url, port_a, BROKER_REDIS_URL=redis_server.url), port=port
        )
        for port in (port_a, port_b)
    ]
    try:
        for replica in replicas:
            replica.wait_ready()
        owner = _bearer(idp, "two-replicas")
        session_id = _create(replicas[0], owner)
        feed = Feed(f"{replicas[1].url}{SESSIONS}/{session_id}/events", owner).start()
        live.set_status(session_id, "active")
        segment = live.base.sessions[session_id]["callback_url"].rsplit("/", 1)[1]
        body = {"event": "capture_session.active", "capture_session_id": session_id}
        urls = [f"{r.url}/v1/capture/webhooks/{segment}" for r in replicas] * 2
        with ThreadPoolExecutor(4) as pool:
            statuses = list(pool.map(lambda u: httpx.post(u, json=body).status_code, urls))
        assert statuses == [200] * 4
        _until(lambda: live.threaded_socket.open == 1 and len(live.step_calls) >= 2)
        time.sleep(1.0)  # any duplicate would have started by now
        assert live.websocket_requests == 1
        assert len({path for path, _ in live.step_calls}) == len(live.step_calls)
        live.threaded_socket.send(json.dumps({"channel": "transcript", "data": {"text": "across"}}))
        events = feed.wait_for(1)
        assert json.loads(events[0]["data"]) == {"text": "across"}
    finally:
        for replica in replicas:
            replica.terminate()
        redis_server.kill()


def test_sigterm_ends_open_feeds_and_the_broker_stops_cleanly(
    idp: FakeIdentityProvider, plane: tuple[FakeLiveVideoDB, ThreadedServer], live: FakeLiveVideoDB
) -> None:
    _, server = plane
    port = free_port()
    process = BrokerProcess(_live_settings(idp, server.url, port), port=port).wait_ready()
    owner = _bearer(idp, "shutdown-owner")
    session_id = _create(process, owner)
    live.set_status(session_id, "active")
    feed = Feed(f"{process.url}{SESSIONS}/{session_id}/events", owner).start()
    assert live.webhook_now(session_id).status_code == 200
    _until(lambda: live.threaded_socket.open == 1)
    assert process.terminate() == 0  # within the grace period, "broker_stopped" logged
    assert feed.ended.wait(10)
    _until(lambda: live.threaded_socket.open == 0)  # VideoDB's socket closed too
