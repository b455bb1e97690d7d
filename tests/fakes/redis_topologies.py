"""Redis as operators run it, started for real: a TLS node, a three-node Cluster, and a
primary with a replica watched by three Sentinels (Debian's redis-server, redis-sentinel)."""

from __future__ import annotations

import random
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import redis
from redis.cluster import RedisCluster as SyncRedisCluster

from harness.broker_process import free_port
from tests.fakes.redis_server import RedisServer, require_binary
from tests.fakes.tls import self_signed_certificate

SENTINEL_SERVICE = "mymaster"

# What docs/security.md and docs/operations.md give the broker's Redis user: its keys and the
# commands it sends (redis-py's lock and the limits library's scripts included), nothing else;
# live capture's additions; a Cluster client's additions.
BROKER_ACL = (
    "on ~vtb:v1:* resetchannels -@all +ping +get +set +exists +del +pttl +pexpire +incrby "
    "+rename +eval +evalsha +script|load"
)
LIVE_ACL = (
    "+xadd +xrange +incr +expire +zadd +zrem +zremrangebyscore +zcard +publish +subscribe "
    "&vtb:v1:live:news"
)
CLUSTER_ACL = "+cluster|slots +cluster|shards +command"
BROKER_PASSWORD = "broker-password"


def add_broker_user(client: redis.Redis, *grants: str) -> None:
    """The broker's user, with the documented grants and nothing else."""
    rules = " ".join(grants).split()
    client.execute_command("ACL", "SETUSER", "broker", "reset", *rules, f">{BROKER_PASSWORD}")  # type: ignore[no-untyped-call]


def _until(check: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} within {seconds} s")
        time.sleep(0.1)


class TlsRedisServer(RedisServer):
    """redis-server answering TLS only, with a self-signed certificate for 127.0.0.1: its
    certificate file is the CA a client must be told about."""

    def __init__(self) -> None:
        directory = Path(tempfile.mkdtemp(prefix="redis-tls-"))
        self.ca_file, key = self_signed_certificate(directory)
        super().__init__(
            "--port", "0",
            "--tls-port", "{port}",
            "--tls-cert-file", str(self.ca_file),
            "--tls-key-file", str(key),
            "--tls-ca-cert-file", str(self.ca_file),
            "--tls-auth-clients", "no",
        )  # fmt: skip
        self.url = f"rediss://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_timeout=1, ssl_ca_certs=str(self.ca_file))


def _cluster_port() -> int:
    """A free port whose cluster bus port (10000 above it) is free too."""
    while True:
        port = random.randrange(20000, 30000)
        try:
            for candidate in (port, port + 10000):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", candidate))
        except OSError:
            continue
        return port


class ClusterOfThree:
    """Three primaries sharing the 16384 slots, no replicas: a node killed leaves its slots
    uncovered, and the Cluster refuses every command until it is back."""

    def __init__(self) -> None:
        self.nodes = [
            RedisServer(
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                "1000",
            )
            for _ in range(3)
        ]
        for node in self.nodes:
            node.port = _cluster_port()  # free_port's may leave no room for the bus port
            node.url = f"redis://127.0.0.1:{node.port}/0"
        self.url = f"redis://127.0.0.1:{self.nodes[0].port}/0"

    def start(self) -> ClusterOfThree:
        for node in self.nodes:
            node.start()
        cli = require_binary("redis-cli")
        addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
        subprocess.run(
            [cli, "--cluster", "create", *addresses, "--cluster-replicas", "0", "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=60,
        )
        self.wait_ok()
        return self

    def wait_ok(self) -> None:
        def ok() -> bool:
            try:
                return all(
                    node.client().cluster("info")["cluster_state"] == "ok" for node in self.nodes
                )
            except redis.RedisError:
                return False

        _until(ok, 30, "the Cluster did not report cluster_state:ok")

    def client(self) -> SyncRedisCluster:
        return SyncRedisCluster.from_url(self.url, socket_timeout=1)

    def keys_by_node(self, pattern: str) -> list[list[bytes | str]]:
        return [node.client().keys(pattern) for node in self.nodes]

    def stop(self) -> None:
        for node in self.nodes:
            node.kill()


class SentinelGroup:
    """A primary, its replica, and three Sentinels (quorum two) that promote the replica
    a second after the primary stops answering."""

    def __init__(self) -> None:
        self.primary = RedisServer()
        self.replica = RedisServer("--replicaof", "127.0.0.1", str(self.primary.port))
        self.binary = require_binary("redis-sentinel")
        self.ports = [free_port() for _ in range(3)]
        self.sentinels: list[subprocess.Popen[bytes]] = []
        self.addresses = ",".join(f"127.0.0.1:{port}" for port in self.ports)

    def start(self) -> SentinelGroup:
        self.primary.start()
        self.replica.start()
        for port in self.ports:
            conf = Path(tempfile.mkdtemp(prefix="sentinel-")) / "sentinel.conf"
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\n"
                f"sentinel monitor {SENTINEL_SERVICE} 127.0.0.1 {self.primary.port} 2\n"
                f"sentinel down-after-milliseconds {SENTINEL_SERVICE} 1000\n"
                f"sentinel failover-timeout {SENTINEL_SERVICE} 5000\n"
            )
            self.sentinels.append(
                subprocess.Popen(
                    [self.binary, str(conf)],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        _until(self._watched, 30, "the Sentinels did not all see the primary and its replica")
        return self

    def _sentinel(self, port: int) -> redis.Redis:
        return redis.Redis(port=port, socket_timeout=1)

    def _watched(self) -> bool:
        try:
            views = [self._sentinel(port).sentinel_master(SENTINEL_SERVICE) for port in self.ports]
        except redis.RedisError:
            return False
        return all(
            isinstance(v, dict) and v["num-slaves"] >= 1 and v["num-other-sentinels"] >= 2
            for v in views
        )

    def primary_port(self) -> int:
        found = self._sentinel(self.ports[0]).sentinel_get_master_addr_by_name(SENTINEL_SERVICE)
        assert isinstance(found, tuple | list), "the Sentinels name no primary"
        return int(found[1])

    def wait_promoted(self, old_port: int) -> None:
        _until(lambda: self.primary_port() != old_port, 30, "no replica was promoted")

    def stop(self) -> None:
        for sentinel in self.sentinels:
            sentinel.kill()
            sentinel.wait()
        self.primary.kill()
        self.replica.kill()
