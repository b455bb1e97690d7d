"""Every configuration rule is checked at start-up, in one line that names the variable."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from pydantic import ValidationError

from app.config import ConfigError, Settings, load_settings

SECRET_KEY = "sk-settings-test-secret-value"
BASE = {
    "VIDEO_DB_API_KEY": SECRET_KEY,
    "BROKER_AUTH_AUDIENCE": "aud",
    "BROKER_AUTH_JWKS_URL": "https://idp.example.com/jwks.json",
}


def _load(monkeypatch: pytest.MonkeyPatch, **env: str | None) -> Settings:
    for name, value in {**BASE, **env}.items():
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    return load_settings()


load_settings_from = _load


def _error(monkeypatch: pytest.MonkeyPatch, **env: str | None) -> str:
    with pytest.raises(ConfigError) as info:
        _load(monkeypatch, **env)
    message = str(info.value)
    assert "\n" not in message
    assert SECRET_KEY not in message
    return message


def test_defaults_match_the_contract(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load_settings_from(monkeypatch)
    assert settings.videodb_api == "https://api.videodb.io"
    assert settings.auth_algorithms == ["RS256"]
    assert settings.auth_user_claim == "sub"
    assert settings.auth_required_scopes == []
    assert settings.auth_leeway_seconds == 30
    assert (settings.token_default_ttl, settings.token_min_ttl, settings.token_max_ttl) == (
        900,
        60,
        3600,
    )
    assert settings.cors_origins == []
    assert settings.rate_limit == "30/minute"
    assert settings.redis_url is None
    assert settings.upstream_timeout == 5
    assert settings.upstream_max_connections == 64
    assert settings.cache_max_entries > 0
    assert (settings.log_level, settings.log_format) == ("INFO", "json")


def test_both_spellings_of_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load_settings_from(
        monkeypatch, VIDEO_DB_API_KEY=None, VIDEODB_API_KEY="sk-other-spelling-1"
    )
    assert settings.videodb_api_key.get_secret_value() == "sk-other-spelling-1"


def test_secrets_never_show_in_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load_settings_from(
        monkeypatch,
        BROKER_AUTH_JWKS_URL=None,
        BROKER_AUTH_HS256_SECRET="h" * 40,
        BROKER_REDIS_URL="redis://:hunter2@localhost:6379/0",
    )
    text = repr(settings) + str(settings) + str(settings.model_dump())
    assert SECRET_KEY not in text
    assert "h" * 40 not in text
    assert "hunter2" not in text


def test_comma_separated_lists(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load_settings_from(
        monkeypatch,
        BROKER_CORS_ORIGINS="https://a.example.com, https://b.example.com:8443",
        BROKER_AUTH_REQUIRED_SCOPES="capture:write,tokens",
        BROKER_AUTH_ALGORITHMS="RS256,ES256",
        BROKER_TRUSTED_PROXIES="10.0.0.0/8,127.0.0.1",
    )
    assert settings.cors_origins == ["https://a.example.com", "https://b.example.com:8443"]
    assert settings.auth_required_scopes == ["capture:write", "tokens"]
    assert settings.auth_algorithms == ["RS256", "ES256"]
    assert settings.trusted_proxies == ["10.0.0.0/8", "127.0.0.1"]


def test_loopback_http_is_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load_settings_from(
        monkeypatch,
        VIDEO_DB_API="http://127.0.0.1:9000",
        BROKER_AUTH_JWKS_URL="http://localhost:9001/jwks.json",
        BROKER_AUTH_ISSUER="http://[::1]:9001",
    )
    assert settings.videodb_api == "http://127.0.0.1:9000"


@pytest.mark.parametrize(
    ("env", "variable", "words"),
    [
        ({"VIDEO_DB_API_KEY": None}, "VIDEO_DB_API_KEY", "required"),
        ({"VIDEO_DB_API_KEY": "pk-not-a-secret-key"}, "VIDEO_DB_API_KEY", "sk-"),
        ({"VIDEO_DB_API_KEY": "sk-from-a-file\n"}, "VIDEO_DB_API_KEY", "trailing newline"),
        ({"VIDEO_DB_API_KEY": "sk-abc"}, "VIDEO_DB_API_KEY", "too short"),
        ({"VIDEO_DB_API_KEY": "sk-caf\u00e9-0123456789"}, "VIDEO_DB_API_KEY", "visible ASCII"),
        ({"VIDEO_DB_API_KEY": "sk-bell\x07-0123456789"}, "VIDEO_DB_API_KEY", "visible ASCII"),
        ({"VIDEO_DB_API_KEY": "sk-del\x7f-0123456789"}, "VIDEO_DB_API_KEY", "visible ASCII"),
        ({"BROKER_REDIS_URL": "http://redis:6379"}, "BROKER_REDIS_URL", "redis://"),
        ({"BROKER_REDIS_URL": "redis://redis:port/0"}, "BROKER_REDIS_URL", "host and port"),
        ({"BROKER_REDIS_URL": "redis://redis:99999/0"}, "BROKER_REDIS_URL", "host and port"),
        ({"BROKER_REDIS_URL": "redis://redis:0/0"}, "BROKER_REDIS_URL", "1 to 65535"),
        ({"BROKER_REDIS_URL": "redis:///0"}, "BROKER_REDIS_URL", "host"),
        ({"BROKER_REDIS_URL": "redis://r:6379/0?db=x"}, "BROKER_REDIS_URL", "query"),
        ({"BROKER_AUTH_AUDIENCE": None}, "BROKER_AUTH_AUDIENCE", "required"),
        ({"VIDEO_DB_API": "http://api.videodb.io"}, "VIDEO_DB_API", "https"),
        ({"BROKER_AUTH_JWKS_URL": "http://idp.example.com/jwks"}, "BROKER_AUTH_JWKS_URL", "https"),
        ({"BROKER_AUTH_ISSUER": "http://idp.example.com"}, "BROKER_AUTH_ISSUER", "https"),
        ({"VIDEO_DB_API": "ftp://x"}, "VIDEO_DB_API", "URL"),
        ({"BROKER_AUTH_HS256_SECRET": "s" * 40}, "BROKER_AUTH_HS256_SECRET", "exclusive"),
        ({"BROKER_AUTH_JWKS_URL": None}, "BROKER_AUTH_HS256_SECRET", "no source"),
        (
            {"BROKER_AUTH_JWKS_URL": None, "BROKER_AUTH_HS256_SECRET": "short"},
            "BROKER_AUTH_HS256_SECRET",
            "32 bytes",
        ),
        ({"BROKER_AUTH_ALGORITHMS": "HS256"}, "BROKER_AUTH_ALGORITHMS", "RS*"),
        ({"BROKER_AUTH_ALGORITHMS": "none"}, "BROKER_AUTH_ALGORITHMS", "RS*"),
        (
            {
                "BROKER_AUTH_JWKS_URL": None,
                "BROKER_AUTH_HS256_SECRET": "s" * 40,
                "BROKER_AUTH_ALGORITHMS": "RS256",
            },
            "BROKER_AUTH_ALGORITHMS",
            "HS256",
        ),
        ({"BROKER_TOKEN_DEFAULT_TTL": "30"}, "BROKER_TOKEN_DEFAULT_TTL", "between"),
        ({"BROKER_TOKEN_MAX_TTL": "100000"}, "BROKER_TOKEN_MAX_TTL", "86400"),
        ({"BROKER_TOKEN_MIN_TTL": "abc"}, "BROKER_TOKEN_MIN_TTL", "integer"),
        ({"BROKER_CORS_ORIGINS": "*"}, "BROKER_CORS_ORIGINS", "exact origin"),
        ({"BROKER_CORS_ORIGINS": "https://a.example.com/"}, "BROKER_CORS_ORIGINS", "exact origin"),
        ({"BROKER_RATE_LIMIT": "lots"}, "BROKER_RATE_LIMIT", "30/minute"),
        ({"BROKER_TRUSTED_PROXIES": "proxy.local"}, "BROKER_TRUSTED_PROXIES", "CIDR"),
        ({"BROKER_TLS_CERT_FILE": "cert.pem"}, "BROKER_TLS_KEY_FILE", "together"),
        ({"BROKER_LOG_FORMAT": "xml"}, "BROKER_LOG_FORMAT", "json"),
        ({"BROKER_UPSTREAM_TIMEOUT": "0"}, "BROKER_UPSTREAM_TIMEOUT", "greater"),
        ({"BROKER_UPSTREAM_MAX_CONNECTIONS": "0"}, "BROKER_UPSTREAM_MAX_CONNECTIONS", "greater"),
        ({"BROKER_UPSTREAM_MAX_CONNECTIONS": "5000"}, "BROKER_UPSTREAM_MAX_CONNECTIONS", "1024"),
        ({"BROKER_AUTH_LEEWAY_SECONDS": "-1"}, "BROKER_AUTH_LEEWAY_SECONDS", "greater"),
        ({"BROKER_AUTH_COOKIE_NAME": "a b"}, "BROKER_AUTH_COOKIE_NAME", "pattern"),
    ],
)
def test_each_rule_names_its_variable(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str | None], variable: str, words: str
) -> None:
    message = _error(monkeypatch, **env)
    assert variable in message
    assert words in message


def test_error_never_echoes_the_secret_value(monkeypatch: pytest.MonkeyPatch) -> None:
    message = _error(
        monkeypatch,
        BROKER_AUTH_JWKS_URL=None,
        BROKER_AUTH_HS256_SECRET="tooshort-but-very-secret",
    )
    assert "tooshort-but-very-secret" not in message


def test_a_bad_redis_url_never_echoes_its_password(monkeypatch: pytest.MonkeyPatch) -> None:
    message = _error(monkeypatch, BROKER_REDIS_URL="redis://:hunter2-pass@redis:70000/0")
    assert "BROKER_REDIS_URL" in message
    assert "hunter2-pass" not in message


def test_a_key_that_cannot_be_sent_is_named_never_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    unsendable = "sk-\u0441yrillic-lookalike-0123456789"
    message = _error(monkeypatch, VIDEO_DB_API_KEY=unsendable)
    assert message.startswith("VIDEO_DB_API_KEY:")
    assert unsendable not in message
    assert "lookalike" not in message


def test_dotenv_file_is_read(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> None:
    for name in BASE:
        monkeypatch.delenv(name, raising=False)
    with open(".env", "w") as env_file:
        env_file.write(
            f"VIDEODB_API_KEY={SECRET_KEY}\nBROKER_AUTH_AUDIENCE=from-dotenv\n"
            "BROKER_AUTH_HS256_SECRET=" + "d" * 32 + "\n"
        )
    settings = load_settings()
    assert settings.auth_audience == "from-dotenv"
    assert settings.key_source == "shared_secret keys"


def test_tracing_is_off_unless_set_on_and_refuses_anything_else(
    make_settings: Callable[..., Settings],
) -> None:
    assert not make_settings().otel_on
    assert make_settings(otel="ON").otel_on
    with pytest.raises(ValidationError):
        make_settings(otel="yes")


def test_tracing_on_without_its_packages_says_how_to_install_them(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    import app.config.rules

    monkeypatch.setattr(app.config.rules, "_installed", lambda module: False)
    with pytest.raises(ValidationError, match=r"pip install 'videodb-token-broker\[otel\]'"):
        make_settings(otel="on")


def test_only_errors_inside_the_provider_list_name_a_provider() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(
            _env_file=None,
            videodb_api_key="sk-config-0123456789",
            auth_hs256_secret="s" * 40,
            auth_audience="aud",
            trusted_proxies=["10.0.0.1", 7],
        )
    assert str(caught.value).startswith("BROKER_TRUSTED_PROXIES: ")
    assert "provider" not in str(caught.value)
