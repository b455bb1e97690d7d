"""A stand-in identity provider: JWKS and OIDC discovery over HTTP, with outages and rotation."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.types import Receive, Scope, Send

from app.sandbox.dev_issuer import DevIssuer


@dataclass
class FakeIdentityProvider:
    """Publishes the keys of one or more DevIssuers; `fault` makes it fail: down, hang,
    garbage, trickle, nested, bad_jwks_uri (discovery) or odd_types (JWKS members)."""

    issuers: list[DevIssuer] = field(default_factory=list)
    issuer_url: str = ""
    fault: str | None = None
    jwks_fetches: int = 0
    request_headers: list[dict[str, str]] = field(default_factory=list)  # of every request

    def rotate(self) -> DevIssuer:
        """Add a new signing key (kept alongside the old one, as IdPs do)."""
        fresh = DevIssuer(issuer=self.issuer_url)
        self.issuers.append(fresh)
        return fresh

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.request_headers.append({k.decode(): v.decode() for k, v in scope["headers"]})
        if self.fault == "trickle":
            await self._trickle(send)
            return
        response = await self._respond(Request(scope, receive))
        await response(scope, receive, send)

    async def _trickle(self, send: Send) -> None:
        """A 200 whose body comes a byte every 0.2 s: every read is quick, the whole is not."""
        self.jwks_fetches += 1
        body = json.dumps({"keys": [i.public_jwk() for i in self.issuers]}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        for byte in body:
            if self.fault != "trickle":
                break
            await asyncio.sleep(0.2)
            await send({"type": "http.response.body", "body": bytes([byte]), "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    async def _respond(self, request: Request) -> Response:
        if self.fault == "down":
            return PlainTextResponse("service unavailable", 503)
        if self.fault == "hang":
            await asyncio.sleep(30)
        if self.fault == "garbage":
            return PlainTextResponse("<html>oops</html>", 200)
        if self.fault == "nested":  # valid JSON, nested past any parser's recursion limit
            return Response("[" * 50_000 + "]" * 50_000, 200, media_type="application/json")
        if request.url.path == "/.well-known/openid-configuration":
            jwks_uri = self.issuer_url + "/jwks.json"
            if self.fault == "bad_jwks_uri":  # a URL no client can parse
                jwks_uri = self.issuer_url + "/jwks\u0000.json"
            return JSONResponse({"issuer": self.issuer_url, "jwks_uri": jwks_uri})
        if request.url.path == "/jwks.json":
            self.jwks_fetches += 1
            keys = [i.public_jwk() for i in self.issuers]
            if self.fault == "odd_types":  # members of unexpected JSON types
                keys = [{**k, "alg": [k["alg"]]} for k in keys]
            return JSONResponse({"keys": keys})
        return PlainTextResponse("not found", 404)
