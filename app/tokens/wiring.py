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
        sealer = TokenSealer(*sealing_materials(settings))
        store = SharedTokenStore(shared, sealer)
    return TokenService(
        minter,
        LocalTokenCache(settings.cache_max_entries),
        store,
        upstream_name=settings.videodb_api,
        deadline=settings.upstream_timeout,
    )


def sealing_materials(settings: Settings) -> tuple[str, str | None]:
    """What Redis entries are sealed with (BROKER_REDIS_ENCRYPTION_KEY, else the VideoDB
    key), and what they may have been sealed with before (a rollout of a new key)."""
    current = settings.redis_encryption_key or settings.videodb_api_key
    previous = settings.redis_previous_encryption_key
    return current.get_secret_value(), previous.get_secret_value() if previous else None
