"""Reading a request's body whole, refused past a size cap before it is all held."""

from __future__ import annotations

from starlette.requests import Request

from app.errors import PayloadTooLarge
from app.web.request_context import first_header


async def read_body(request: Request, limit: int) -> bytes:
    """The body, or PayloadTooLarge as soon as it is declared or found to pass `limit`."""
    declared = first_header(request.scope, b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"The body may hold at most {limit} bytes.")
    body = b""
    more = True
    while more:  # the ASGI messages themselves: Starlette's stream() costs a generator per call
        message = await request.receive()
        if message["type"] != "http.request":
            break  # the client went away; what arrived is judged as it is
        body += message.get("body", b"")
        more = message.get("more_body", False)
        if len(body) > limit:
            raise PayloadTooLarge(f"The body may hold at most {limit} bytes.")
    return body
