"""Identity's part of the app's start-up: the providers with their keys, and the
authenticator that checks requests against them."""

from __future__ import annotations

from contextlib import AsyncExitStack
from dataclasses import dataclass

import httpx

from app.config import Settings
from app.identity.authenticator import Authenticator
from app.identity.providers import IdentityProviders

# Identity providers' key endpoints: a slow one must not hold a key refresh for long.
IDENTITY_PROVIDER_TIMEOUT = httpx.Timeout(5.0, connect=3.0)


def identity_provider_client() -> httpx.AsyncClient:
    """The client that fetches discovery documents and keys (no redirects followed)."""
    return httpx.AsyncClient(timeout=IDENTITY_PROVIDER_TIMEOUT, follow_redirects=False)


@dataclass(frozen=True, slots=True)
class Identity:
    """Who the broker trusts, and how it checks a request."""

    providers: IdentityProviders
    authenticator: Authenticator


async def start_identity(settings: Settings, stack: AsyncExitStack) -> Identity:
    """Every provider's keys loading (in the background) until the stack closes."""
    client = await stack.enter_async_context(identity_provider_client())
    providers = IdentityProviders.from_configs(
        settings.identity_providers, client, by_issuer=settings.auth_issuers is not None
    )
    await providers.start()
    stack.push_async_callback(providers.stop)
    authenticator = Authenticator(
        providers,
        leeway_seconds=settings.auth_leeway_seconds,
        cookie_name=settings.auth_cookie_name,
        allowed_origins=settings.cors_origins,
    )
    return Identity(providers, authenticator)
