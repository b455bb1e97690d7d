"""The request context: one log line per request (the audit line for an issued token),
the request id, the security headers, forwarded addresses only from trusted proxies."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
import respx

from app.sandbox.dev_issuer import DevIssuer
from tests.conftest import APP_ORIGIN, AUDIENCE, TOKEN_PATH, Build, bearer


async def test_audit_line_for_every_issued_token(
    app_client: Build,
    make_settings: Callable[..., Any],
    issuer: DevIssuer,
    network: respx.MockRouter,
    capsys: pytest.CaptureFixture[str],
) -> None:
    client = await app_client(make_settings(trusted_proxies=["127.0.0.1"]))
    headers = {
        **bearer(issuer.mint("audited", AUDIENCE)),
        "User-Agent": "CaptureApp/2.1",
        "X-Forwarded-For": "203.0.113.9",
    }
    resp = await client.post(TOKEN_PATH, json={"expires_in": 600}, headers=headers)
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line]
    (audit,) = [r for r in lines if r.get("logger") == "app.audit"]
    assert audit["event"] == "token_issued"
    assert audit["user_id"] == "audited"
    assert audit["requested_ttl"] == 600
    assert 598 <= audit["granted_ttl"] <= 600
    assert audit["source"] == "upstream"
    assert audit["client_ip"] == "203.0.113.9"
    assert audit["user_agent"] == "CaptureApp/2.1"
    assert audit["token"].startswith("sha256:")
    assert audit["request_id"] == resp.headers["x-request-id"]


async def test_forwarded_for_from_an_untrusted_peer_is_ignored(
    app_client: Build,
    issuer: DevIssuer,
    network: respx.MockRouter,
    capsys: pytest.CaptureFixture[str],
) -> None:
    client = await app_client()  # no trusted proxies
    headers = {**bearer(issuer.mint("spoofer", AUDIENCE)), "X-Forwarded-For": "198.51.100.1"}
    await client.post(TOKEN_PATH, headers=headers)
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line]
    (audit,) = [r for r in lines if r.get("logger") == "app.audit"]
    assert audit["client_ip"] == "127.0.0.1"


@pytest.mark.parametrize(
    ("method", "path", "with_bearer", "status"),
    [
        ("POST", TOKEN_PATH, True, 200),
        ("POST", TOKEN_PATH, False, 401),
        ("GET", TOKEN_PATH, True, 405),
        ("GET", "/nope", False, 404),
        ("GET", "/healthz", False, 200),
        ("GET", "/readyz", False, 200),
        ("GET", "/metrics", False, 200),
        ("GET", "/openapi.json", False, 200),
    ],
)
async def test_every_response_carries_the_security_headers(
    app_client: Build,
    issuer: DevIssuer,
    network: respx.MockRouter,
    method: str,
    path: str,
    with_bearer: bool,
    status: int,
) -> None:
    """The OWASP REST set: nothing sniffed, framed, loaded from, or stored by a cache."""
    client = await app_client()
    headers = bearer(issuer.mint("u", AUDIENCE)) if with_bearer else {}
    resp = await client.request(method, path, headers=headers)
    assert resp.status_code == status
    assert resp.headers["x-content-type-options"] == "nosniff"
    assert resp.headers["content-security-policy"] == "default-src 'none'; frame-ancestors 'none'"
    assert resp.headers["x-frame-options"] == "DENY"
    assert resp.headers["cache-control"] == "no-store"
    assert len(resp.headers["x-request-id"]) == 32
    assert "strict-transport-security" not in resp.headers  # plain HTTP: HSTS means nothing


async def test_a_preflight_carries_the_security_headers_too(
    app_client: Build, network: respx.MockRouter
) -> None:
    client = await app_client()
    resp = await client.options(
        TOKEN_PATH,
        headers={"Origin": APP_ORIGIN, "Access-Control-Request-Method": "POST"},
    )
    assert resp.status_code == 200
    assert resp.headers["access-control-allow-origin"] == APP_ORIGIN
    assert resp.headers["x-content-type-options"] == "nosniff"
    assert resp.headers["x-frame-options"] == "DENY"


async def test_secrets_a_client_hides_in_the_path_or_user_agent_never_reach_the_log_whole(
    app_client: Build,
    issuer: DevIssuer,
    network: respx.MockRouter,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The scrubber asked for a word boundary before a secret and took only [A-Za-z0-9_.-]
    in it: after a JSON escape or a word character, or with + / = in it, one passed whole."""
    jwt = issuer.mint("someone", AUDIENCE)
    secrets_ = ["st-LEAKTOKEN123456", jwt, "sk-ab+cd/ef=gh+ij0", "st-WORDJOINED98765"]
    client = await app_client()
    for path in (
        "/x%0Ast-LEAKTOKEN123456",  # the log line holds `\nst-LEAK…`
        f"/x%09{jwt}",  # `\t<JWT>`
        "/key/sk-ab+cd/ef=gh+ij0",
        "/tokenst-WORDJOINED98765",
    ):
        assert (await client.get(path)).status_code == 404
    headers = {**bearer(issuer.mint("ua", AUDIENCE)), "User-Agent": f"x\t{jwt}"}
    assert (await client.post(TOKEN_PATH, headers=headers)).status_code == 200
    # a JWT whose claims run past the 256 characters of user agent the audit line keeps
    long_claims = issuer.mint("someone", AUDIENCE, email="a-rather-long-address@" + "x" * 300)
    headers = {**bearer(issuer.mint("ub", AUDIENCE)), "User-Agent": long_claims}
    assert (await client.post(TOKEN_PATH, headers=headers)).status_code == 200
    claims_prefix = ".".join(long_claims.split(".")[:2])[:200]
    out = capsys.readouterr().out
    lines = [json.loads(line) for line in out.splitlines() if line]  # every line still JSON
    assert len([r for r in lines if r.get("event") == "request"]) == 4
    tab, cut = [r for r in lines if r.get("event") == "token_issued"]
    assert tab["user_agent"].startswith("x\t[redacted sha256:")
    assert cut["user_agent"].startswith("[redacted sha256:")
    for secret in [*secrets_, claims_prefix]:
        assert secret not in out
        assert secret not in json.dumps(lines)
