"""The trusted identity providers at run time: each with its own keys, routed to by `iss`."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import httpx

from app.config.providers import ProviderConfig
from app.identity.jwt import TokenRejected
from app.identity.signing_keys import SigningKeys, signing_keys_for


@dataclass(frozen=True, slots=True)
class Provider:
    """One provider's rules and the keys that load, refresh and fail on their own."""

    index: int
    config: ProviderConfig
    keys: SigningKeys
    allowed: frozenset[str]
    required_scopes: frozenset[str]
    # Its configured name or host: what logs, metrics and /readyz show. Worked out once (a
    # host comes from parsing a URL), as every request's principal carries it.
    label: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "label", self.config.label)

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

    def __init__(self, providers: Sequence[Provider], *, by_issuer: bool = True) -> None:
        self._providers = tuple(providers)
        self._by_issuer = {p.config.issuer: p for p in providers if p.config.issuer}
        # The single-issuer style: its one provider takes every token and checks `iss` itself
        # while verifying (BROKER_AUTH_ISSUER, when set); nothing is read of a token to route
        # it.
        self._only = self._providers[0] if not by_issuer and len(self._providers) == 1 else None

    @property
    def routes_by_issuer(self) -> bool:
        """Whether a token's `iss` chooses its provider (BROKER_AUTH_ISSUERS)."""
        return self._only is None

    @classmethod
    def from_configs(
        cls, configs: Sequence[ProviderConfig], client: httpx.AsyncClient, *, by_issuer: bool
    ) -> IdentityProviders:
        """A provider, with its own key source, for each configuration; `by_issuer` for the
        list style, where a token's `iss` chooses among them."""
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
            ],
            by_issuer=by_issuer,
        )

    def __iter__(self) -> Iterator[Provider]:
        return iter(self._providers)

    def __len__(self) -> int:
        return len(self._providers)

    def __getitem__(self, index: int) -> Provider:
        return self._providers[index]

    def route(self, issuer: str | None) -> Provider:
        """The provider whose rules this token's claimed issuer selects."""
        if self._only is not None:
            return self._only
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
