"""`token-broker demo`'s settings and what it prints; the demo run end to end is in
tests/integration/test_command_line.py."""

from __future__ import annotations

import shlex

import pytest

from app.sandbox.demo import DEMO_AUDIENCE, banner, curl_line, demo_settings


def test_the_demo_never_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BROKER_AUTH_AUDIENCE", "production-audience")
    monkeypatch.setenv("VIDEO_DB_API", "https://api.videodb.io")
    monkeypatch.setenv("BROKER_REDIS_URL", "redis://prod:6379/0")
    settings = demo_settings("http://127.0.0.1:1", ["http://127.0.0.1:2"], "sk-demo-0123456789")
    assert settings.auth_audience == DEMO_AUDIENCE
    assert settings.videodb_api == "http://127.0.0.1:1"
    assert settings.redis_url is None


def test_the_curl_line_works_as_printed() -> None:
    bearer = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJkZW1vIn0.c2ln"
    words = shlex.split(curl_line("http://127.0.0.1:8080", bearer))
    assert words[:4] == ["curl", "-sS", "-X", "POST"]
    assert "http://127.0.0.1:8080/v1/capture/session/token" in words
    assert f"Authorization: Bearer {bearer}" in words
    assert curl_line("http://127.0.0.1:8080", bearer) in banner("http://127.0.0.1:8080", [bearer])


def test_two_providers_are_configured_in_the_list_style_each_with_its_prefix(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BROKER_AUTH_ISSUER", "https://production.example")  # never read
    urls = ["http://127.0.0.1:2", "http://127.0.0.1:3"]
    settings = demo_settings("http://127.0.0.1:1", urls, "sk-demo-0123456789")
    assert settings.auth_issuer is None
    assert [(p.label, p.issuer, p.user_id_prefix) for p in settings.identity_providers] == [
        ("web", urls[0], "web:"),
        ("desktop", urls[1], "desktop:"),
    ]
    printed = banner("http://127.0.0.1:8080", ["bearer-web", "bearer-desktop"])
    assert curl_line("http://127.0.0.1:8080", "bearer-web") in printed
    assert curl_line("http://127.0.0.1:8080", "bearer-desktop") in printed
    assert "VideoDB user 'desktop:demo-user'" in printed
