"""`BROKER_AUTH_ISSUERS`: a list that cannot work stops start-up with one line saying why."""

from __future__ import annotations

import json
from typing import Any

import pytest

from app.config import ConfigError, load_settings

KEY = "sk-config-0123456789"
ONE = {"issuer": "https://a.idp.test", "audience": "api"}
TWO = [
    {**ONE, "user_id_prefix": "a:"},
    {"issuer": "https://b.idp.test", "audience": "api", "user_id_prefix": "b:"},
]


def _load(monkeypatch: pytest.MonkeyPatch, issuers: Any, **env: str) -> Any:
    monkeypatch.setenv("VIDEO_DB_API_KEY", KEY)
    raw = issuers if isinstance(issuers, str) else json.dumps(issuers)
    monkeypatch.setenv("BROKER_AUTH_ISSUERS", raw)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return load_settings()


@pytest.mark.parametrize(
    ("issuers", "says"),
    [
        ("{not json", "is not JSON"),
        ('{"issuer": "https://a.idp.test"}', "must be a JSON array"),
        ("[]", "the list is empty"),
        ([{"audience": "api"}], "provider 1: issuer is required"),
        ([ONE, {"issuer": "https://b.idp.test"}], "provider 2: audience is required"),
        ([{**ONE, "audience": ""}], "provider 1: audience"),
        ([{**ONE, "issuer": "http://idp.example.com"}], "provider 1: issuer must use https://"),
        ([{**ONE, "jwks_url": "http://idp.example.com/k"}], "provider 1: jwks_url must use https"),
        ([{**ONE, "audiance": "typo"}], "provider 1: audiance is not a setting a provider has"),
        ([{**ONE, "audience_claim": "cid"}], "provider 1: audience_claim"),
        ([{**ONE, "algorithms": ["HS256"]}], "provider 1: algorithms may hold only ES256"),
        ([{**ONE, "algorithms": ["none"]}], "RS512 (not none)"),
        ([{**ONE, "hs256_secret": "x" * 40}], "hs256_secret is not supported in the list"),
        ([{**ONE, "hs256_next_secret": "x" * 40}], "hs256_secret is not supported in the list"),
        ([{**ONE, "user_id_prefix": "has space"}], "provider 1: user_id_prefix"),
        ([{**ONE, "user_id_prefix": "p" * 33}], "provider 1: user_id_prefix"),
        ([ONE, {**ONE, "issuer": "https://b.idp.test"}], "each needs a non-empty user_id_prefix"),
        ([TWO[0], {**TWO[1], "user_id_prefix": "a:"}], "none may begin another"),
        ([TWO[0], {**TWO[1], "user_id_prefix": "a:b"}], "'a:' begins 'a:b'"),
        ([TWO[0], {**TWO[1], "issuer": "https://a.idp.test"}], "two providers share one issuer"),
        (
            [
                {**TWO[0], "issuer": "https://idp.test/pool-1"},
                {**TWO[1], "issuer": "https://idp.test/pool-2"},
            ],
            "give each provider its own 'name'",
        ),
    ],
)
def test_a_list_that_cannot_work_is_one_line_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, issuers: Any, says: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        _load(monkeypatch, issuers)
    message = str(caught.value)
    assert message.startswith("BROKER_AUTH_ISSUERS"), message
    assert says in message
    assert "\n" not in message
    assert "x" * 40 not in message  # a secret put where it does not belong is never echoed


