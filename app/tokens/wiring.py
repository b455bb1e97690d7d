"""The tokens' part of start-up: the service that reuses, coalesces and mints."""

from __future__ import annotations

from app.config import Settings
from app.infra.redis_state import SharedState
from app.tokens.cache import LocalTokenCache
from app.tokens.sealing import TokenSealer
from app.tokens.service import Minter, TokenService
from app.tokens.shared_store import SharedTokenStore


def build_tokens(settings: Settings, minter: Minter, shared: SharedState | None) -> TokenService:
    """Tokens from this process's cache, Redis's sealed copies when shared, or `minter`."""
    store = None
    if shared is not None:
        sealer = TokenSealer(settings.videodb_api_key.get_secret_value())
        store = SharedTokenStore(shared, sealer)
    return TokenService(
        minter,
        LocalTokenCache(settings.cache_max_entries),
        store,
        upstream_name=settings.videodb_api,
        deadline=settings.upstream_timeout,
    )
