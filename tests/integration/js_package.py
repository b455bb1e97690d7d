"""clients/js, the JavaScript package, built with its locked TypeScript and run with Node's own
test runner. `.ci/run` installs it with `npm ci --prefix clients/js`."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from harness.broker_process import REPO

JS_DIR = REPO / "clients" / "js"
INSTALL_HINT = "clients/js is not installed: npm ci --prefix clients/js"
_built: list[Path] = []


def _missing(message: str) -> None:
    if os.environ.get("BROKER_TESTS_REQUIRE_ALL") == "1":
        pytest.fail(message)
    pytest.skip(message)


def node() -> str:
    """Node's path (18 or later), or the test skips (fails in CI)."""
    found = shutil.which("node")
    if found is None:
        _missing("node is not installed (apt-get install nodejs)")
        raise AssertionError("unreachable")
    return found


def built_package() -> Path:
    """clients/js with dist/ compiled from src/ now (once per session): never a stale build."""
    node()
    tsc = JS_DIR / "node_modules" / ".bin" / "tsc"
    if not tsc.exists():
        _missing(INSTALL_HINT)
    if not _built:
        result = subprocess.run(
            [str(tsc), "-p", "tsconfig.json"], cwd=JS_DIR, capture_output=True, text=True
        )
        assert result.returncode == 0, result.stdout + result.stderr
        _built.append(JS_DIR / "dist")
    return JS_DIR


def node_test(
    files: list[str], env: dict[str, str] | None = None, timeout: float = 180
) -> tuple[int, str]:
    """`node --test` on these files of clients/js/test: its exit code and TAP output."""
    package = built_package()
    result = subprocess.run(
        [node(), "--test", "--test-reporter=tap", *(f"test/{name}" for name in files)],
        cwd=package,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return result.returncode, result.stdout + result.stderr


def node_process(files: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    """`node --test` on these files, running while the test drives what they observe."""
    package = built_package()
    return subprocess.Popen(
        [node(), "--test", "--test-reporter=tap", *(f"test/{name}" for name in files)],
        cwd=package,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def summary(output: str) -> dict[str, int]:
    """The runner's closing counts: tests, pass, fail, skipped…"""
    counts = {}
    for line in output.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == "#" and parts[2].isdigit():
            counts[parts[1]] = int(parts[2])
    return counts
