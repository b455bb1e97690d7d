"""Every secret setting also reads from the file its `_FILE` variable names."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.config import ConfigError, load_settings
from app.config.secret_files import SECRET_VARIABLES, file_variable

KEY = "sk-from-a-file-0123456789"
SHARED_SECRET = "a-shared-secret-of-at-least-32-bytes!"
REDIS_URL = "redis://:file-password-0123@redis.internal:6379/0"


@pytest.fixture(autouse=True)
def _no_secret_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for names in SECRET_VARIABLES.values():
        for name in names:
            monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("BROKER_AUTH_AUDIENCE", "aud")


def _secret_file(tmp_path: Path, name: str, content: str) -> str:
    path = tmp_path / name
    path.write_text(content)
    return str(path)


def test_each_secret_is_read_from_its_file_without_the_trailing_newline(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # as `kubectl create secret --from-file` and `echo >` leave them: one newline at the end
    monkeypatch.setenv("VIDEO_DB_API_KEY_FILE", _secret_file(tmp_path, "key", KEY + "\n"))
    monkeypatch.setenv(
        "BROKER_AUTH_HS256_SECRET_FILE", _secret_file(tmp_path, "hs", SHARED_SECRET + "\r\n")
    )
    monkeypatch.setenv("BROKER_REDIS_URL_FILE", _secret_file(tmp_path, "redis", REDIS_URL))
    settings = load_settings()
    assert settings.videodb_api_key.get_secret_value() == KEY
    assert settings.auth_hs256_secret is not None
    assert settings.auth_hs256_secret.get_secret_value() == SHARED_SECRET
    assert settings.redis_url is not None
    assert settings.redis_url.get_secret_value() == REDIS_URL
    assert settings.key_source == "shared_secret keys"


def test_a_secret_kept_with_inner_whitespace_is_still_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Only the one trailing newline is dropped: a second one is the key's own problem."""
    monkeypatch.setenv("VIDEO_DB_API_KEY_FILE", _secret_file(tmp_path, "key", KEY + "\n\n"))
    monkeypatch.setenv("BROKER_AUTH_HS256_SECRET", SHARED_SECRET)
    with pytest.raises(ConfigError, match=r"^VIDEO_DB_API_KEY: holds whitespace"):
        load_settings()


@pytest.mark.parametrize("direct", ["VIDEO_DB_API_KEY", "VIDEODB_API_KEY"])
def test_both_the_variable_and_its_file_is_an_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, direct: str
) -> None:
    monkeypatch.setenv(direct, KEY)
    monkeypatch.setenv("VIDEO_DB_API_KEY_FILE", _secret_file(tmp_path, "key", KEY))
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert caught.value.problems == [f"VIDEO_DB_API_KEY_FILE and {direct} are both set: keep one"]


def test_every_file_that_cannot_be_used_is_its_own_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("VIDEO_DB_API_KEY_FILE", str(tmp_path / "absent"))
    monkeypatch.setenv("BROKER_AUTH_HS256_SECRET_FILE", str(tmp_path))  # a directory
    binary = tmp_path / "redis"
    binary.write_bytes(b"\xff\xfe" + REDIS_URL.encode())
    monkeypatch.setenv("BROKER_REDIS_URL_FILE", str(binary))
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert caught.value.problems == [
        "VIDEO_DB_API_KEY_FILE: the file cannot be read (No such file or directory)",
        "BROKER_AUTH_HS256_SECRET_FILE: the file cannot be read (Is a directory)",
        "BROKER_REDIS_URL_FILE: the file is not UTF-8 text",
    ]
    assert REDIS_URL not in str(caught.value)


def test_an_empty_file_variable_is_an_unset_one(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A compose file's ${VIDEO_DB_API_KEY_FILE:-} leaves it empty."""
    monkeypatch.setenv("VIDEO_DB_API_KEY", KEY)
    monkeypatch.setenv("VIDEO_DB_API_KEY_FILE", "")
    monkeypatch.setenv("BROKER_AUTH_HS256_SECRET", SHARED_SECRET)
    assert load_settings().videodb_api_key.get_secret_value() == KEY


def test_a_file_secret_is_checked_like_any_other(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("VIDEO_DB_API_KEY_FILE", _secret_file(tmp_path, "key", "not-a-key\n"))
    monkeypatch.setenv("BROKER_AUTH_HS256_SECRET_FILE", _secret_file(tmp_path, "hs", "short"))
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert caught.value.problems == [
        "VIDEO_DB_API_KEY: must be a VideoDB secret key starting with 'sk-'",
        "BROKER_AUTH_HS256_SECRET: must be at least 32 bytes",
    ]


def test_every_secret_setting_has_a_file_variable() -> None:
    """A secret added to the settings without a `_FILE` variable fails here."""
    from pydantic import SecretStr

    from app.config import Settings

    secret_fields = {
        name
        for name, field in Settings.model_fields.items()
        if SecretStr in (field.annotation, *getattr(field.annotation, "__args__", ()))
    }
    assert secret_fields == set(SECRET_VARIABLES)
    assert file_variable("redis_url") == "BROKER_REDIS_URL_FILE"