@pytest.mark.parametrize(
    "single",
    [
        "BROKER_AUTH_JWKS_URL",
        "BROKER_AUTH_ISSUER",
        "BROKER_AUTH_AUDIENCE",
        "BROKER_AUTH_HS256_SECRET",
        "BROKER_AUTH_HS256_NEXT_SECRET",
        "BROKER_AUTH_ALGORITHMS",
        "BROKER_AUTH_USER_CLAIM",
        "BROKER_AUTH_REQUIRED_SCOPES",
        "BROKER_AUTH_USER_ID_PREFIX",
    ],
)
def test_mixing_both_styles_is_refused(monkeypatch: pytest.MonkeyPatch, single: str) -> None:
    values = {
        "BROKER_AUTH_JWKS_URL": "https://a.idp.test/jwks.json",
        "BROKER_AUTH_ISSUER": "https://a.idp.test",
        "BROKER_AUTH_HS256_SECRET": "s" * 40,
        "BROKER_AUTH_HS256_NEXT_SECRET": "s" * 40,
        "BROKER_AUTH_ALGORITHMS": "RS256",
        "BROKER_AUTH_USER_CLAIM": "sub",
        "BROKER_AUTH_REQUIRED_SCOPES": "",
        "BROKER_AUTH_USER_ID_PREFIX": "a:",
    }
    with pytest.raises(ConfigError) as caught:
        _load(monkeypatch, [ONE], **{single: values.get(single, "api")})
    assert str(caught.value).startswith(f"BROKER_AUTH_ISSUERS replaces {single}")
    assert "s" * 40 not in str(caught.value)


def test_a_valid_list_becomes_one_provider_each(monkeypatch: pytest.MonkeyPatch) -> None:
    entries = [
        {**TWO[0], "name": "web", "required_scopes": ["capture"]},
        {
            **TWO[1],
            "jwks_url": "https://b.idp.test/keys",
            "audience_claim": "client_id",
            "algorithms": ["ES256", "RS256"],
            "user_claim": "uid",
        },
    ]
    settings = _load(monkeypatch, entries, BROKER_AUTH_LEEWAY_SECONDS="10")
    web, other = settings.identity_providers
    assert (web.label, web.key_source, web.required_scopes) == ("web", "discovery", ["capture"])
    assert (other.label, other.key_source) == ("b.idp.test", "jwks")
    assert (other.audience_claim, other.algorithms, other.user_claim) == (
        "client_id",
        ["ES256", "RS256"],
        "uid",
    )
    assert settings.auth_leeway_seconds == 10  # leeway and the cookie name stay global


def test_one_provider_needs_no_prefix_and_an_empty_variable_is_unset(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    (only,) = _load(monkeypatch, [ONE]).identity_providers
    assert only.user_id_prefix == ""
    with pytest.raises(ConfigError, match=r"^BROKER_AUTH_AUDIENCE: is required"):
        _load(monkeypatch, "  ")  # then the single-issuer style applies, and says what it lacks


def test_the_single_issuer_style_is_one_provider_with_its_prefix(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("VIDEO_DB_API_KEY", KEY)
    monkeypatch.setenv("BROKER_AUTH_ISSUER", "https://a.idp.test")
    monkeypatch.setenv("BROKER_AUTH_AUDIENCE", "api")
    monkeypatch.setenv("BROKER_AUTH_USER_ID_PREFIX", "acme:")
    (only,) = load_settings().identity_providers
    assert (only.label, only.user_id_prefix, only.key_source) == (
        "a.idp.test",
        "acme:",
        "discovery",
    )
    monkeypatch.setenv("BROKER_AUTH_USER_ID_PREFIX", "bad prefix")
    with pytest.raises(ConfigError, match=r"^BROKER_AUTH_USER_ID_PREFIX: "):
        load_settings()


@pytest.mark.parametrize(
    ("values", "says"),
    [
        (
            {"BROKER_AUTH_ISSUER": "https://a.idp.test", "BROKER_AUTH_HS256_NEXT_SECRET": "n" * 40},
            "BROKER_AUTH_HS256_NEXT_SECRET: needs BROKER_AUTH_HS256_SECRET",
        ),
        (
            {"BROKER_AUTH_HS256_SECRET": "s" * 40, "BROKER_AUTH_HS256_NEXT_SECRET": "n" * 31},
            "BROKER_AUTH_HS256_NEXT_SECRET: must be at least 32 bytes",
        ),
    ],
)
def test_the_next_shared_secret_comes_with_the_current_one_and_is_as_long(
    monkeypatch: pytest.MonkeyPatch, values: dict[str, str], says: str
) -> None:
    for name, value in {"BROKER_AUTH_AUDIENCE": "api", **values}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("VIDEO_DB_API_KEY", "sk-test-0123456789abcdef")
    with pytest.raises(ConfigError) as caught:
        load_settings(_env_file=None)
    assert says in str(caught.value)
    assert "n" * 31 not in str(caught.value)
