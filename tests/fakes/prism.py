"""Stoplight Prism as a validating proxy in front of a VideoDB stand-in: every request the
broker makes, and every answer it gets, is checked against VideoDB's published OpenAPI."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from harness.broker_process import REPO, free_port
from tests.fakes.redis_server import require_binary

UPSTREAM_SPECS = REPO.parent / "shared" / "upstream"
SPEC_FILES = ("capture-session-token.openapi.yaml", "capture-sessions.openapi.yaml")
# Where .ci/run installs it (npm install --prefix .cache/prism @stoplight/prism-cli@5)
LOCAL_PRISM = REPO / ".cache" / "prism" / "node_modules" / ".bin" / "prism"


def prism_binary() -> str:
    """Prism's command; in CI (BROKER_TESTS_REQUIRE_ALL=1) a missing one fails the test."""
    if LOCAL_PRISM.exists():
        return str(LOCAL_PRISM)
    if shutil.which("prism"):
        return "prism"
    return require_binary("prism")  # fails or skips, naming what to install


def merged_spec(directory: Path) -> Path:
    """VideoDB's two published documents as one, for one Prism process."""
    merged: dict[str, Any] = {}
    for name in SPEC_FILES:
        document = yaml.safe_load((UPSTREAM_SPECS / name).read_text())
        if not merged:
            merged = document
            continue
        merged["paths"].update(document["paths"])
        for section, entries in document.get("components", {}).items():
            merged.setdefault("components", {}).setdefault(section, {}).update(entries)
    merged.pop("servers", None)
    path = directory / "videodb.openapi.yaml"
    path.write_text(yaml.safe_dump(merged))
    return path


class PrismProxy:
    """`prism proxy --errors`: a request or an answer the spec refuses is an error (422, 500)."""

    def __init__(self, upstream_url: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._dir = Path(tempfile.mkdtemp(prefix="prism-"))
        self._log = self._dir / "prism.log"
        spec = merged_spec(self._dir)
        binary = prism_binary()  # before the log opens: a missing one skips, leaking nothing
        log = self._log.open("w")  # the child keeps its own descriptor
        self.proc = subprocess.Popen(
            [
                *(binary, "proxy", str(spec), upstream_url, "--errors"),
                *("-h", "127.0.0.1", "-p", str(self.port)),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()

    def wait_ready(self, timeout: float = 60.0) -> PrismProxy:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"prism exited {self.proc.returncode}:\n{self.output()}")
            try:
                httpx.get(self.url + "/", timeout=1)
                return self
            except httpx.HTTPError:
                time.sleep(0.2)
        pytest.fail(f"prism did not start in {timeout}s:\n{self.output()}")

    def output(self) -> str:
        return self._log.read_text(errors="replace")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
