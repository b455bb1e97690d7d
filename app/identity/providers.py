"""The trusted identity providers at run time: each with its own keys, routed to by `iss`."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import httpx

from app.identity.jwt import TokenRejected
from app.identity.provider_config import ProviderConfig
from app.identity.signing_keys import SigningKeys, signing_keys_for


@dataclass(frozen=True, slots=True)
class Provider:
    """One provider's rules and the keys that load, refresh and fail on their own."""

    index: int
    config: ProviderConfig
    keys: SigningKeys
    allowed: frozenset[str]
    required_scopes: frozenset[str]

    @property
    def label(self) -> str:
        """Its configured name or host: what logs, metrics and /readyz show."""
        return self.config.label

    @property
    def state(self) -> str:
        """'ok', or why its keys are not loaded."""
        if self.keys.ready:
            return "ok"
        error = self.keys.last_error
        return f"not loaded ({error})" if error else "not loaded yet"


class IdentityProviders:
    """Every provider the settings trust. A token goes to the one its `iss` names, and
    only that one: an `iss` naming none is refused before any key is looked at or fetched."""

    def __init__(self, providers: Sequence[Provider]) -> None:
        self._providers = tuple(providers)
        self._by_issuer = {p.config.issuer: p for p in providers if p.config.issuer}
        # One provider without an issuer (single-issuer mode, no BROKER_AUTH_ISSUER): it takes
        # every token, and its `iss` is not checked, exactly as before several providers.
        only = self._providers[0] if len(self._providers) == 1 else None
        self._catch_all = only if only is not None and not only.config.issuer else None

    @classmethod
    def from_configs(
        cls, configs: Sequence[ProviderConfig], client: httpx.AsyncClient
    ) -> IdentityProviders:
        """A provider, with its own key source, for each configuration."""
        return cls(
            [
                Provider(
                    index=i,
                    config=config,
                    keys=signing_keys_for(config, client),
                    allowed=frozenset(config.algorithms),
                    required_scopes=frozenset(config.required_scopes),
                )
                for i, config in enumerate(configs)
            ]
        )

    def __iter__(self) -> Iterator[Provider]:
        return iter(self._providers)

    def __len__(self) -> int:
        return len(self._providers)

    def __getitem__(self, index: int) -> Provider:
        return self._providers[index]

    def route(self, issuer: str | None) -> Provider:
        """The provider whose rules this token's claimed issuer selects."""
        if self._catch_all is not None:
            return self._catch_all
        found = self._by_issuer.get(issuer) if issuer is not None else None
        if found is None:
            raise TokenRejected("issuer", "token issuer is not a trusted identity provider")
        return found

    @property
    def ready(self) -> bool:
        """At least one provider's keys are loaded: its users can be served."""
        return any(p.keys.ready for p in self._providers)

    def states(self) -> dict[str, str]:
        """Each provider's state by label, for /readyz."""
        return {p.label: p.state for p in self._providers}

    def describe(self) -> str:
        """Where each provider's keys come from, for the start-up log."""
        return "; ".join(f"{p.label}: {p.keys.describe()}" for p in self._providers)

    async def start(self) -> None:
        """Begin loading every provider's keys, each in the background on its own."""
        for provider in self._providers:
            await provider.keys.start()

    async def stop(self) -> None:
        """Stop every refresh; nothing one of them does may fail the shutdown of the rest."""
        for provider in self._providers:
            with contextlib.suppress(Exception):
                await provider.keys.stop()
