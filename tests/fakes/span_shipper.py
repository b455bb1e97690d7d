"""A shipper that keeps what the broker would hand the export process, rebuilt as the export
process rebuilds it: the spans the SDK's exporter would get."""

from __future__ import annotations

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan

from app.observability.export_process import Wired, unwire


class MemoryShipper:
    def __init__(self, resource: Resource) -> None:
        self.resource = resource
        self.batches: list[list[Wired]] = []
        self.closed_within: float | None = None

    def ship(self, batch: list[Wired]) -> None:
        self.batches.append(batch)

    async def close(self, within: float) -> bool:
        self.closed_within = within
        return True

    def spans(self) -> tuple[ReadableSpan, ...]:
        return tuple(unwire(wired, self.resource) for batch in self.batches for wired in batch)
