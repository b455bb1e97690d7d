"""Request bodies are read whole up to their cap and refused past it, before all of it is held."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from starlette.requests import Request
from starlette.types import Message

from app.errors import PayloadTooLarge
from app.web.request_body import read_body


def _request(chunks: list[bytes], declared: int | None = None) -> tuple[Request, list[int]]:
    pieces: Iterator[bytes] = iter(chunks)
    received: list[int] = []

    async def receive() -> Message:
        chunk = next(pieces, None)
        received.append(1)
        if chunk is None:
            return {"type": "http.disconnect"}
        return {"type": "http.request", "body": chunk, "more_body": True}

    headers = [] if declared is None else [(b"content-length", str(declared).encode())]
    return Request({"type": "http", "headers": headers}, receive), received


async def test_pieces_are_joined_until_the_client_is_done() -> None:
    request, _ = _request([b'{"a"', b": 1}"])
    assert await read_body(request, 100) == b'{"a": 1}'


async def test_a_declared_size_past_the_cap_is_refused_unread() -> None:
    request, received = _request([b"x"], declared=5000)
    with pytest.raises(PayloadTooLarge, match="4096"):
        await read_body(request, 4096)
    assert received == []


async def test_an_undeclared_body_is_refused_as_soon_as_it_passes_the_cap() -> None:
    request, received = _request([b"x" * 600] * 10)
    with pytest.raises(PayloadTooLarge):
        await read_body(request, 1024)
    assert len(received) == 2  # not the ten pieces on offer
