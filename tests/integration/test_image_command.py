"""No Docker engine here: so build the image's virtual environment the way the Dockerfile
does (from requirements.lock, hashes required), then run the image's command as its
unprivileged uid in a read-only working directory, and check that it starts and serves."""

from __future__ import annotations

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
from jose import jwt

from tests.fakes.broker_process import REPO, free_port
from tests.fakes.redis_server import require_binary
from tests.fakes.servers import ThreadedServer
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


def test_image_command_serves_as_its_user_in_a_read_only_directory(
    image_venv: Path, videodb_server: tuple[FakeVideoDB, ThreadedServer]
) -> None:
    fake, server = videodb_server
    fake.reset()
    workdir = image_venv.parent / "srv"
    workdir.mkdir()
    workdir.chmod(0o555)
    port = free_port()
    env = {
        "PATH": f"{image_venv / 'bin'}:/usr/bin:/bin",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONUNBUFFERED": "1",
        "PORT": str(port),
        "HOME": "/nonexistent",
        "VIDEO_DB_API_KEY": API_KEY,
        "VIDEO_DB_API": server.url,
        "BROKER_AUTH_HS256_SECRET": SECRET,
        "BROKER_AUTH_AUDIENCE": "image",
    }
    command = ["token-broker", "serve", "--host", "0.0.0.0"]  # the image's ENTRYPOINT
    if os.geteuid() == 0:
        setpriv = require_binary("setpriv")
        command = [
            setpriv,
            f"--reuid={IMAGE_UID}",
            f"--regid={IMAGE_UID}",
            "--clear-groups",
            str(image_venv / "bin" / "token-broker"),
            *command[1:],
        ]
    proc = subprocess.Popen(
        command, env=env, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
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
