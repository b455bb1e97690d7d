"""One identity provider's rules: where its keys are and what its tokens must carry.

The single-issuer `BROKER_AUTH_*` settings describe one provider; `BROKER_AUTH_ISSUERS`
describes several, one JSON object each (`IssuerEntry`). Both become `ProviderConfig`s, so
everything past the settings sees one shape.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from app.urls import host_of, require_secure_url

JWKS_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512"}
)
SHARED_SECRET_ALGORITHM = "HS256"  # noqa: S105 - an algorithm name
USER_ID_PREFIX_PATTERN = r"^[A-Za-z0-9._:-]{0,32}$"
NAME_PATTERN = r"^[A-Za-z0-9._-]{1,64}$"
SHARED_SECRET_NAME = "shared-secret"  # noqa: S105 - the label of shared-secret mode
# The metrics label of a refusal before the token named a provider: no provider may take it.
NO_PROVIDER_LABEL = "none"

AudienceClaim = Literal["aud", "client_id", "azp"]


class ProviderConfig(BaseModel):
    """What a token of this provider is checked against."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    name: str | None = Field(default=None, pattern=NAME_PATTERN)
    issuer: str | None = None
    audience: str = Field(min_length=1, max_length=512)
    jwks_url: str | None = None
    algorithms: list[str] = Field(default_factory=lambda: ["RS256"], min_length=1)
    user_claim: str = Field(default="sub", min_length=1, max_length=128)
    user_id_prefix: str = Field(default="", pattern=USER_ID_PREFIX_PATTERN)
    audience_claim: AudienceClaim = "aud"
    required_scopes: list[str] = Field(default_factory=list)
    hs256_secret: SecretStr | None = Field(default=None, repr=False)

    @property
    def label(self) -> str:
        """How logs, metrics and /readyz name this provider: its name, else its host."""
        if self.name:
            return self.name
        host = host_of(self.issuer) or host_of(self.jwks_url)
        return host or SHARED_SECRET_NAME

    @property
    def key_source(self) -> Literal["jwks", "discovery", "shared_secret"]:
        """Where this provider's signing keys come from."""
        if self.hs256_secret is not None:
            return "shared_secret"
        return "jwks" if self.jwks_url else "discovery"


class IssuerEntry(ProviderConfig):
    """One object of `BROKER_AUTH_ISSUERS`: an issuer is required, keys come from a JWKS."""

    issuer: str = Field(min_length=1)

    @field_validator("issuer", "jwks_url")
    @classmethod
    def _secure(cls, value: str | None) -> str | None:
        return None if value is None else require_secure_url(value)

    @field_validator("algorithms")
    @classmethod
    def _jwks_algorithms(cls, value: list[str]) -> list[str]:
        bad = sorted(set(value) - JWKS_ALGORITHMS)
        if bad:
            raise ValueError(
                f"may hold only {', '.join(sorted(JWKS_ALGORITHMS))} (not {', '.join(bad)})"
            )
        return value

    @model_validator(mode="after")
    def _no_secret(self) -> IssuerEntry:
        if self.hs256_secret is not None:
            raise ValueError(
                "hs256_secret is not supported in the list; shared-secret mode is the "
                "single-issuer BROKER_AUTH_HS256_SECRET"
            )
        return self
