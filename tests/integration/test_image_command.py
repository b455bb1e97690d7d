"""No Docker engine here: so build the image's virtual environment the way the Dockerfile
does (from requirements.lock, hashes required), then run the image's command as its
unprivileged uid in a read-only working directory, and check that it starts and serves."""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from jose import jwt

from tests.fakes.broker_process import REPO, free_port
from tests.fakes.redis_server import require_binary
from tests.fakes.servers import ThreadedServer
from tests.fakes.tls import self_signed_certificate
from tests.fakes.videodb import FakeVideoDB
from tests.integration.conftest import API_KEY

pytestmark = pytest.mark.integration

IMAGE_UID = 10001
SECRET = "image-test-shared-secret-32-bytes!!"


@pytest.fixture(scope="module")
def image_venv() -> Iterator[Path]:
    """/opt/venv of the image: the pinned requirements, then the app, nothing else."""
    python = require_binary("python3.11")
    # Not under pytest's own temporary directory: that one is private to its owner.
    root = Path(tempfile.mkdtemp(prefix="broker-image-"))
    root.chmod(0o755)
    venv = root / "venv"
    subprocess.run([python, "-m", "venv", str(venv)], check=True)
    pip = [
        str(venv / "bin" / "python"),
        "-m",
        "pip",
        "install",
        "-q",
        "--disable-pip-version-check",
        "--no-cache-dir",
    ]
    subprocess.run(
        [*pip, "--no-deps", "--require-hashes", "-r", str(REPO / "requirements.lock")],
        check=True,
        timeout=900,
    )
    build = root / "src"
    build.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, build / name)
    shutil.copytree(REPO / "app", build / "app", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([*pip, "--no-deps", str(build)], check=True, timeout=600)
    for path in [root, *root.rglob("*")]:  # world-readable, as COPY --from leaves it
        mode = path.stat().st_mode
        path.chmod(
            mode
            | stat.S_IRGRP
            | stat.S_IROTH
            | (stat.S_IXGRP | stat.S_IXOTH if path.is_dir() or mode & stat.S_IXUSR else 0)
        )
    yield venv
    shutil.rmtree(root, ignore_errors=True)


def _as_image_user(venv: Path, command: list[str]) -> list[str]:
    """`command` (the image's, with its programs found in the venv) run as uid 10001."""
    program = str(venv / "bin" / command[0])
    if os.geteuid() != 0:
        return [program, *command[1:]]
    setpriv = require_binary("setpriv")
    ids = [f"--reuid={IMAGE_UID}", f"--regid={IMAGE_UID}", "--clear-groups"]
    return [setpriv, *ids, program, *command[1:]]


def _image_env(venv: Path, port: int, videodb_url: str, **extra: str) -> dict[str, str]:
    return {
        "PATH": f"{venv / 'bin'}:/usr/bin:/bin",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONUNBUFFERED": "1",
        "PORT": str(port),
        "HOME": "/nonexistent",
        "VIDEO_DB_API_KEY": API_KEY,
        "VIDEO_DB_API": videodb_url,
        "BROKER_AUTH_HS256_SECRET": SECRET,
        "BROKER_AUTH_AUDIENCE": "image",
        **extra,
    }


def _health_checks() -> dict[str, list[str]]:
    """The commands Docker runs to check the container: the image's and compose's."""
    dockerfile = (REPO / "Dockerfile").read_text()
    after = dockerfile[dockerfile.index("HEALTHCHECK") :]
    image = json.loads(after[after.index("CMD") + 3 :].splitlines()[0])
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    test = compose["services"]["broker"]["healthcheck"]["test"]
    assert test[0] == "CMD"
    return {"image": image, "compose": test[1:]}


def _healthy(venv: Path, env: dict[str, str], workdir: Path) -> dict[str, int]:
    """Each health check's exit status, run as the image's user."""
    return {
        name: subprocess.run(
            _as_image_user(venv, command), env=env, cwd=workdir, timeout=30, check=False
        ).returncode
        for name, command in _health_checks().items()
    }


def test_image_command_serves_as_its_user_in_a_read_only_directory(
    image_venv: Path, videodb_server: tuple[FakeVideoDB, ThreadedServer]
) -> None:
    fake, server = videodb_server
    fake.reset()
    workdir = image_venv.parent / "srv"
    workdir.mkdir()
    workdir.chmod(0o555)
    port = free_port()
    env = _image_env(image_venv, port, server.url)
    command = ["token-broker", "serve", "--host", "0.0.0.0"]  # the image's ENTRYPOINT
    proc = subprocess.Popen(
        _as_image_user(image_venv, command),
        env=env,
        cwd=workdir,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(proc.communicate(timeout=5)[0])
            time.sleep(0.1)
        if os.geteuid() == 0:
            owner = Path(f"/proc/{proc.pid}/status").read_text()
            assert f"Uid:\t{IMAGE_UID}" in owner
        bearer = jwt.encode(
            {"sub": "image-user", "aud": "image", "exp": int(time.time()) + 60},
            SECRET,
            algorithm="HS256",
        )
        resp = httpx.post(
            url + "/v1/capture/session/token", headers={"Authorization": f"Bearer {bearer}"}
        )
        assert resp.status_code == 200, resp.text
        assert resp.json()["token"].startswith("st-")
        assert _healthy(image_venv, env, workdir) == {"image": 0, "compose": 0}
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=40)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert '"broker_stopped"' in output
    assert "Traceback" not in output
    assert "Permission denied" not in output
    assert not any(workdir.iterdir())
    assert _healthy(image_venv, env, workdir) == {"image": 1, "compose": 1}  # nobody answers


def test_image_health_checks_follow_the_broker_onto_tls(
    image_venv: Path, videodb_server: tuple[FakeVideoDB, ThreadedServer]
) -> None:
    """With BROKER_TLS_* the broker speaks only HTTPS; the container must still be healthy."""
    _, server = videodb_server
    files = Path(tempfile.mkdtemp(prefix="broker-tls-", dir=image_venv.parent))
    files.chmod(0o755)
    cert, key = self_signed_certificate(files)
    cert.chmod(0o644)
    key.chmod(0o644)  # readable by the image's user, as a mounted Secret would be
    port = free_port()
    env = _image_env(
        image_venv,
        port,
        server.url,
        BROKER_TLS_CERT_FILE=str(cert),
        BROKER_TLS_KEY_FILE=str(key),
    )
    command = ["token-broker", "serve", "--host", "0.0.0.0"]
    proc = subprocess.Popen(
        _as_image_user(image_venv, command),
        env=env,
        cwd=files,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while _healthy(image_venv, env, files) != {"image": 0, "compose": 0}:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"never healthy over TLS:\n{_output(proc)}")
            time.sleep(0.2)
        plain = {**env, "BROKER_TLS_CERT_FILE": ""}  # asking in plain HTTP gets nowhere
        assert _healthy(image_venv, plain, files) == {"image": 1, "compose": 1}
    finally:
        proc.send_signal(signal.SIGTERM)
        _output(proc)


def _output(proc: subprocess.Popen[str]) -> str:
    try:
        return proc.communicate(timeout=40)[0]
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.communicate()[0]
