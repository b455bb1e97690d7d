"""The lifetime a client may ask of a token: the one rule both endpoints apply."""

from __future__ import annotations

from typing import Any

from app.config import Settings
from app.errors import InvalidRequest


def requested_lifetime(document: dict[str, Any], settings: Settings) -> int:
    """`expires_in` of a request body: the default when absent, else an integer in range."""
    low, high = settings.token_min_ttl, settings.token_max_ttl
    if "expires_in" not in document:
        return settings.token_default_ttl
    ttl = document["expires_in"]
    if isinstance(ttl, float) and ttl.is_integer():
        ttl = int(ttl)  # JSON Schema counts 600.0 as an integer, so do we
    if not isinstance(ttl, int) or isinstance(ttl, bool) or not low <= ttl <= high:
        raise InvalidRequest(f"expires_in must be an integer from {low} to {high} seconds.")
    return ttl
