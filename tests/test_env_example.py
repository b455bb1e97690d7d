"""`.env.example` documents every setting and is itself a valid configuration."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from app.settings import Settings, env_name, load_settings

EXAMPLE = Path(__file__).resolve().parents[1] / ".env.example"


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


def test_example_loads_as_is() -> None:
    shutil.copy(EXAMPLE, ".env")
    settings = load_settings()
    assert settings.key_source == "jwks"
    assert settings.auth_required_scopes == []
