"""Several replicas on one real Redis; Redis killed and restarted under the broker."""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.fakes.broker_process import BrokerProcess
from tests.fakes.identity_provider import FakeIdentityProvider
from tests.fakes.redis_server import RedisServer
from tests.fakes.servers import ThreadedServer
from tests.fakes.videodb import FakeVideoDB
from tests.integration.conftest import AUDIENCE, TOKEN_PATH, assert_no_secret_in, broker_settings

pytestmark = pytest.mark.integration


def _replicas(
    count: int, idp: FakeIdentityProvider, videodb_url: str, redis_url: str, **extra: str
) -> list[BrokerProcess]:
    settings = broker_settings(idp, videodb_url, BROKER_REDIS_URL=redis_url, **extra)
    processes = [BrokerProcess(settings) for _ in range(count)]
    for process in processes:
        process.wait_ready()
    return processes


def _stop(processes: list[BrokerProcess]) -> None:
    for process in processes:
        process.terminate()
        assert_no_secret_in(process.output())


def _token(idp: FakeIdentityProvider, user: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {idp.issuers[0].mint(user, AUDIENCE)}"}


def test_two_replicas_share_one_upstream_call_and_the_cache(
    idp: FakeIdentityProvider,
    videodb: FakeVideoDB,
    videodb_server: tuple[FakeVideoDB, ThreadedServer],
    redis_server: RedisServer,
) -> None:
    _, server = videodb_server
    videodb.delay = 0.3
    replicas = _replicas(2, idp, server.url, redis_server.url)
    try:
        headers = _token(idp, "shared-user")
        with ThreadPoolExecutor(max_workers=40) as pool:
            responses = list(
                pool.map(
                    lambda i: httpx.post(
                        replicas[i % 2].url + TOKEN_PATH, headers=headers, timeout=10
                    ),
                    range(40),
                )
            )
        assert {r.status_code for r in responses} == {200}
        assert len({r.json()["token"] for r in responses}) == 1
        assert len(videodb.calls) == 1
        # A Redis dump alone holds no usable token: values are sealed.
        token = responses[0].json()["token"]
        dump = b"".join(
            redis_server.client().dump(key) or b"" for key in redis_server.client().keys("*")
        )
        assert token.encode() not in dump
        assert b"st-" not in dump
        assert b"shared-user" not in dump
    finally:
        _stop(replicas)


def test_limits_are_counted_across_replicas(
    idp: FakeIdentityProvider,
    videodb: FakeVideoDB,
    videodb_server: tuple[FakeVideoDB, ThreadedServer],
    redis_server: RedisServer,
) -> None:
    _, server = videodb_server
    replicas = _replicas(2, idp, server.url, redis_server.url, BROKER_RATE_LIMIT="4/minute")
    try:
        headers = _token(idp, "limited-user")
        statuses = [
            httpx.post(replicas[i % 2].url + TOKEN_PATH, headers=headers).status_code
            for i in range(6)
        ]
        assert statuses == [200, 200, 200, 200, 429, 429]
    finally:
        _stop(replicas)


@pytest.mark.parametrize("outage", ["killed", "frozen"])
def test_redis_lost_mid_run_then_back(
    idp: FakeIdentityProvider,
    videodb: FakeVideoDB,
    videodb_server: tuple[FakeVideoDB, ThreadedServer],
    redis_server: RedisServer,
    outage: str,
) -> None:
    """Killed: connections refused. Frozen (SIGSTOP): connections hang with no answer."""
    _, server = videodb_server
    (broker,) = _replicas(1, idp, server.url, redis_server.url)
    try:
        assert httpx.post(broker.url + TOKEN_PATH, headers=_token(idp, "a")).status_code == 200
        if outage == "killed":
            redis_server.kill()
        else:
            redis_server.freeze()
        for i in range(5):
            started = time.monotonic()
            resp = httpx.post(broker.url + TOKEN_PATH, headers=_token(idp, f"during-{i}"))
            assert resp.status_code == 200
            assert time.monotonic() - started < 1.5
        ready = httpx.get(broker.url + "/readyz")
        assert ready.status_code == 200  # degraded, not down: it still serves
        assert ready.json()["checks"]["redis"].startswith("degraded")
        assert "broker_redis_up 0.0" in httpx.get(broker.url + "/metrics").text
        incidents = [r for r in broker.log_records() if r["event"] == "redis_unavailable"]
        assert len(incidents) == 1  # logged once per incident
        if outage == "killed":
            redis_server.start()
        else:
            redis_server.thaw()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            httpx.post(broker.url + TOKEN_PATH, headers=_token(idp, "after"))
            if httpx.get(broker.url + "/readyz").json()["checks"]["redis"] == "ok":
                break
            time.sleep(0.5)
        assert httpx.get(broker.url + "/readyz").json()["checks"]["redis"] == "ok"
        assert any(r["event"] == "redis_recovered" for r in broker.log_records())
        assert "broker_redis_up 1.0" in httpx.get(broker.url + "/metrics").text
    finally:
        _stop([broker])


def test_a_replica_killed_mid_load_loses_no_request_on_the_other(
    idp: FakeIdentityProvider,
    videodb: FakeVideoDB,
    videodb_server: tuple[FakeVideoDB, ThreadedServer],
    redis_server: RedisServer,
) -> None:
    _, server = videodb_server
    videodb.delay = 0.05
    doomed, survivor = _replicas(2, idp, server.url, redis_server.url)
    statuses: list[int] = []
    stop = threading.Event()
    users = [f"load-{uuid.uuid4().hex[:6]}-{i}" for i in range(20)]
    headers = [_token(idp, user) for user in users]

    def load() -> None:
        i = 0
        with httpx.Client(timeout=10) as client:
            while not stop.is_set():
                statuses.append(
                    client.post(survivor.url + TOKEN_PATH, headers=headers[i % 20]).status_code
                )
                # the doomed replica works on the same users, so it holds Redis locks
                with contextlib.suppress(httpx.HTTPError):
                    client.post(doomed.url + TOKEN_PATH, headers=headers[(i + 1) % 20], timeout=1)
                i += 1

    workers = [threading.Thread(target=load) for _ in range(4)]
    for worker in workers:
        worker.start()
    time.sleep(0.7)
    doomed.proc.kill()
    doomed.proc.wait()
    time.sleep(1.5)
    stop.set()
    for worker in workers:
        worker.join(timeout=20)
    try:
        assert len(statuses) > 20
        assert set(statuses) == {200}
    finally:
        _stop([survivor])
