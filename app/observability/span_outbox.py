"""Where the broker's finished spans wait, on the event loop, for the export process.

A kept request's spans arrive already as plain values (kept_spans.py); the SDK tracer's own
(background work: a scheduled key refresh) are taken apart here as they end. They are handed
to the export process SHIP_EVERY_SPANS at a time, or SHIP_WITHIN_SECONDS after the first of
a batch ended, whichever comes first: one pickle and one write for dozens of spans, on the
loop, and no thread in the broker for tracing at all (docs/performance.md, "Thirteenth
pass"). Batching for the collector, its queue and its schedule (OTEL_BSP_*) are the SDK's
batch processor's, in the export process.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Protocol

from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor

from app.observability.export_process import Wired, wire

SHIP_EVERY_SPANS = 128
SHIP_WITHIN_SECONDS = 0.5


class Shipper(Protocol):
    """What takes a batch of spans from the loop (export_process.ExportProcess)."""

    def ship(self, batch: list[Wired]) -> None: ...

    async def close(self, within: float) -> bool: ...


class SpanOutbox(SpanProcessor):
    """Finished spans, batched on the event loop it is bound to."""

    def __init__(self, shipper: Shipper) -> None:
        self.shipper = shipper
        self._pending: list[Wired] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._timer: asyncio.TimerHandle | None = None

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """The loop spans end on and batches are shipped from (the lifespan's)."""
        self._loop = loop
        self._loop_thread = threading.get_ident()

    def add(self, wired: Wired) -> None:
        """A finished span, on the loop: shipped with its batch."""
        pending = self._pending
        pending.append(wired)
        if len(pending) >= SHIP_EVERY_SPANS:
            self.ship()
        elif self._timer is None and self._loop is not None and not self._loop.is_closed():
            self._timer = self._loop.call_later(SHIP_WITHIN_SECONDS, self.ship)

    def ship(self) -> None:
        """What waits, to the export process now."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch, self._pending = self._pending, []
        if batch:
            self.shipper.ship(batch)

    async def close(self, within: float) -> bool:
        """What waits shipped, and the export process given `within` seconds to send it."""
        self.ship()
        return await self.shipper.close(within)

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        return None

    def on_end(self, span: ReadableSpan) -> None:
        """A span of the SDK's tracer: kept when sampled, taken apart, added on the loop."""
        context = span.context
        if context is None or not context.trace_flags.sampled:
            return
        wired = wire(span)
        loop = self._loop
        if loop is None or threading.get_ident() == self._loop_thread:
            self.add(wired)
        elif not loop.is_closed():  # ended on another thread: added on the loop's
            loop.call_soon_threadsafe(self.add, wired)

    def shutdown(self) -> None:
        return None  # Tracing.stop closes the outbox, on the loop

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True
