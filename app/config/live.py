"""Live capture's options (BROKER_CAPTURE_LIVE=on) and their rules: the AI steps run when a
session becomes active (BROKER_CAPTURE_PIPELINES), and what the switch needs."""

from __future__ import annotations

import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, TypeAdapter, ValidationError

from app.urls import require_secure_url

Channel = Literal["mic", "system_audio", "screen"]
Run = Literal["transcript", "audio_index", "visual_index"]
AUDIO_CHANNELS = frozenset({"mic", "system_audio"})
MAX_PROMPT_CHARS = 2000
MIN_WEBHOOK_SECRET_BYTES = 32
MAX_STEPS = 16


class Segmenter(BaseModel):
    """How an audio index cuts the transcript: by words, sentences or seconds."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    segmenter: Literal["word", "sentence", "time"] = "sentence"
    segmentation_value: int = Field(default=10, ge=1, le=3600)


class FrameSampling(BaseModel):
    """How a visual index samples the screen: `frame_count` frames every `time` seconds."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    time: int = Field(default=10, ge=1, le=3600)
    frame_count: int = Field(default=1, ge=1, le=30)


class PipelineStep(BaseModel):
    """One AI step: what runs, on the session's first stream of which channel."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    channel: Channel
    run: Run
    prompt: str | None = Field(default=None, max_length=MAX_PROMPT_CHARS)
    batch: Segmenter | FrameSampling | None = None
    model_name: str | None = Field(default=None, pattern=r"^[A-Za-z0-9._:/-]{1,64}$")
    name: str | None = Field(default=None, pattern=r"^[A-Za-z0-9 ._:-]{1,64}$")

    def channel_problem(self) -> str | None:
        """Why this step cannot run on its channel, if it cannot."""
        if self.run in ("transcript", "audio_index") and self.channel not in AUDIO_CHANNELS:
            return f"{self.run} needs an audio channel (mic or system_audio)"
        if self.run == "visual_index" and self.channel != "screen":
            return "visual_index needs the screen channel"
        if self.run == "transcript" and (self.prompt or self.batch):
            return "transcript takes no prompt or batch"
        if self.run == "audio_index" and isinstance(self.batch, FrameSampling):
            return "audio_index's batch is a segmenter (segmenter, segmentation_value)"
        if self.run == "visual_index" and isinstance(self.batch, Segmenter):
            return "visual_index's batch samples frames (time, frame_count)"
        return None

    @property
    def label(self) -> str:
        """How logs and metrics name the step (never its prompt)."""
        return self.name or f"{self.run}:{self.channel}"


_STEPS = TypeAdapter(list[PipelineStep])


def parse_pipelines(value: object) -> list[PipelineStep]:
    """BROKER_CAPTURE_PIPELINES: a JSON array of steps; an error names the step."""
    if value is None:
        return []
    if isinstance(value, str):
        if not value.strip():
            return []
        try:
            value = json.loads(value)
        except (ValueError, RecursionError):
            raise ValueError("is not JSON (a JSON array of steps)") from None
    if not isinstance(value, list):
        raise ValueError("must be a JSON array of steps")
    if len(value) > MAX_STEPS:
        raise ValueError(f"may hold at most {MAX_STEPS} steps")
    try:
        steps = _STEPS.validate_python(value)
    except ValidationError as exc:
        error = exc.errors(include_input=False, include_url=False)[0]
        where = ".".join(str(part) for part in error["loc"][1:] if not isinstance(part, int))
        message = str(error["msg"]).removeprefix("Value error, ")
        number = int(error["loc"][0]) + 1 if error["loc"] else 1
        raise ValueError(f"step {number}: {where + ': ' if where else ''}{message}") from None
    for number, step in enumerate(steps, start=1):
        problem = step.channel_problem()
        if problem:
            raise ValueError(f"step {number}: {problem}")
    return steps


def live_rules(
    live: bool,
    capture_sessions: bool,
    public_url: str | None,
    webhook_secret: SecretStr | None,
    callback_url: str | None,
) -> None:
    """What BROKER_CAPTURE_LIVE=on needs, and what it excludes."""
    if not live:
        return
    if not capture_sessions:
        raise ValueError("BROKER_CAPTURE_LIVE=on needs BROKER_CAPTURE_SESSIONS=on")
    if not public_url:
        raise ValueError(
            "BROKER_PUBLIC_URL: is required with BROKER_CAPTURE_LIVE=on (the broker's own "
            "origin, as VideoDB reaches it for webhooks)"
        )
    if webhook_secret is None:
        raise ValueError("BROKER_CAPTURE_WEBHOOK_SECRET: is required with BROKER_CAPTURE_LIVE=on")
    if callback_url:
        raise ValueError(
            "BROKER_CAPTURE_CALLBACK_URL and BROKER_CAPTURE_LIVE=on are exclusive: with live "
            "capture the broker receives the webhooks itself"
        )


def public_origin(value: str | None) -> str | None:
    """BROKER_PUBLIC_URL: an https:// origin (loopback excepted), without a path."""
    if value is None:
        return None
    require_secure_url(value)
    from urllib.parse import urlsplit

    parts = urlsplit(value)
    if parts.path.strip("/") or parts.query or parts.fragment:
        raise ValueError("must be an origin such as https://broker.example.com (no path)")
    return f"{parts.scheme}://{parts.netloc}"


def webhook_secret(value: SecretStr | None) -> SecretStr | None:
    """A secret long enough that the webhook path derived from it cannot be guessed."""
    if value is not None and len(value.get_secret_value().encode()) < MIN_WEBHOOK_SECRET_BYTES:
        raise ValueError(f"must be at least {MIN_WEBHOOK_SECRET_BYTES} bytes")
    return value
