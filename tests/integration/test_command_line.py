"""`token-broker serve | check | demo` as a user runs them."""

from __future__ import annotations

import json
import re
import shlex
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from app.sandbox.stand_in_videodb import StandInVideoDB
from harness.broker_process import REPO, BrokerProcess, clean_env, free_port
from harness.servers import ThreadedServer
from tests.fakes.identity_provider import FakeIdentityProvider
from tests.fakes.tls import self_signed_certificate
from tests.integration.conftest import API_KEY, AUDIENCE, TOKEN_PATH, broker_settings

pytestmark = pytest.mark.integration


def _run(
    args: list[str], env: dict[str, str], timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args,
        env={**clean_env(**env), "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO / "tests",
    )


BAD_CONFIG = {
    "VIDEO_DB_API_KEY": API_KEY,
    "BROKER_AUTH_AUDIENCE": "aud",
    "BROKER_AUTH_JWKS_URL": "https://idp.example.com/jwks.json",
    "BROKER_AUTH_HS256_SECRET": "x" * 40,
}


@pytest.mark.parametrize(
    "command",
    [
        [sys.executable, "-m", "app.cli", "serve", "--port", "0"],
        [sys.executable, "-m", "uvicorn", "--factory", "app.main:create_app", "--port", "0"],
    ],
    ids=["token-broker serve", "uvicorn --factory"],
)
def test_bad_configuration_stops_with_one_clear_line(command: list[str]) -> None:
    result = _run(command, BAD_CONFIG)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("configuration error: BROKER_AUTH_JWKS_URL")
    assert "exclusive" in lines[-1]
    assert API_KEY not in result.stdout + result.stderr
    assert "x" * 40 not in result.stdout + result.stderr
    assert "Traceback" not in result.stderr


def test_sigterm_finishes_in_flight_requests_then_exits(
    idp: FakeIdentityProvider, videodb_server: tuple[StandInVideoDB, ThreadedServer]
) -> None:
    fake, server = videodb_server
    fake.reset()
    fake.delay = 0.8
    process = BrokerProcess(broker_settings(idp, server.url, BROKER_UPSTREAM_TIMEOUT="5"))
    process.wait_ready()
    results: list[httpx.Response] = []
    token = idp.issuers[0].mint("in-flight", AUDIENCE)

    def call() -> None:
        results.append(
            httpx.post(
                process.url + TOKEN_PATH, headers={"Authorization": f"Bearer {token}"}, timeout=10
            )
        )

    worker = threading.Thread(target=call)
    worker.start()
    while not fake.calls:
        time.sleep(0.01)
    process.proc.send_signal(signal.SIGTERM)
    time.sleep(0.1)
    with pytest.raises(httpx.ConnectError):  # no longer accepting
        httpx.get(process.url + "/healthz", timeout=1)
    worker.join(timeout=10)
    assert results
    assert results[0].status_code == 200
    process.proc.wait(timeout=10)
    assert process.terminate() == 0
    fake.reset()


@contextmanager
def _running_demo(*args: str, curl_lines: int) -> Iterator[tuple[int, list[str], list[str]]]:
    """`token-broker demo` on a free port until its `curl_lines` curl lines are printed;
    yields the port, those lines and everything printed until then; Ctrl+C at the end."""
    port = free_port()
    demo = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "demo", "--port", str(port), *args],
        env={**clean_env(), "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=REPO / "tests",
    )
    try:
        assert demo.stdout is not None
        printed: list[str] = []
        found: list[str] = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(found) < curl_lines:
            line = demo.stdout.readline()
            printed.append(line)
            if line.strip().startswith(("curl ", "S=$(curl ")):
                found.append(line.strip())
        assert len(found) == curl_lines, f"demo printed {len(found)} curl lines:\n{printed}"
        yield port, found, printed
    finally:
        demo.send_signal(signal.SIGINT)
        demo.wait(timeout=15)
        if demo.stdout is not None:
            demo.stdout.close()
    assert demo.returncode in (0, -signal.SIGINT)


