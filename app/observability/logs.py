"""JSON (or console) logs through structlog, for our loggers and uvicorn's alike."""

from __future__ import annotations

import logging
import sys
from contextvars import ContextVar, Token
from datetime import UTC, datetime
from typing import Any

import orjson
import structlog
from structlog.types import EventDict, Processor, WrappedLogger

from app.observability.fingerprints import scrub

# The id of the request being served, on every line written while it is (request_context.py
# sets it). Our own variable, read in one look-up: structlog's `merge_contextvars` walks every
# context variable of the context to find its own, on every line (docs/performance.md).
_request_id: ContextVar[str | None] = ContextVar("request_id", default=None)


def bind_request_id(request_id: str) -> Token[str | None]:
    """Put this id on every line until `unbind_request_id` is given the token."""
    return _request_id.set(request_id)


def unbind_request_id(token: Token[str | None]) -> None:
    """The request is over: its id leaves the lines."""
    _request_id.reset(token)


def current_request_id() -> str | None:
    """The id of the request being served, if any."""
    return _request_id.get()


def _add_request_id(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
    request_id = _request_id.get()
    if request_id is not None:
        event.setdefault("request_id", request_id)
    return event


def _utc_now(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
    """The time, as a datetime that the JSON renderer writes in ISO 8601 UTC with a Z (as
    structlog's TimeStamper(fmt="iso", utc=True) does): orjson formats it in C, where the
    TimeStamper's formatting in Python was a tenth of a log line (docs/performance.md)."""
    event["timestamp"] = datetime.now(UTC)
    return event


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
    return orjson.dumps(event, default=str, option=orjson.OPT_UTC_Z).decode()


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
    as_json = fmt == "json"
    stamp: Processor = (
        _utc_now if as_json else structlog.processors.TimeStamper(fmt="iso", utc=True)
    )
    shared: list[Processor] = [
        _add_request_id,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        stamp,
        structlog.stdlib.ExtraAdder(),
    ]
    renderer = _ScrubbingRenderer(
        _orjson_renderer if as_json else structlog.dev.ConsoleRenderer(colors=False)
    )
    # Our own loggers skip the stdlib machinery, a large part of what a log line would cost
    # (docs/performance.md); records from uvicorn and libraries go through ProcessorFormatter.
    structlog.configure(
        processors=[
            _add_request_id,
            structlog.processors.add_log_level,
            _name_field,
            stamp,
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
