"""The container image, built from the Dockerfile and checked from outside (`make image-test`).

Built once per module with buildah, as `docker build` builds it, from a copy of the clone into
which a careless user's secrets were dropped (`.env`, a key file): none may reach the image.
The container then runs on the host's network, wired to stand-ins on the host.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import ssl
import subprocess
import tarfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import yaml
from jose import jwt

from app.sandbox.stand_in_videodb import StandInVideoDB
from harness.broker_process import REPO, free_port
from harness.servers import ThreadedServer
from tests.fakes.identity_provider import FakeIdentityProvider
from tests.fakes.tls import self_signed_certificate
from tests.image.buildah import (
    Container,
    build_context,
    build_image,
    buildah,
    containerised_process,
    image_config,
    layer_archives,
)
from tests.integration.conftest import API_KEY, AUDIENCE, assert_no_secret_in, broker_settings

pytestmark = pytest.mark.image

IMAGE_USER = "10001:10001"
GRACE_PERIOD_S = 40  # the Kubernetes manifests' terminationGracePeriodSeconds
SHARED_SECRET = "image-test-shared-secret-32-bytes!!"
CANARY = f"sk-canary-{uuid.uuid4().hex}"
SECRETISH = re.compile(r"KEY|SECRET|TOKEN|PASSWORD|CREDENTIAL", re.I)
ABSENT_FROM_THE_IMAGE = ("pip", "setuptools", "wheel", "watchfiles")  # websockets: live capture


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The image, built from the clone plus a user's stray secrets."""
    if os.geteuid() != 0:
        pytest.fail("make image-test builds with buildah and debootstrap: run it as root")
    context = build_context(tmp_path_factory.mktemp("context"))
    (context / ".env").write_text(f"VIDEO_DB_API_KEY={CANARY}\n")
    (context / "secrets").mkdir()
    (context / "secrets" / "videodb.key").write_text(CANARY)
    tag = f"localhost/videodb-token-broker:test-{uuid.uuid4().hex[:8]}"
    build_image(context, tag)
    yield tag
    buildah("rmi", "--force", tag)


@pytest.fixture
def container(image: str) -> Iterator[Container]:
    made = Container(image)
    yield made
    made.remove()


def test_the_image_runs_as_its_user_and_carries_no_secret_and_no_installer(
    image: str, container: Container, tmp_path: Path
) -> None:
    config = image_config(image)
    assert config["config"]["User"] == IMAGE_USER
    assert container.run(["id", "-u"]).stdout.strip() == IMAGE_USER.split(":")[0]
    for entry in config["config"]["Env"]:
        name, _, value = entry.partition("=")
        assert not SECRETISH.search(name), entry
        assert "sk-" not in value, name
    described = repr(config["config"].get("Labels")) + repr(config["history"])
    assert CANARY not in described
    assert "sk-" not in described
    names: set[str] = set()
    for layer in layer_archives(image, tmp_path / "layers"):
        with tarfile.open(layer) as tar:
            for member in tar:
                names.add(member.name.removeprefix("./"))
                if member.isfile():
                    extracted = tar.extractfile(member)
                    assert extracted is not None
                    assert CANARY.encode() not in extracted.read(), member.name
    assert not [name for name in names if name.endswith((".env", "videodb.key"))]
    site = "opt/venv/lib/python3.11/site-packages/"
    installed = {name[len(site) :].split("/")[0] for name in names if name.startswith(site)}
    assert "app" in installed
    assert "uvloop" in installed
    assert "httptools" in installed
    assert not installed & set(ABSENT_FROM_THE_IMAGE)


def test_serve_configured_by_the_environment_mints_and_stops_on_sigterm(
    container: Container,
    image: str,
    idp: FakeIdentityProvider,
    videodb_server: tuple[StandInVideoDB, ThreadedServer],
) -> None:
    fake, server = videodb_server
    fake.reset()
    port = free_port()
    env = {**broker_settings(idp, server.url), "PORT": str(port)}
    entrypoint = image_config(image)["config"]["Entrypoint"]
    with _started(container.command(entrypoint, env, {})) as launcher:
        url = f"http://127.0.0.1:{port}"
        _wait_for(url + "/readyz", launcher)
        assert _health_checks(image, env) == {"image": 0, "compose": 0}
        bearer = idp.issuers[-1].mint("image-user", AUDIENCE, lifetime=120)
        resp = httpx.post(
            url + "/v1/capture/session/token", headers={"Authorization": f"Bearer {bearer}"}
        )
        assert resp.status_code == 200, resp.text
        assert resp.json()["token"].startswith("st-")
        broker = containerised_process(launcher.pid)
        stopping = time.monotonic()
        os.kill(broker, signal.SIGTERM)  # what `docker stop` sends: the image's STOPSIGNAL
        output = launcher.communicate(timeout=GRACE_PERIOD_S)[0]
        assert time.monotonic() - stopping < GRACE_PERIOD_S
    assert '"broker_stopped"' in output
    assert "Traceback" not in output
    assert "Permission denied" not in output
    assert_no_secret_in(output)
    assert [call.body["user_id"] for call in fake.calls] == ["image-user"]  # on the host
    assert container.run(["ls", "-A", "/srv"]).stdout == ""  # it wrote nothing where it ran
    assert _health_checks(image, env) == {"image": 1, "compose": 1}  # nobody answers now