def test_demo_prints_curl_lines_that_work_as_printed() -> None:
    """A token, then a capture session (its id and a token) that its owner reads back."""
    with _running_demo(curl_lines=2) as (port, (curl_line, session_line), printed):
        # one server's start-up lines, not three (the stand-ins start quietly)
        assert sum("Application startup complete" in line for line in printed) == 1
        result = subprocess.run(
            ["bash", "-c", curl_line], capture_output=True, text=True, timeout=30
        )
        assert result.returncode == 0
        assert '"token":"st-' in result.stdout
        assert '"expires_in":600' in result.stdout
        assert shlex.split(curl_line)[0] == "curl"
        created = subprocess.run(
            ["bash", "-c", session_line + " -i"], capture_output=True, text=True, timeout=30
        )
        assert created.returncode == 0
        assert created.stdout.startswith("HTTP/1.1 201")
        head, _, body = created.stdout.partition("\n\n")  # text mode: CRLF read as \n
        session = json.loads(body)
        assert session["session_id"].startswith("cap-")
        assert session["token"].startswith("st-")
        (location,) = [
            line.split(": ", 1)[1]
            for line in head.splitlines()
            if line.lower().startswith("location:")
        ]
        words = shlex.split(session_line)
        name, _, value = words[words.index("-H") + 1].partition(": ")
        read = httpx.get(f"http://127.0.0.1:{port}{location}", headers={name: value})
        assert read.status_code == 200
        assert read.json()["session_id"] == session["session_id"]


def test_demo_shows_a_capture_sessions_live_feed_with_the_line_it_prints() -> None:
    """The third line: a session created, then its feed followed to its end as the
    stand-in plays a short recording (webhooks, VideoDB's socket, the AI steps)."""
    with _running_demo(curl_lines=3) as (_, (_, _, follow), _):
        assert follow.startswith("S=$(curl ")
        result = subprocess.run(["bash", "-c", follow], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    events = [line.removeprefix("event: ") for line in result.stdout.splitlines()]
    assert [e for e in events if e in ("transcript", "visual_index", "status")] == [
        "transcript",
        "visual_index",
        "transcript",
        "status",
    ]
    assert 'data: {"status":"stopped"}' in result.stdout


def test_demo_with_two_providers_prints_a_working_line_for_each() -> None:
    """`make demo PROVIDERS=2`: the list style, one VideoDB user per provider."""
    with _running_demo("--providers", "2", curl_lines=3) as (port, curl_lines, _):
        tokens = []
        for line in curl_lines[:2]:
            result = subprocess.run(
                ["bash", "-c", line], capture_output=True, text=True, timeout=30
            )
            assert result.returncode == 0
            tokens.append(json.loads(result.stdout)["token"])
        assert tokens[0] != tokens[1]  # the same sub at two providers: two users
        ready = httpx.get(f"http://127.0.0.1:{port}/readyz").json()
        assert ready["identity_providers"] == {"web": "ok", "desktop": "ok"}


def test_serve_terminates_tls_itself_and_sends_hsts(
    idp: FakeIdentityProvider,
    videodb_server: tuple[StandInVideoDB, ThreadedServer],
    tmp_path: Path,
) -> None:
    cert, key = self_signed_certificate(tmp_path)
    _, server = videodb_server
    settings = broker_settings(
        idp, server.url, BROKER_TLS_CERT_FILE=str(cert), BROKER_TLS_KEY_FILE=str(key)
    )
    process = BrokerProcess(settings)
    https_url = process.url.replace("http://", "https://")
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                resp = httpx.get(
                    https_url + "/healthz",
                    verify=ssl.create_default_context(cafile=cert),
                    timeout=1,
                )
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline or process.proc.poll() is not None:
                    raise AssertionError(process.output()) from None
                time.sleep(0.1)
        assert resp.status_code == 200
        assert resp.headers["strict-transport-security"].startswith("max-age=")
        for version, expected in ((ssl.TLSVersion.TLSv1_1, False), (ssl.TLSVersion.TLSv1_3, True)):
            assert _handshakes(process.port, cert, version=version) is expected, version
        # TLS 1.2: forward-secret AEAD suites only; uvicorn's default also took CBC ones
        assert _handshakes(process.port, cert, ciphers="ECDHE-ECDSA-AES128-GCM-SHA256")
        assert not _handshakes(process.port, cert, ciphers="ECDHE-ECDSA-AES128-SHA256")
    finally:
        assert process.terminate() == 0


def _handshakes(
    port: int,
    cafile: Path,
    *,
    version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_2,
    ciphers: str | None = None,
) -> bool:
    """Whether a client offering only this TLS version (and these suites) gets through."""
    context = ssl.create_default_context(cafile=cafile)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TLS 1.1: deprecated, as it should
        context.minimum_version = context.maximum_version = version
    if version < ssl.TLSVersion.TLSv1_2:
        context.set_ciphers("ALL:@SECLEVEL=0")  # let the client offer it at all
    if ciphers:
        context.set_ciphers(ciphers)
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
            context.wrap_socket(raw, server_hostname="127.0.0.1"),
        ):
            return True
    except ssl.SSLError:
        return False


