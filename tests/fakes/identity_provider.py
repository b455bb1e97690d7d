"""A stand-in identity provider: JWKS and OIDC discovery over HTTP, with outages and rotation."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.types import Receive, Scope, Send

from app.sandbox.dev_issuer import DevIssuer


@dataclass
class FakeIdentityProvider:
    """Publishes the keys of one or more DevIssuers; `fault` makes it fail."""

    issuers: list[DevIssuer] = field(default_factory=list)
    issuer_url: str = ""
    fault: str | None = None
    jwks_fetches: int = 0

    def rotate(self) -> DevIssuer:
        """Add a new signing key (kept alongside the old one, as IdPs do)."""
        fresh = DevIssuer(issuer=self.issuer_url)
        self.issuers.append(fresh)
        return fresh

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = await self._respond(Request(scope, receive))
        await response(scope, receive, send)

    async def _respond(self, request: Request) -> Response:
        if self.fault == "down":
            return PlainTextResponse("service unavailable", 503)
        if self.fault == "hang":
            await asyncio.sleep(30)
        if self.fault == "garbage":
            return PlainTextResponse("<html>oops</html>", 200)
        if request.url.path == "/.well-known/openid-configuration":
            return JSONResponse(
                {"issuer": self.issuer_url, "jwks_uri": self.issuer_url + "/jwks.json"}
            )
        if request.url.path == "/jwks.json":
            self.jwks_fetches += 1
            return JSONResponse({"keys": [i.public_jwk() for i in self.issuers]})
        return PlainTextResponse("not found", 404)
