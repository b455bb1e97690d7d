"""Turns a verified user and a requested lifetime into a session token."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import structlog

from app.videodb_client import MintedToken, VideoDBClient

log = structlog.get_logger("app.token_service")

TokenSource = Literal["upstream", "cache"]


@dataclass(frozen=True, slots=True)
class IssuedToken:
    """A token handed to a user, and where it came from."""

    minted: MintedToken
    source: TokenSource


class TokenService:
    """Mints tokens through VideoDB."""

    def __init__(self, videodb: VideoDBClient) -> None:
        self._videodb = videodb

    async def issue(self, user_id: str, ttl: int) -> IssuedToken:
        """A token for this user with at least the guarantees the contract gives."""
        minted = await self._videodb.mint(user_id, ttl)
        return IssuedToken(minted=minted, source="upstream")
