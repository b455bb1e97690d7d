"""The locks install on a fresh machine whatever the package index publishes next.

A fresh virtual environment from the machine's own Python (its stock pip), no pip cache, and
an index that has moved on: newer releases of packages the locks pin, and of setuptools, sit
where pip looks (PIP_FIND_LINKS), and each of them breaks on import. An install that resolved
anything against the index would pick one of them up (or, with pip 23, refuse the lock
outright, as a new coverage release once made it do); installing exactly the locked files
picks none.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from harness.broker_process import REPO

pytestmark = pytest.mark.integration

# Packages the locks pin that a dependency also asks for by a range (coverage[toml] by
# pytest-cov, setuptools by the build), each given a release made "after the lock".
FUTURE_RELEASES = ("coverage", "setuptools", "starlette", "pydantic", "httpx", "pip")
FUTURE_VERSION = "999.0"


def _future_wheel(folder: Path, name: str) -> None:
    """A release of `name` newer than any lock's, that fails if it is ever imported."""
    dist = f"{name}-{FUTURE_VERSION}.dist-info"
    files = {
        f"{name}/__init__.py": f"raise ImportError('{name} {FUTURE_VERSION}: not in the lock')\n",
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {FUTURE_VERSION}\n",
        f"{dist}/WHEEL": "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=")
        record.append(f"{path},sha256={digest.decode()},{len(text.encode())}")
    record.append(f"{dist}/RECORD,,")
    files[f"{dist}/RECORD"] = "\n".join(record) + "\n"
    with zipfile.ZipFile(folder / f"{name}-{FUTURE_VERSION}-py3-none-any.whl", "w") as wheel:
        for path, text in files.items():
            wheel.writestr(path, text)


def _locked(lock: Path) -> dict[str, str]:
    """name -> version, as the lock pins them."""
    pins = re.findall(r"^([A-Za-z0-9_.\-]+)==([^\s;\\]+)", lock.read_text(), re.M)
    return {_normal(name): version for name, version in pins}


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _installed(venv: Path) -> dict[str, str]:
    listed = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "list", "--format", "json"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return {_normal(item["name"]): item["version"] for item in json.loads(listed)}


@pytest.fixture
def moved_on_index(tmp_path: Path) -> dict[str, str]:
    """The environment of a fresh machine whose index now serves the future releases."""
    future = tmp_path / "future"
    future.mkdir()
    for name in FUTURE_RELEASES:
        _future_wheel(future, name)
    links = " ".join(filter(None, [str(future), os.environ.get("PIP_FIND_LINKS", "")]))
    return {**os.environ, "PIP_NO_CACHE_DIR": "1", "PIP_FIND_LINKS": links}


def _stock_python() -> str:
    """The machine's own Python (not this virtual environment's), with its own pip."""
    return getattr(sys, "_base_executable", sys.executable)


def test_make_install_takes_exactly_the_dev_lock(
    tmp_path: Path, moved_on_index: dict[str, str]
) -> None:
    venv = tmp_path / "venv"
    result = subprocess.run(
        ["make", "install", f"VENV={venv}", f"PYTHON={_stock_python()}"],
        cwd=REPO,
        env=moved_on_index,
        capture_output=True,
        text=True,
        timeout=1200,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    installed = _installed(venv)
    expected = _locked(REPO / "requirements-dev.lock")
    assert installed.pop("videodb-token-broker") == "0.1.0"
    assert installed == expected
    tool = subprocess.run(
        [str(venv / "bin" / "pytest"), "--version"], capture_output=True, text=True, check=False
    )
    assert tool.returncode == 0, tool.stderr  # coverage, pytest-cov and pytest import


@pytest.mark.parametrize("lock", ["requirements.lock", "requirements-build.lock"])
def test_the_image_locks_install_as_the_dockerfile_installs_them(
    tmp_path: Path, moved_on_index: dict[str, str], lock: str
) -> None:
    venv = tmp_path / "venv"
    subprocess.run([_stock_python(), "-m", "venv", str(venv)], check=True)
    stock_pip = set(_installed(venv))
    pip = [str(venv / "bin" / "python"), "-m", "pip"]
    install = [*pip, "install", "-q", "--no-deps", "--require-hashes", "-r", str(REPO / lock)]
    for command in (install, [*pip, "check"]):
        result = subprocess.run(
            command, env=moved_on_index, capture_output=True, text=True, timeout=900, check=False
        )
        assert result.returncode == 0, result.stdout + result.stderr
    installed = _installed(venv)
    locked = _locked(REPO / lock)
    assert {name: installed.get(name) for name in locked} == locked
    assert set(installed) - set(locked) <= stock_pip  # nothing the lock does not name
    assert FUTURE_VERSION not in installed.values()