def test_metrics_add_up_across_workers(
    idp: FakeIdentityProvider, videodb_server: tuple[StandInVideoDB, ThreadedServer]
) -> None:
    _, server = videodb_server
    process = BrokerProcess(broker_settings(idp, server.url), args=("--workers", "2"))
    try:
        process.wait_ready()
        token = idp.issuers[0].mint("worker-user", AUDIENCE)
        pattern = r'broker_http_requests_total\{method="GET",route="/healthz",status="200"\} (\S+)'
        before = re.search(pattern, httpx.get(process.url + "/metrics").text)
        baseline = float(before.group(1)) if before else 0.0
        for _ in range(20):  # new connections: the kernel spreads them over both workers
            with httpx.Client() as client:
                assert client.get(process.url + "/healthz").status_code == 200
        for _ in range(6):
            with httpx.Client() as client:
                resp = client.post(
                    process.url + TOKEN_PATH, headers={"Authorization": f"Bearer {token}"}
                )
                assert resp.status_code == 200
        text = httpx.get(process.url + "/metrics").text
        match = re.search(pattern, text)
        assert match is not None, text[:2000]
        assert float(match.group(1)) == baseline + 20
        issued = re.findall(r"broker_tokens_issued_total\{source=\"(\w+)\"\} (\S+)", text)
        assert sum(float(n) for _, n in issued) == 6
    finally:
        process.terminate()


def _two_providers(first: dict[str, str], second: dict[str, str]) -> dict[str, str]:
    base = {"audience": "aud", "jwks_url": "https://idp.example.com/jwks.json"}
    providers = [
        {**base, "issuer": "https://one.example.com", **first},
        {**base, "issuer": "https://two.example.com", **second},
    ]
    return {"VIDEO_DB_API_KEY": API_KEY, "BROKER_AUTH_ISSUERS": json.dumps(providers)}


@pytest.mark.parametrize(
    ("env", "words"),
    [
        (
            _two_providers({"name": "none", "user_id_prefix": "a:"}, {"user_id_prefix": "b:"}),
            "would share the metrics label 'none'",
        ),
        (
            _two_providers({"name": "None", "user_id_prefix": "a:"}, {"user_id_prefix": "b:"}),
            "would share the metrics label 'none'",
        ),
        (
            {
                "VIDEO_DB_API_KEY": API_KEY,
                "BROKER_AUTH_AUDIENCE": "aud",
                "BROKER_AUTH_JWKS_URL": "https://none/jwks.json",  # unnamed: its host names it
            },
            "would share the metrics label 'none'",
        ),
        (
            _two_providers({"user_id_prefix": "Web:"}, {"user_id_prefix": "web:"}),
            "ignoring case ('Web:' begins 'web:')",
        ),
        (
            _two_providers({"user_id_prefix": "WEB:"}, {"user_id_prefix": "web:desk:"}),
            "ignoring case ('WEB:' begins 'web:desk:')",
        ),
    ],
    ids=["named_none", "named_None", "host_none", "prefixes_in_two_cases", "prefix_begins_other"],
)
def test_providers_that_could_be_mistaken_for_another_stop_start_up(
    env: dict[str, str], words: str
) -> None:
    """'none' is the label of refusals before a provider is known; VideoDB may not tell user
    ids apart by case (it documents nothing of it), so prefixes must differ ignoring case."""
    result = _run([sys.executable, "-m", "app.cli", "serve", "--port", "0"], env)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("configuration error: BROKER_AUTH_"), lines  # _ISSUERS, or _*
    assert words in lines[-1]
    assert API_KEY not in result.stdout + result.stderr
    assert "Traceback" not in result.stderr


SERVABLE = {
    "VIDEO_DB_API_KEY": API_KEY,
    "BROKER_AUTH_AUDIENCE": AUDIENCE,
    "BROKER_AUTH_HS256_SECRET": "s" * 40,
}


@pytest.mark.parametrize(
    ("args", "env", "line"),
    [
        ([], {"PORT": "abc"}, "configuration error: PORT: must be a port number from 0 to 65535"),
        ([], {"PORT": "70000"}, "configuration error: PORT: must be a port number"),
        (["--workers", "0"], {}, "argument --workers: must be a whole number from 1 to 256"),
        (["--port", "http"], {}, "argument --port: must be a port number from 0 to 65535"),
    ],
    ids=["PORT=abc", "PORT=70000", "--workers 0", "--port http"],
)
def test_a_port_or_worker_count_that_cannot_serve_is_one_line_not_a_default(
    args: list[str], env: dict[str, str], line: str
) -> None:
    # PORT=abc once served on 8080 without a word, and --workers 0 was taken
    result = _run([sys.executable, "-m", "app.cli", "serve", *args], {**SERVABLE, **env})
    assert result.returncode == 2, result.stderr
    assert line in result.stderr
    assert "Traceback" not in result.stderr
