"""BROKER_CAPTURE_LIVE and its settings, checked at start-up with one line each."""

from __future__ import annotations

import json

import pytest

from app.config import ConfigError, load_settings

LIVE = {
    "VIDEO_DB_API_KEY": "sk-live-settings-0123456789",
    "BROKER_AUTH_AUDIENCE": "aud",
    "BROKER_AUTH_JWKS_URL": "https://idp.example.com/jwks.json",
    "BROKER_CAPTURE_SESSIONS": "on",
    "BROKER_CAPTURE_LIVE": "on",
    "BROKER_PUBLIC_URL": "https://broker.example.com",
    "BROKER_CAPTURE_WEBHOOK_SECRET": "w" * 32,
}


def _problems(monkeypatch: pytest.MonkeyPatch, **env: str | None) -> list[str]:
    for name, value in {**LIVE, **env}.items():
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    try:
        load_settings()
    except ConfigError as exc:
        problems = exc.problems
    else:
        return []
    assert not [p for p in problems if "w" * 32 in p]  # the secret is never repeated
    return problems


def test_a_complete_live_configuration_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    steps = [{"channel": "mic", "run": "transcript"}, {"channel": "screen", "run": "visual_index"}]
    assert _problems(monkeypatch, BROKER_CAPTURE_PIPELINES=json.dumps(steps)) == []
    settings = load_settings()
    assert [step.label for step in settings.capture_pipelines] == [
        "transcript:mic",
        "visual_index:screen",
    ]


@pytest.mark.parametrize(
    ("env", "problem"),
    [
        (
            {"BROKER_CAPTURE_SESSIONS": "off"},
            "BROKER_CAPTURE_LIVE=on needs BROKER_CAPTURE_SESSIONS",
        ),
        ({"BROKER_PUBLIC_URL": None}, "BROKER_PUBLIC_URL: is required"),
        ({"BROKER_PUBLIC_URL": "http://broker.example.com"}, "BROKER_PUBLIC_URL: must use https"),
        ({"BROKER_PUBLIC_URL": "https://b.example.com/hooks"}, "BROKER_PUBLIC_URL: must be an"),
        ({"BROKER_CAPTURE_WEBHOOK_SECRET": None}, "BROKER_CAPTURE_WEBHOOK_SECRET: is required"),
        ({"BROKER_CAPTURE_WEBHOOK_SECRET": "short"}, "BROKER_CAPTURE_WEBHOOK_SECRET: must be at"),
        (
            {"BROKER_CAPTURE_CALLBACK_URL": "https://p.example.com/hook"},
            "BROKER_CAPTURE_CALLBACK_URL and BROKER_CAPTURE_LIVE=on are exclusive",
        ),
        ({"BROKER_CAPTURE_PIPELINES": "[{"}, "BROKER_CAPTURE_PIPELINES: is not JSON"),
        (
            {"BROKER_CAPTURE_PIPELINES": '[{"channel": "screen", "run": "transcript"}]'},
            "BROKER_CAPTURE_PIPELINES: step 1: transcript needs an audio channel",
        ),
        (
            {"BROKER_CAPTURE_PIPELINES": '[{"channel": "mic", "run": "visual_index"}]'},
            "BROKER_CAPTURE_PIPELINES: step 1: visual_index needs the screen channel",
        ),
        (
            {
                "BROKER_CAPTURE_PIPELINES": json.dumps(
                    [{"channel": "mic", "run": "transcript"}, {"channel": "mic", "run": "sing"}]
                )
            },
            "BROKER_CAPTURE_PIPELINES: step 2: run: Input should be",
        ),
        (
            {
                "BROKER_CAPTURE_PIPELINES": json.dumps(
                    [{"channel": "mic", "run": "audio_index", "prompt": "x" * 2001}]
                )
            },
            "BROKER_CAPTURE_PIPELINES: step 1: prompt: String should have at most 2000",
        ),
    ],
)
def test_each_live_rule_names_its_variable(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str | None], problem: str
) -> None:
    problems = _problems(monkeypatch, **env)
    assert len(problems) == 1, problems
    assert problems[0].startswith(problem), problems[0]


def test_the_webhook_secret_also_comes_from_a_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: object
) -> None:
    from pathlib import Path

    secret = Path(str(tmp_path)) / "webhook"
    secret.write_text("f" * 40 + "\n")
    assert (
        _problems(
            monkeypatch,
            BROKER_CAPTURE_WEBHOOK_SECRET=None,
            BROKER_CAPTURE_WEBHOOK_SECRET_FILE=str(secret),
        )
        == []
    )
    value = load_settings().capture_webhook_secret
    assert value is not None
    assert value.get_secret_value() == "f" * 40
