"""Several replicas on one real Redis; Redis killed and restarted under the broker."""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from app.sandbox.stand_in_videodb import StandInVideoDB
from app.tokens.cache import cache_key
from harness.broker_process import BrokerProcess
from harness.servers import ThreadedServer
from tests.fakes.identity_provider import FakeIdentityProvider
from tests.fakes.redis_server import RedisServer
from tests.fakes.redis_topologies import BROKER_ACL
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
    videodb: StandInVideoDB,
    videodb_server: tuple[StandInVideoDB, ThreadedServer],
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
    videodb: StandInVideoDB,
    videodb_server: tuple[StandInVideoDB, ThreadedServer],
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
    videodb: StandInVideoDB,
    videodb_server: tuple[StandInVideoDB, ThreadedServer],
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
    videodb: StandInVideoDB,
    videodb_server: tuple[StandInVideoDB, ThreadedServer],
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

    def until(count: int) -> None:
        """Until this many requests were answered: counted, not timed (a busy machine is slow)."""
        deadline = time.monotonic() + 60
        while len(statuses) < count and time.monotonic() < deadline:
            time.sleep(0.05)

    workers = [threading.Thread(target=load) for _ in range(4)]
    for worker in workers:
        worker.start()
    until(10)  # load is on both replicas, the doomed one holding Redis locks
    doomed.proc.kill()
    doomed.proc.wait()
    answered_before = len(statuses)
    until(answered_before + 20)  # and after the kill, on the survivor alone
    stop.set()
    for worker in workers:
        worker.join(timeout=20)
    try:
        assert len(statuses) >= answered_before + 20
        assert set(statuses) == {200}
    finally:
        _stop([survivor])


def test_a_mint_lock_planted_in_redis_costs_at_most_one_lock_lifetime(
    idp: FakeIdentityProvider,
    videodb: StandInVideoDB,
    videodb_server: tuple[StandInVideoDB, ThreadedServer],
    redis_server: RedisServer,
) -> None:
    """Whoever can write to Redis can plant a mint lock and a failure marker that never
    expire: every request of that user was a 502 at once, for good (or, the lock alone, a
    stall of a lock lifetime on every mint). Now a marker the broker did not set is cut to
    its lifetime when first met (BROKER_UPSTREAM_TIMEOUT 1 s: a lock lives 1.5 s), then the
    broker mints."""
    _, server = videodb_server
    (broker,) = _replicas(1, idp, server.url, redis_server.url, BROKER_CACHE_MAX_ENTRIES="0")
    planted = redis_server.client()
    lifetime_ms = 1500  # the upstream timeout and half a second
    try:
        for user, with_failure in (("victim", True), ("stalled", False)):
            key = cache_key(user, 900, server.url)
            lock, failure = f"vtb:v1:lock:{key}", f"vtb:v1:fail:{key}"
            planted.set(lock, b"not-the-brokers")
            if with_failure:
                planted.set(failure, b"upstream_error")
            headers = _token(idp, user)
            first = httpx.post(broker.url + TOKEN_PATH, headers=headers, timeout=10)
            assert first.status_code == (502 if with_failure else 200)
            # It was -1, never expiring: now it expires within its lifetime, or already did.
            for marker, limit in ((lock, lifetime_ms), (failure, 1000)):
                left = planted.pttl(marker)
                assert left == -2 or 0 < left <= limit, (marker, left)
            deadline = time.monotonic() + 20  # far past the 1.5 s it now has
            while planted.exists(lock, failure) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert not planted.exists(lock, failure)
            calls = len(videodb.calls)
            # no token to reuse (whichever key sealed it): the next request mints
            for sealed in planted.keys(f"vtb:v1:tok:*:{key}"):
                planted.delete(sealed)
            resp = httpx.post(broker.url + TOKEN_PATH, headers=headers, timeout=10)
            assert resp.status_code == 200
            assert len(videodb.calls) == calls + 1
        capped = [r for r in broker.log_records() if r.get("event") == "redis_marker_capped"]
        assert {(r["kind"], r["expiry_ms"]) for r in capped} == {
            ("mint_lock", -1),
            ("failure_marker", -1),
        }
    finally:
        _stop([broker])


def test_the_documented_redis_acl_is_all_the_broker_needs(
    idp: FakeIdentityProvider,
    videodb: StandInVideoDB,
    videodb_server: tuple[StandInVideoDB, ThreadedServer],
    redis_server: RedisServer,
) -> None:
    _, server = videodb_server
    admin = redis_server.client()
    acl = ("ACL", "SETUSER", "broker", *BROKER_ACL.split(), ">broker-password")  # as documented
    admin.execute_command(*acl)  # type: ignore[no-untyped-call]
    url = f"redis://broker:broker-password@127.0.0.1:{redis_server.port}/0"
    settings = {"BROKER_RATE_LIMIT": "2/minute", "BROKER_CACHE_MAX_ENTRIES": "0"}
    (broker,) = _replicas(1, idp, server.url, url, **settings)
    try:
        headers = _token(idp, "acl-user")
        statuses = [httpx.post(broker.url + TOKEN_PATH, headers=headers).status_code]
        admin.delete(*admin.keys("vtb:v1:tok:*"))  # a mint again, the lock taken again
        statuses += [httpx.post(broker.url + TOKEN_PATH, headers=headers).status_code for _ in "ab"]
        assert statuses == [200, 200, 429]  # the limit, counted in Redis
        assert len(videodb.calls) == 2  # the second request minted: nothing cached to reuse
        key = cache_key("planted", 900, server.url)
        admin.set(f"vtb:v1:lock:{key}", b"x")  # met and capped: PTTL and PEXPIRE in a script
        assert (
            httpx.post(broker.url + TOKEN_PATH, headers=_token(idp, "planted")).status_code == 200
        )
        assert admin.pttl(f"vtb:v1:lock:{key}") != -1
        refused = [
            r
            for r in broker.log_records()
            if r.get("event") in ("redis_command_refused", "redis_unavailable")
        ]
        assert refused == []
        assert httpx.get(broker.url + "/readyz").json()["checks"]["redis"] == "ok"
    finally:
        _stop([broker])
