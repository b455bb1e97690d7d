"""`token-broker check [--live]` and `serve`'s start-up checks, as an operator runs them."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.sandbox.stand_in_videodb import StandInVideoDB
from harness.broker_process import REPO, clean_env, free_port
from harness.servers import ThreadedServer
from tests.fakes.identity_provider import FakeIdentityProvider
from tests.fakes.redis_server import RedisServer
from tests.fakes.redis_topologies import SENTINEL_SERVICE, ClusterOfThree, SentinelGroup
from tests.fakes.tls import self_signed_certificate
from tests.integration.conftest import API_KEY, assert_no_secret_in, broker_settings

pytestmark = pytest.mark.integration

CHECK = [sys.executable, "-m", "app.cli", "check"]
SERVE = [sys.executable, "-m", "app.cli", "serve", "--port", "0"]
REDIS_PASSWORD = "probe-password-1234567890"


def _run(args: list[str], env: dict[str, str], cwd: Path = REPO / "tests") -> tuple[int, str]:
    """Exit status and everything printed (stdout then stderr)."""
    result = subprocess.run(
        args,
        env={**clean_env(**env), "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
    )
    return result.returncode, result.stdout + result.stderr


def _lines(output: str, status: str) -> list[str]:
    return re.findall(rf"^{status}\s+(.*)$", output, re.M)


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.kill()


@pytest.fixture
def stand_ins(
    idp: FakeIdentityProvider, videodb_server: tuple[StandInVideoDB, ThreadedServer]
) -> dict[str, str]:
    """Settings wiring the broker to the stand-ins: every live check passes."""
    fake, server = videodb_server
    fake.reset()
    return broker_settings(idp, server.url)


def test_check_takes_no_network_and_live_proves_each_neighbour(
    stand_ins: dict[str, str],
    redis_server: RedisServer,
    videodb_server: tuple[StandInVideoDB, ThreadedServer],
) -> None:
    settings = {**stand_ins, "BROKER_REDIS_URL": redis_server.url}
    fake, _ = videodb_server
    code, output = _run(CHECK, settings)
    assert code == 0, output
    plain = _lines(output, "ok")
    assert plain[0] == "configuration: valid (jwks keys)"
    assert re.fullmatch(r"signing_keys \[127\.0\.0\.1\]: \d+ key.*", plain[1])
    assert len(plain) == 2  # no --live: neither VideoDB nor Redis is asked
    assert not fake.calls
    code, output = _run([*CHECK, "--live"], settings)
    assert code == 0, output
    passed = "\n".join(_lines(output, "ok"))
    assert "videodb: the key is accepted" in passed
    assert "redis: answers PING, SET, GET, EXISTS, PTTL, PEXPIRE, EVAL, DEL" in passed
    assert re.search(r"signing_keys \[127\.0\.0\.1\]: \d+ key", passed)
    down = {**settings, "BROKER_AUTH_JWKS_URL": f"http://127.0.0.1:{free_port()}/jwks.json"}
    code, output = _run(CHECK, down)  # keys that do not load fail plain check too
    assert code == 1
    assert _lines(output, "FAIL")[0].startswith("signing_keys [127.0.0.1]:")
    assert [(c.body["user_id"], c.body["expires_in"]) for c in fake.calls] == [
        ("token-broker-check", 60)  # one token, of the broker's shortest lifetime
    ]
    assert_no_secret_in(output)


def test_check_live_names_each_neighbour_that_fails(
    stand_ins: dict[str, str], redis_server: RedisServer
) -> None:
    down = f"http://127.0.0.1:{free_port()}"
    settings = {
        **stand_ins,
        "VIDEO_DB_API_KEY": "sk-revoked-0123456789",  # VideoDB answers 401
        "BROKER_REDIS_URL": f"redis://:{REDIS_PASSWORD}@127.0.0.1:{free_port()}/0",
        "BROKER_AUTH_JWKS_URL": down + "/jwks.json",
    }
    code, output = _run([*CHECK, "--live"], settings)
    assert code == 1
    failed = _lines(output, "FAIL")
    assert len(failed) == 3, output
    assert failed[0].startswith("videodb: VideoDB refused the broker's credentials")
    assert failed[1].startswith("redis: PING failed: ConnectionError")
    assert failed[2].startswith("signing_keys [127.0.0.1]:")
    assert REDIS_PASSWORD not in output
    assert "sk-revoked" not in output
    assert "Traceback" not in output


def test_check_live_fails_when_redis_refuses_a_command_the_broker_sends(
    stand_ins: dict[str, str], redis_server: RedisServer
) -> None:
    admin = redis_server.client()
    admin.acl_setuser(
        "noscripts",
        enabled=True,
        passwords=[f"+{REDIS_PASSWORD}"],
        keys=["*"],
        categories=["+@all", "-@scripting"],
    )
    url = f"redis://noscripts:{REDIS_PASSWORD}@127.0.0.1:{redis_server.port}/0"
    code, output = _run([*CHECK, "--live"], {**stand_ins, "BROKER_REDIS_URL": url})
    assert code == 1
    (failed,) = _lines(output, "FAIL")
    assert failed.startswith("redis: EVAL failed: NoPermissionError")
    assert REDIS_PASSWORD not in output


def test_check_refuses_the_example_key_and_lists_every_problem(tmp_path: Path) -> None:
    shutil.copy(REPO / ".env.example", tmp_path / ".env")  # copied, never filled in
    code, output = _run(CHECK, {}, cwd=tmp_path)
    assert code == 1
    assert _lines(output, "FAIL") == [
        "configuration: VIDEO_DB_API_KEY: is still the placeholder from .env.example: "
        "set your VideoDB secret key"
    ]
    broken = {
        "VIDEO_DB_API_KEY": API_KEY,
        "VIDEO_DB_API": "http://videodb.example.com",
        "BROKER_AUTH_AUDIENCE": "aud",
        "BROKER_AUTH_JWKS_URL": "https://idp.example.com/jwks.json",
        "BROKER_CORS_ORIGINS": "*",
        "BROKER_RATE_LIMIT": "lots",
    }
    code, output = _run(CHECK, broken, cwd=tmp_path / "..")
    assert code == 1
    failed = _lines(output, "FAIL")
    assert [line.split(":")[1].strip() for line in failed] == [
        "VIDEO_DB_API",
        "BROKER_CORS_ORIGINS",
        "BROKER_RATE_LIMIT",
    ]
    assert API_KEY not in output


@pytest.mark.parametrize("command", [CHECK, SERVE], ids=["check", "serve"])
def test_a_certificate_that_cannot_be_used_is_one_line_naming_the_variable(
    stand_ins: dict[str, str], tmp_path: Path, command: list[str]
) -> None:
    cert, key = self_signed_certificate(tmp_path)
    missing = {
        **stand_ins,
        "BROKER_TLS_CERT_FILE": str(tmp_path / "absent.pem"),
        "BROKER_TLS_KEY_FILE": str(key),
    }
    code, output = _run(command, missing)
    assert code != 0
    assert "Traceback" not in output
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1, output
    assert "BROKER_TLS_CERT_FILE: the file cannot be read (No such file or directory)" in lines[0]
    swapped = {**missing, "BROKER_TLS_CERT_FILE": str(key), "BROKER_TLS_KEY_FILE": str(cert)}
    code, output = _run(command, swapped)
    assert code != 0
    assert "Traceback" not in output
    assert "not a PEM certificate and its private key" in output


def test_check_live_reaches_a_cluster_and_the_primary_sentinel_names(
    stand_ins: dict[str, str],
    redis_cluster: ClusterOfThree,
    redis_sentinels: SentinelGroup,
) -> None:
    shapes = {
        "cluster": {"BROKER_REDIS_URL": redis_cluster.url, "BROKER_REDIS_CLUSTER": "on"},
        "sentinel": {
            "BROKER_REDIS_URL": f"redis://{SENTINEL_SERVICE}/0",
            "BROKER_REDIS_SENTINELS": redis_sentinels.addresses,
        },
    }
    for shape, redis in shapes.items():
        code, output = _run([*CHECK, "--live"], {**stand_ins, **redis})
        assert code == 0, (shape, output)
        assert "redis: answers PING, SET, GET, EXISTS, PTTL, PEXPIRE, EVAL, DEL" in output
    unknown = {**shapes["sentinel"], "BROKER_REDIS_URL": "redis://no-such-service/0"}
    code, output = _run([*CHECK, "--live"], {**stand_ins, **unknown})
    assert code == 1
    assert "redis: PING failed: MasterNotFoundError" in "\n".join(_lines(output, "FAIL"))
