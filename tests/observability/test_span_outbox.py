"""Finished spans wait on the event loop and go to the export process in batches: a full
batch at once, a partial one within half a second, the SDK tracer's spans taken apart as
they end, from whichever thread ends them."""

from __future__ import annotations

import asyncio
import threading

import pytest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

from app.observability import span_outbox
from app.observability.span_outbox import SHIP_EVERY_SPANS, SpanOutbox
from tests.fakes.span_shipper import MemoryShipper

RESOURCE = Resource.create({"service.name": "broker"})


def _span(n: int) -> tuple[object, ...]:
    return (f"span {n}", (1, n + 1, False, 1, ()), None, 0, n, n + 1, 0, None, {}, (), (), None)


async def test_a_full_batch_is_shipped_at_once_and_a_partial_one_within_its_delay(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(span_outbox, "SHIP_WITHIN_SECONDS", 0.05)
    shipper = MemoryShipper(RESOURCE)
    outbox = SpanOutbox(shipper)
    outbox.bind(asyncio.get_running_loop())
    for n in range(SHIP_EVERY_SPANS + 3):
        outbox.add(_span(n))
    assert [len(batch) for batch in shipper.batches] == [SHIP_EVERY_SPANS]  # no waiting
    await asyncio.sleep(0.2)
    assert [len(batch) for batch in shipper.batches] == [SHIP_EVERY_SPANS, 3]
    await asyncio.sleep(0.2)
    assert len(shipper.batches) == 2  # nothing new, nothing shipped twice
    assert [span.name for span in shipper.spans()][-1] == f"span {SHIP_EVERY_SPANS + 2}"


async def test_close_ships_what_waits_and_closes_the_export_process() -> None:
    shipper = MemoryShipper(RESOURCE)
    outbox = SpanOutbox(shipper)
    outbox.bind(asyncio.get_running_loop())
    outbox.add(_span(1))
    assert await outbox.close(2.5)
    assert [span.name for span in shipper.spans()] == ["span 1"]
    assert shipper.closed_within == 2.5


async def test_the_sdk_tracers_sampled_spans_are_added_on_the_loop_from_any_thread() -> None:
    shipper = MemoryShipper(RESOURCE)
    outbox = SpanOutbox(shipper)
    loop = asyncio.get_running_loop()
    outbox.bind(loop)
    provider = TracerProvider(resource=RESOURCE)
    provider.add_span_processor(outbox)
    tracer = provider.get_tracer("videodb-token-broker", "1.2.3")
    with tracer.start_as_current_span("identity_provider fetch_keys") as span:
        span.set_attribute("broker.keys.outcome", "ok")
    ended_elsewhere = threading.Thread(target=lambda: tracer.start_span("elsewhere").end())
    ended_elsewhere.start()
    ended_elsewhere.join()
    dropping = TracerProvider(resource=RESOURCE, sampler=ALWAYS_OFF)
    dropping.add_span_processor(outbox)
    dropping.get_tracer("x").start_span("not sampled").end()
    await asyncio.sleep(0)  # the other thread's span is added on the loop's next step
    outbox.ship()
    fetched, elsewhere = shipper.spans()
    assert fetched.name == "identity_provider fetch_keys"
    assert dict(fetched.attributes or {}) == {"broker.keys.outcome": "ok"}
    assert fetched.instrumentation_scope is not None
    assert fetched.instrumentation_scope.name == "videodb-token-broker"
    assert elsewhere.name == "elsewhere"
