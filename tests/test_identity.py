"""The identity check itself: verified tokens are remembered only as long as their keys are."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from starlette.requests import Request

from app.errors import InvalidToken
from app.identity import Authenticator
from app.jwt_verification import KeyRing, build_key_ring
from app.sandbox.dev_issuer import DevIssuer
from tests.conftest import AUDIENCE, ISSUER


class _KeysReplacedInPlace:
    """A key source that refills one ring object: the same id() before and after a change,
    as a new ring can get the address of an old one that was freed."""

    def __init__(self, jwks: dict[str, Any]) -> None:
        self._ring: KeyRing = {}
        self._generation = 0
        self.publish(jwks)

    def publish(self, jwks: dict[str, Any]) -> None:
        ring, _ = build_key_ring(jwks, frozenset({"RS256"}))
        self._ring.clear()
        self._ring.update(ring)
        self._generation += 1

    @property
    def ready(self) -> bool:
        return bool(self._ring)

    @property
    def ring(self) -> KeyRing:
        return self._ring

    @property
    def generation(self) -> int:
        return self._generation

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def refresh_for_unknown_kid(self) -> None:
        return None

    def describe(self) -> str:
        return "keys replaced in place"


def _request(token: str) -> Request:
    headers = [(b"authorization", f"Bearer {token}".encode())]
    return Request({"type": "http", "method": "POST", "path": "/", "headers": headers})


async def test_a_token_of_a_withdrawn_key_is_refused_even_if_the_ring_keeps_its_address(
    make_settings: Callable[..., Any], issuer: DevIssuer
) -> None:
    keys = _KeysReplacedInPlace(issuer.jwks())
    authenticator = Authenticator(make_settings(), keys)
    token = issuer.mint("alice", AUDIENCE)
    ring_address = id(keys.ring)
    assert (await authenticator.authenticate(_request(token))).user_id == "alice"
    keys.publish(DevIssuer(issuer=ISSUER, kid="successor").jwks())  # the old key withdrawn
    assert id(keys.ring) == ring_address
    with pytest.raises(InvalidToken):
        await authenticator.authenticate(_request(token))
