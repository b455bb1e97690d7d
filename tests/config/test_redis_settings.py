"""The shapes of Redis an operator names (one node, TLS with a CA, Sentinel, Cluster): each
read into one validated target, each mistake one line naming its variables."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.config.test_settings import _error, load_settings_from

URL = "redis://broker:hunter2-pass@redis:6379/0"


def test_no_url_no_redis(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings_from(monkeypatch).redis_target is None


def test_one_node(monkeypatch: pytest.MonkeyPatch) -> None:
    target = load_settings_from(monkeypatch, BROKER_REDIS_URL=URL).redis_target
    assert target is not None
    assert (target.shape, target.tls, target.ca_file) == ("node", False, None)


def test_tls_with_a_ca_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    target = load_settings_from(
        monkeypatch,
        BROKER_REDIS_URL="rediss://broker:pw@redis:6380/0",
        BROKER_REDIS_CA_FILE=str(ca),
    ).redis_target
    assert target is not None
    assert (target.shape, target.tls, target.ca_file) == ("node", True, str(ca))


def test_sentinels_name_the_primary_by_the_urls_host(monkeypatch: pytest.MonkeyPatch) -> None:
    target = load_settings_from(
        monkeypatch,
        BROKER_REDIS_URL="redis://:pw@mymaster/0",
        BROKER_REDIS_SENTINELS="sentinel-0:26379, sentinel-1:26379,[::1]:26380",
        BROKER_REDIS_SENTINEL_PASSWORD="sentinel-pw",
    ).redis_target
    assert target is not None
    assert target.shape == "sentinel"
    assert target.sentinels == (("sentinel-0", 26379), ("sentinel-1", 26379), ("::1", 26380))
    assert target.sentinel_password is not None
    assert "sentinel-pw" not in repr(target)


def test_a_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    target = load_settings_from(
        monkeypatch, BROKER_REDIS_URL=URL, BROKER_REDIS_CLUSTER="ON"
    ).redis_target
    assert target is not None
    assert target.shape == "cluster"


@pytest.mark.parametrize(
    ("env", "variable", "words"),
    [
        ({"BROKER_REDIS_CLUSTER": "on"}, "BROKER_REDIS_CLUSTER", "needs BROKER_REDIS_URL"),
        ({"BROKER_REDIS_SENTINELS": "s:26379"}, "BROKER_REDIS_SENTINELS", "needs BROKER_REDIS_URL"),
        ({"BROKER_REDIS_CA_FILE": "/ca.pem"}, "BROKER_REDIS_CA_FILE", "needs BROKER_REDIS_URL"),
        (
            {"BROKER_REDIS_CLUSTER": "on", "BROKER_REDIS_SENTINELS": "s:26379"},
            "BROKER_REDIS_CLUSTER, BROKER_REDIS_SENTINELS",
            "need BROKER_REDIS_URL",
        ),
        (
            {"BROKER_REDIS_URL": URL, "BROKER_REDIS_CA_FILE": "/etc/hostname"},
            "BROKER_REDIS_CA_FILE",
            "rediss://",
        ),
        (
            {"BROKER_REDIS_URL": "rediss://r:6380/0", "BROKER_REDIS_CA_FILE": "/no/such/ca.pem"},
            "BROKER_REDIS_CA_FILE",
            "readable file",
        ),
        (
            {
                "BROKER_REDIS_URL": "redis://:pw@mymaster/0",
                "BROKER_REDIS_CLUSTER": "on",
                "BROKER_REDIS_SENTINELS": "s:26379",
            },
            "BROKER_REDIS_SENTINELS",
            "set one",
        ),
        (
            {"BROKER_REDIS_URL": URL, "BROKER_REDIS_SENTINEL_PASSWORD": "x"},
            "BROKER_REDIS_SENTINEL_PASSWORD",
            "needs BROKER_REDIS_SENTINELS",
        ),
        (
            {"BROKER_REDIS_URL": URL, "BROKER_REDIS_SENTINELS": "s:26379"},
            "BROKER_REDIS_URL",
            "service name",
        ),
        (
            {"BROKER_REDIS_URL": "redis://:pw@mymaster/0", "BROKER_REDIS_SENTINELS": "s"},
            "BROKER_REDIS_SENTINELS",
            "host:port",
        ),
        (
            {"BROKER_REDIS_URL": "redis://:pw@mymaster/0", "BROKER_REDIS_SENTINELS": "s:0"},
            "BROKER_REDIS_SENTINELS",
            "host:port",
        ),
        (
            {"BROKER_REDIS_URL": "redis://r:6379/3", "BROKER_REDIS_CLUSTER": "on"},
            "BROKER_REDIS_URL",
            "database 0",
        ),
        (
            {"BROKER_REDIS_URL": "unix:///run/redis.sock", "BROKER_REDIS_CLUSTER": "on"},
            "BROKER_REDIS_URL",
            "redis:// or rediss://",
        ),
        ({"BROKER_REDIS_CLUSTER": "yes"}, "BROKER_REDIS_CLUSTER", "'on' or 'off'"),
    ],
)
def test_each_mistake_is_one_line_naming_its_variables(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], variable: str, words: str
) -> None:
    message = _error(monkeypatch, **env)
    assert variable in message
    assert words in message
    assert "hunter2-pass" not in message
