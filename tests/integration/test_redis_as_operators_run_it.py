"""The broker as a process on Redis as operators run it: TLS verified against a CA file with
an ACL user, a three-node Cluster losing a primary mid-load, and a Sentinel failover mid-load.
Through each, every request is answered: the only effect is the documented degradation
(served from the process, readiness `degraded`, one `redis_unavailable`), then recovery."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import httpx
import pytest

from app.sandbox.stand_in_videodb import StandInVideoDB
from harness.broker_process import BrokerProcess
from harness.servers import ThreadedServer
from tests.fakes.identity_provider import FakeIdentityProvider
from tests.fakes.redis_topologies import (
    BROKER_ACL,
    BROKER_PASSWORD,
    SENTINEL_SERVICE,
    ClusterOfThree,
    SentinelGroup,
    TlsRedisServer,
    add_broker_user,
)
from tests.integration.conftest import AUDIENCE, TOKEN_PATH, assert_no_secret_in, broker_settings

pytestmark = pytest.mark.integration

RECOVERY_SECONDS = 60  # Sentinel's failover (about 2 s) and a node's return, on a slow machine


def _headers(idp: FakeIdentityProvider, user: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {idp.issuers[0].mint(user, AUDIENCE)}"}


@contextmanager
def _brokers(settings: dict[str, str], count: int = 1) -> Iterator[list[BrokerProcess]]:
    processes = [BrokerProcess(settings) for _ in range(count)]
    try:
        for process in processes:
            process.wait_ready()
        yield processes
    finally:
        for process in processes:
            process.terminate()
            assert_no_secret_in(process.output())
            assert BROKER_PASSWORD not in process.output()


def _redis_check(broker: BrokerProcess) -> str:
    return str(httpx.get(broker.url + "/readyz").json()["checks"]["redis"])


def _events(broker: BrokerProcess, name: str) -> list[dict[str, object]]:
    return [r for r in broker.log_records() if r.get("event") == name]


class Load:
    """Token requests from many users, round-robin over the brokers, until stopped; every
    status is kept."""

    def __init__(self, idp: FakeIdentityProvider, brokers: list[BrokerProcess]) -> None:
        self._headers = [_headers(idp, f"load-{n}") for n in range(24)]
        self._brokers = brokers
        self.statuses: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=10) as client:
            n = 0
            while not self._stop.is_set():
                broker = self._brokers[n % len(self._brokers)]
                headers = self._headers[n % len(self._headers)]
                self.statuses.append(
                    client.post(broker.url + TOKEN_PATH, headers=headers).status_code
                )
                n += 1

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def served_at_least(self, count: int) -> None:
        _until(lambda: len(self.statuses) >= count, "the load never got going")


def _until(check: Callable[[], bool], what: str, seconds: float = RECOVERY_SECONDS) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} within {seconds} s")
        time.sleep(0.2)


def _recovered(brokers: list[BrokerProcess], idp: FakeIdentityProvider) -> bool:
    for broker in brokers:  # a request probes Redis again once the retry is due
        httpx.post(broker.url + TOKEN_PATH, headers=_headers(idp, "probe"))
    return all(_redis_check(broker) == "ok" for broker in brokers)


def test_tls_verified_against_the_ca_file_as_an_acl_user(
    idp: FakeIdentityProvider,
    videodb: StandInVideoDB,
    videodb_server: tuple[StandInVideoDB, ThreadedServer],
) -> None:
    _, server = videodb_server
    redis_server = TlsRedisServer().start()
    try:
        admin = redis_server.client()
        add_broker_user(admin, BROKER_ACL)
        url = f"rediss://broker:{BROKER_PASSWORD}@127.0.0.1:{redis_server.port}/0"
        trusted = broker_settings(
            idp, server.url, BROKER_REDIS_URL=url, BROKER_REDIS_CA_FILE=str(redis_server.ca_file)
        )
        with _brokers(trusted, count=2) as (first, second):
            headers = _headers(idp, "tls-user")
            tokens = {
                httpx.post(b.url + TOKEN_PATH, headers=headers).json()["token"]
                for b in (first, second)
            }
            assert len(tokens) == 1
            assert len(videodb.calls) == 1
            assert admin.keys("vtb:v1:tok:*")
            assert _redis_check(first) == "ok"
            assert not _events(first, "redis_command_refused")
        # Without the CA, the self-signed certificate is refused: never used unverified.
        untrusted = broker_settings(idp, server.url, BROKER_REDIS_URL=url)
        with _brokers(untrusted) as (broker,):
            assert httpx.post(broker.url + TOKEN_PATH, headers=headers).status_code == 200
            assert _redis_check(broker).startswith("degraded")
            assert _events(broker, "redis_unreachable_at_start")
    finally:
        redis_server.kill()


def test_a_cluster_shares_tokens_and_rides_out_a_primary_killed_mid_load(
    idp: FakeIdentityProvider,
    videodb: StandInVideoDB,
    videodb_server: tuple[StandInVideoDB, ThreadedServer],
) -> None:
    _, server = videodb_server
    cluster = ClusterOfThree().start()
    try:
        settings = broker_settings(
            idp, server.url, BROKER_REDIS_URL=cluster.url, BROKER_REDIS_CLUSTER="on"
        )
        with _brokers(settings, count=2) as brokers:
            headers = _headers(idp, "cluster-user")
            tokens = {
                httpx.post(b.url + TOKEN_PATH, headers=headers).json()["token"] for b in brokers
            }
            assert len(tokens) == 1
            assert len(videodb.calls) == 1
            with Load(idp, brokers) as load:
                load.served_at_least(100)
                assert sum(1 for keys in cluster.keys_by_node("vtb:v1:*") if keys) >= 2
                victim = cluster.nodes[1]
                victim.kill()
                _until(
                    lambda: any(_redis_check(b).startswith("degraded") for b in brokers),
                    "no broker saw the Cluster lose a primary",
                )
                served = len(load.statuses)
                load.served_at_least(served + 100)  # served while the slots are uncovered
                victim.start()  # back with its slots (nodes.conf in its directory)
                cluster.wait_ok()
                _until(lambda: _recovered(brokers, idp), "the brokers never used Redis again")
                load.served_at_least(len(load.statuses) + 50)
            assert set(load.statuses) == {200}
            for broker in brokers:
                assert len(_events(broker, "redis_unavailable")) <= 2
                assert not _events(broker, "redis_unavailable") or _events(
                    broker, "redis_recovered"
                )
    finally:
        cluster.stop()


def test_a_sentinel_failover_mid_load_reaches_the_promoted_replica(
    idp: FakeIdentityProvider,
    videodb: StandInVideoDB,
    videodb_server: tuple[StandInVideoDB, ThreadedServer],
) -> None:
    _, server = videodb_server
    group = SentinelGroup().start()
    try:
        settings = broker_settings(
            idp,
            server.url,
            BROKER_REDIS_URL=f"redis://{SENTINEL_SERVICE}/0",
            BROKER_REDIS_SENTINELS=group.addresses,
        )
        with _brokers(settings, count=2) as brokers, Load(idp, brokers) as load:
            load.served_at_least(100)
            assert group.primary.client().keys("vtb:v1:*")
            old = group.primary.port
            group.primary.kill()
            group.wait_promoted(old)
            _until(lambda: _recovered(brokers, idp), "the brokers never reached the new primary")
            load.served_at_least(len(load.statuses) + 100)
            promoted = group.replica.client()
            before = len(promoted.keys("vtb:v1:tok:*"))
            for broker in brokers:  # new users' tokens are kept on the promoted replica
                httpx.post(broker.url + TOKEN_PATH, headers=_headers(idp, f"new-{broker.port}"))
            assert len(promoted.keys("vtb:v1:tok:*")) == before + len(brokers)
        assert set(load.statuses) == {200}
        assert any(_events(broker, "redis_unavailable") for broker in brokers)
        for broker in brokers:
            assert bool(_events(broker, "redis_unavailable")) == bool(
                _events(broker, "redis_recovered")
            )
    finally:
        group.stop()
