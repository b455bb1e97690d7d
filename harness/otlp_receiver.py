"""An OTLP/HTTP trace receiver on loopback: what a collector does with what the broker exports.

It speaks the protocol as OpenTelemetry defines it (protobuf `ExportTraceServiceRequest` in,
`ExportTraceServiceResponse` out, gzip when sent so), decoded with the official
`opentelemetry-proto` classes, and keeps every byte it received for the secret search. No
collector binary comes from the registries this project may use (Debian has none, PyPI and
npm only libraries), so this stands in for one; `fault` makes it fail as one can: refuse
(503), reject (400), slow (answers after `delay` s).
"""

from __future__ import annotations

import asyncio
import gzip
import threading
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

PROTOBUF = "application/x-protobuf"


@dataclass
class OtlpReceiver:
    """Collects exports; `spans()` flattens them for assertions."""

    fault: str | None = None
    delay: float = 0.0
    keep: bool = True  # False (the benchmark): count the bytes, decode and keep nothing
    bytes_received: int = 0
    raw: list[bytes] = field(default_factory=list)
    requests: list[ExportTraceServiceRequest] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = await self._respond(Request(scope, receive))
        await response(scope, receive, send)

    async def _respond(self, request: Request) -> Response:
        if request.method != "POST" or request.url.path != "/v1/traces":
            return Response(status_code=404)
        body = await request.body()
        if request.headers.get("content-encoding") == "gzip":
            body = gzip.decompress(body)
        if self.fault == "refuse":
            return Response(status_code=503, headers={"Retry-After": "1"})
        if self.fault == "reject":
            return Response(status_code=400)
        if self.fault == "slow":
            await asyncio.sleep(self.delay)
        with self._lock:
            self.bytes_received += len(body)
        if not self.keep:
            return Response(ExportTraceServiceResponse().SerializeToString(), media_type=PROTOBUF)
        decoded = ExportTraceServiceRequest()
        decoded.ParseFromString(body)
        with self._lock:
            self.raw.append(body)
            self.requests.append(decoded)
            self.headers.append(dict(request.headers))
        return Response(ExportTraceServiceResponse().SerializeToString(), media_type=PROTOBUF)

    def spans(self) -> list[dict[str, Any]]:
        """Every span received: name, ids, parent, attributes, status, resource attributes."""
        found = []
        with self._lock:
            for export in self.requests:
                for resource_spans in export.resource_spans:
                    resource = _attributes(resource_spans.resource.attributes)
                    for scope_spans in resource_spans.scope_spans:
                        for span in scope_spans.spans:
                            found.append(
                                {
                                    "name": span.name,
                                    "trace_id": span.trace_id.hex(),
                                    "span_id": span.span_id.hex(),
                                    "parent_id": span.parent_span_id.hex(),
                                    "attributes": _attributes(span.attributes),
                                    "status": span.status.code,
                                    "start": span.start_time_unix_nano,
                                    "end": span.end_time_unix_nano,
                                    "events": len(span.events),
                                    "links": len(span.links),
                                    "resource": resource,
                                }
                            )
        return found

    def everything(self) -> bytes:
        """Every byte received, for the search for secrets."""
        with self._lock:
            return b"".join(self.raw)


def _attributes(pairs: Any) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for pair in pairs:
        kind = pair.value.WhichOneof("value")
        values[pair.key] = getattr(pair.value, kind) if kind else None
    return values
