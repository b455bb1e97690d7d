"""JSON (or console) logs through structlog, for our loggers and uvicorn's alike."""

from __future__ import annotations

import logging
import sys
from typing import Any

import orjson
import structlog
from structlog.types import EventDict, Processor, WrappedLogger

from app.observability.fingerprints import scrub


def _drop_color_message(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
    """uvicorn adds an ANSI-coloured duplicate of its message; one copy is enough."""
    event.pop("color_message", None)
    return event


class _ScrubbingRenderer:
    """Render, then scrub the finished line: the last line of defence, whatever logged it.

    No key, session token or JWT leaves whole, wherever it sits in the event (a value, a
    nested list, a dict key, an exception's text). Scrubbing the rendered line is one scan of
    a short string, cheaper than scrubbing each field before rendering (docs/performance.md).
    The patterns only span characters JSON never escapes, so the JSON stays valid.
    """

    def __init__(self, renderer: Processor) -> None:
        self._renderer = renderer

    def __call__(self, logger: WrappedLogger, name: str, event: EventDict) -> str:
        line = self._renderer(logger, name, event)
        assert isinstance(line, str)
        return scrub(line)


def _orjson_renderer(_: WrappedLogger, __: str, event: EventDict) -> str:
    """JSON lines through orjson, the fastest JSON encoder in the stack (docs/performance.md)."""
    return orjson.dumps(event, default=str).decode()


class _CurrentStdout:
    """Whatever sys.stdout is at write time (loggers are cached; tests swap stdout)."""

    def write(self, text: str) -> int:
        return sys.stdout.write(text)

    def flush(self) -> None:
        sys.stdout.flush()


def _name_field(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
    """Our loggers carry their name as logger_name (`logger` is taken by structlog's API)."""
    if "logger_name" in event:
        event["logger"] = event.pop("logger_name")
    return event


def configure_logging(level: str = "INFO", fmt: str = "json") -> None:
    """Send every log record, ours and uvicorn's, through one structlog pipeline."""
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.stdlib.ExtraAdder(),
    ]
    renderer = _ScrubbingRenderer(
        _orjson_renderer if fmt == "json" else structlog.dev.ConsoleRenderer(colors=False)
    )
    # Our own loggers skip the stdlib machinery, a large part of what a log line would cost
    # (docs/performance.md); records from uvicorn and libraries go through ProcessorFormatter.
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            _name_field,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=structlog.WriteLoggerFactory(file=_CurrentStdout()),  # type: ignore[arg-type]
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            _drop_color_message,
            structlog.processors.format_exc_info,
            renderer,
        ],
    )
    # The current stdout at each write, as our own lines: a stream bound here would be kept
    # after a host (the test suite's capture) closed it, and a library's line then fails.
    handler = logging.StreamHandler(_CurrentStdout())
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "httpx", "httpcore"):
        named = logging.getLogger(name)
        named.handlers[:] = []
        named.propagate = True
    # Our own access line replaces uvicorn's; httpx logs full URLs at INFO.
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)


def uvicorn_log_config() -> dict[str, Any]:
    """Tell uvicorn to leave logging alone so that ours stays in charge."""
    return {"version": 1, "disable_existing_loggers": False}