def test_secrets_mounted_as_files_and_tls_terminated_in_the_container(
    container: Container,
    image: str,
    videodb_server: tuple[StandInVideoDB, ThreadedServer],
    tmp_path: Path,
) -> None:
    """As the Kubernetes manifests run it: the key, the shared secret and the certificate
    come from a mounted Secret, named by `_FILE` variables; the broker speaks only HTTPS."""
    fake, server = videodb_server
    fake.reset()
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    cert, key = self_signed_certificate(secrets)
    (secrets / "videodb-api-key").write_text(API_KEY + "\n")
    (secrets / "hs256-secret").write_text(SHARED_SECRET + "\n")
    for path in (secrets, *secrets.iterdir()):  # readable by the image's user, as mounted
        path.chmod(0o755 if path.is_dir() else 0o644)
    port = free_port()
    env = {
        "PORT": str(port),
        "VIDEO_DB_API": server.url,
        "VIDEO_DB_API_KEY_FILE": "/run/secrets/broker/videodb-api-key",
        "BROKER_AUTH_HS256_SECRET_FILE": "/run/secrets/broker/hs256-secret",
        "BROKER_AUTH_AUDIENCE": AUDIENCE,
        "BROKER_TLS_CERT_FILE": f"/run/secrets/broker/{cert.name}",
        "BROKER_TLS_KEY_FILE": f"/run/secrets/broker/{key.name}",
    }
    volumes = {secrets: "/run/secrets/broker"}
    entrypoint = image_config(image)["config"]["Entrypoint"]
    with _started(container.command(entrypoint, env, volumes)) as launcher:
        url = f"https://127.0.0.1:{port}"
        verify = ssl.create_default_context(cafile=cert)
        _wait_for(url + "/readyz", launcher, verify=verify)
        assert _health_checks(image, env, volumes) == {"image": 0, "compose": 0}
        plain = {**env, "BROKER_TLS_CERT_FILE": ""}  # asking in plain HTTP gets nowhere
        assert _health_checks(image, plain, volumes) == {"image": 1, "compose": 1}
        bearer = jwt.encode(
            {"sub": "file-user", "aud": AUDIENCE, "exp": int(time.time()) + 60},
            SHARED_SECRET,
            algorithm="HS256",
        )
        resp = httpx.post(
            url + "/v1/capture/session/token",
            headers={"Authorization": f"Bearer {bearer}"},
            verify=verify,
        )
        assert resp.status_code == 200, resp.text
        os.kill(containerised_process(launcher.pid), signal.SIGTERM)
        output = launcher.communicate(timeout=GRACE_PERIOD_S)[0]
    assert [call.headers["x-access-token"] for call in fake.calls] == [API_KEY]
    assert_no_secret_in(output)


def test_the_sandbox_in_the_container_mints_a_token_and_a_capture_session(
    container: Container,
) -> None:
    port = free_port()
    command = container.command(["token-broker", "demo", "--port", str(port)], {}, {})
    with _started(command) as demo:
        assert demo.stdout is not None
        curl_lines: list[str] = []
        deadline = time.monotonic() + 120
        while len(curl_lines) < 2 and time.monotonic() < deadline:
            line = demo.stdout.readline()
            if not line and demo.poll() is not None:
                break
            if line.strip().startswith("curl "):
                curl_lines.append(line.strip())
        assert len(curl_lines) == 2, "the demo printed no curl lines"
        token_line, session_line = curl_lines
        token = _curl(token_line)
        assert '"token":"st-' in token
        session = _curl(session_line)
        assert '"session_id":"cap-' in session
        assert '"token":"st-' in session
        os.kill(containerised_process(demo.pid), signal.SIGINT)  # Ctrl+C
        assert demo.wait(timeout=30) == 0


def _curl(line: str) -> str:
    """A printed curl line, run on the host as a user pastes it."""
    result = subprocess.run(shlex.split(line), capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    return result.stdout


@contextmanager
def _started(command: list[str]) -> Iterator[subprocess.Popen[str]]:
    """`command` (a `buildah run`) running; whatever is left of it is killed at the end."""
    launcher = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        yield launcher
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait(timeout=30)
        if launcher.stdout is not None:
            launcher.stdout.close()


def _wait_for(
    url: str,
    launcher: subprocess.Popen[str],
    timeout: float = 120,
    verify: ssl.SSLContext | bool = True,
) -> None:
    """Until `url` answers 200 (a busy machine may be slow to start a container); the
    container's output if it stops first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if launcher.poll() is not None:
            raise AssertionError(f"the container stopped:\n{launcher.communicate()[0]}")
        try:
            if httpx.get(url, timeout=2, verify=verify).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{url} never answered 200")


def _health_checks(
    image: str, env: dict[str, str], volumes: dict[Path, str] | None = None
) -> dict[str, int]:
    """The exit status of each health check Docker runs: the image's HEALTHCHECK and
    docker-compose.yml's, each in a container of the image, with its environment."""
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    tests = {
        "image": image_config(image)["config"]["Healthcheck"]["Test"],
        "compose": compose["services"]["broker"]["healthcheck"]["test"],
    }
    checker = Container(image)
    try:
        statuses = {}
        for name, test in tests.items():
            assert test[0] == "CMD"
            statuses[name] = checker.run(test[1:], env, volumes, timeout=60).returncode
        return statuses
    finally:
        checker.remove()
