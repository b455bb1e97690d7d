"""The broker as a real process on a real port, as users meet it."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]


# Where free_port looks: below the kernel's ephemeral range (where bind(0) and every outgoing
# connection's source port come from), above the well-known and registered services' ports.
LOWEST_PORT = 10_000
_EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")


def free_port() -> int:
    """A port nothing is bound to right now, outside the kernel's ephemeral range.

    A test that stops a server and starts it again on the same port (a broker restarted on
    its address, a VideoDB stand-in back up) needs the port to stay free in between. A port
    from the ephemeral range may meanwhile become the source port of any outgoing connection
    on the machine, and the second bind then fails with "address already in use"; ports
    below the range are never handed out that way.
    """
    try:
        lowest_ephemeral = int(_EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        lowest_ephemeral = 32_768  # Linux's default
    ports = range(LOWEST_PORT, lowest_ephemeral)
    for port in random.sample(ports, min(1000, len(ports))):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port between {LOWEST_PORT} and {lowest_ephemeral}")


def clean_env(**settings: str) -> dict[str, str]:
    """The parent's environment without any broker setting, plus these settings."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("BROKER_", "VIDEO_DB_", "VIDEODB_"))
    }
    env.update(settings)
    return env


class BrokerProcess:
    """`token-broker serve` in a subprocess; its output is kept for leak checks."""

    def __init__(
        self,
        settings: dict[str, str],
        args: tuple[str, ...] = (),
        port: int | None = None,
        repo: Path = REPO,
    ) -> None:
        self.port = port or free_port()  # a port of its own, or a stopped broker's again
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = tempfile.NamedTemporaryFile(prefix="broker-", suffix=".log", delete=False)  # noqa: SIM115
        self._workdir = tempfile.mkdtemp(prefix="broker-cwd-")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve", "--port", str(self.port), *args],
            env={**clean_env(**settings), "PYTHONPATH": str(repo)},  # another checkout: bench
            cwd=self._workdir,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self._log.close()  # the child holds its own descriptor

    def wait_healthy(self, timeout: float = 20.0) -> BrokerProcess:
        """Block until /healthz answers (or fail with the process's output)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"broker exited {self.proc.returncode}:\n{self.output()}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"broker not healthy in {timeout}s:\n{self.output()}")

    def wait_ready(self, timeout: float = 20.0) -> BrokerProcess:
        """Block until /readyz is 200."""
        self.wait_healthy(timeout)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                return self
            time.sleep(0.05)
        raise AssertionError(f"broker not ready in {timeout}s:\n{self.output()}")

    def output(self) -> str:
        """Everything the process printed so far."""
        return Path(self._log.name).read_text(errors="replace")

    def log_records(self) -> list[dict[str, Any]]:
        """Its output as JSON objects; any line that is not one fails the test."""
        records = []
        for line in self.output().splitlines():
            if line.strip():
                records.append(json.loads(line))
        return records

    def wait_for_log(
        self, event: str, count: int = 1, timeout: float = 20.0
    ) -> list[dict[str, Any]]:
        """Block until the process has logged `event` at least `count` times; those records."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            complete = self.output().rpartition("\n")[0]  # a line still being written waits
            found = [
                r
                for r in map(json.loads, filter(str.strip, complete.splitlines()))
                if r.get("event") == event
            ]
            if len(found) >= count:
                return found
            time.sleep(0.05)
        raise AssertionError(f"no {count} x {event} in {timeout}s:\n{self.output()}")

    def terminate(self, timeout: float = 35.0) -> int:
        """SIGTERM and wait: 0 when it stopped cleanly.

        uvicorn re-raises SIGTERM after its graceful shutdown, so a clean stop shows as
        -SIGTERM; the "broker_stopped" line (written after the lifespan closed) tells it apart.
        """
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError("broker did not stop on SIGTERM") from None
        code = self.proc.returncode
        if code == -signal.SIGTERM and '"broker_stopped"' in self.output():
            return 0
        return code
