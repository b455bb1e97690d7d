"""`.env.example` documents every setting and is a valid configuration once the VideoDB key is
filled in (as it is, `check` and `serve` refuse its placeholder key)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from app.config import ConfigError, Settings, load_settings
from app.config.errors import env_name

EXAMPLE = Path(__file__).resolve().parents[2] / ".env.example"
PLACEHOLDER_LINE = "VIDEO_DB_API_KEY=sk-replace-me\n"


def _filled_in(text: str) -> str:
    """The example with the one value every user must fill in."""
    assert PLACEHOLDER_LINE in text
    return text.replace(PLACEHOLDER_LINE, "VIDEO_DB_API_KEY=sk-a-real-key-0123456789\n")


def test_every_setting_is_listed_with_a_comment() -> None:
    text = EXAMPLE.read_text()
    for field in Settings.model_fields:
        name = env_name(field)
        match = re.search(rf"^(# )?{name}=", text, re.M)
        assert match, f"{name} is missing from .env.example"
        above = text[: match.start()].rstrip().splitlines()[-3:]
        assert any(line.startswith("# ") and "=" not in line for line in above), (
            f"{name} has no comment above it"
        )


def test_example_as_is_is_refused_for_its_placeholder_key_alone() -> None:
    shutil.copy(EXAMPLE, ".env")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert caught.value.problems == [
        "VIDEO_DB_API_KEY: is still the placeholder from .env.example: set your VideoDB secret key"
    ]


def test_example_loads_once_the_key_is_filled_in() -> None:
    Path(".env").write_text(_filled_in(EXAMPLE.read_text()))
    settings = load_settings()
    assert settings.key_source == "jwks keys"
    assert settings.auth_required_scopes == []


def test_the_several_providers_example_loads_once_uncommented() -> None:
    replaced = {
        "BROKER_AUTH_JWKS_URL",
        "BROKER_AUTH_ISSUER",
        "BROKER_AUTH_AUDIENCE",
        "BROKER_AUTH_ALGORITHMS",
        "BROKER_AUTH_USER_CLAIM",
        "BROKER_AUTH_REQUIRED_SCOPES",
    }
    lines = []
    in_list = False
    for line in _filled_in(EXAMPLE.read_text()).splitlines():
        if line.split("=", 1)[0] in replaced:
            continue  # as the comment says: the single-issuer lines go
        if line.startswith("# BROKER_AUTH_ISSUERS="):
            in_list = True
        if in_list:
            lines.append(line.removeprefix("# "))
            in_list = not line.endswith("]'")
        else:
            lines.append(line)
    Path(".env").write_text("\n".join(lines) + "\n")
    providers = load_settings().identity_providers
    assert [(p.label, p.audience_claim, p.user_id_prefix) for p in providers] == [
        ("web", "aud", "web:"),
        ("desktop", "client_id", "desktop:"),
    ]


def test_the_several_providers_example_beside_the_single_issuer_lines_is_refused() -> None:
    text = _filled_in(EXAMPLE.read_text())
    text += '\nBROKER_AUTH_ISSUERS=\'[{"issuer": "https://a.example", "audience": "x"}]\'\n'
    Path(".env").write_text(text)
    with pytest.raises(ConfigError, match=r"^BROKER_AUTH_ISSUERS replaces BROKER_AUTH_ALGORITHMS"):
        load_settings()
