"""A real redis-server on a loopback port, which tests can kill and restart."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from typing import Self

import pytest
import redis

from harness.broker_process import free_port


def require_binary(name: str) -> str:
    """The binary's path; in CI (BROKER_TESTS_REQUIRE_ALL=1) a missing one fails the test."""
    path = shutil.which(name)
    if path is None and os.path.exists(f"/usr/bin/{name}"):
        path = f"/usr/bin/{name}"
    if path is None:
        message = f"{name} is not installed (apt-get install {name})"
        if os.environ.get("BROKER_TESTS_REQUIRE_ALL") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return path


class RedisServer:
    """redis-server without persistence, on a free port; `extra` options follow ours
    ("{port}" in one stands for that port)."""

    def __init__(self, *extra: str) -> None:
        self.binary = require_binary("redis-server")
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._dir = tempfile.mkdtemp(prefix="redis-")
        self.proc: subprocess.Popen[bytes] | None = None
        self.extra = [option.replace("{port}", str(self.port)) for option in extra]

    def start(self) -> Self:
        self.proc = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self._dir,
                *self.extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = self.client()
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                return self
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL: as abrupt as a crashed node."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def freeze(self) -> None:
        """SIGSTOP: a hung node. Connections still open (the kernel accepts them); no answers."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        """SIGCONT: the hung node answers again, with its data intact."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_timeout=1)
