"""Identity providers' options and every rule about them, written once.

The single-issuer `BROKER_AUTH_*` settings describe one provider; `BROKER_AUTH_ISSUERS`
describes several, one JSON object each (`IssuerEntry`). Both become validated
`ProviderConfig`s: the flat style through `single_issuer_provider`, the one converter, which
validates like any other input and names the flat variable in its errors. Everything past
the configuration sees one shape.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from app.config import rules
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
# a message, not a secret
NEXT_SECRET_ALONE = "needs BROKER_AUTH_HS256_SECRET: it is accepted beside it while it rotates"  # noqa: S105


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
    # accepted beside hs256_secret while the shared secret rotates (docs/operations.md)
    hs256_next_secret: SecretStr | None = Field(default=None, repr=False)

    @field_validator("issuer", "jwks_url")
    @classmethod
    def _secure(cls, value: str | None) -> str | None:
        return None if value is None else require_secure_url(value)

    _secret_length = field_validator("hs256_secret", "hs256_next_secret")(rules.shared_secret)

    @model_validator(mode="after")
    def _keys_and_algorithms(self) -> ProviderConfig:
        if self.hs256_next_secret is not None and self.hs256_secret is None:
            raise _FieldRule("hs256_next_secret", NEXT_SECRET_ALONE)
        if self.hs256_secret is not None:
            if self.jwks_url:
                raise ValueError("a JWKS URL and a shared secret are exclusive")
            if self.algorithms != [SHARED_SECRET_ALGORITHM]:
                raise _FieldRule("algorithms", "shared-secret mode accepts HS256 only")
        elif not self.jwks_url and not self.issuer:
            raise ValueError("no source of signing keys: a JWKS URL or an issuer")
        else:
            bad = sorted(set(self.algorithms) - JWKS_ALGORITHMS)
            if bad:
                raise _FieldRule(
                    "algorithms",
                    f"may hold only {', '.join(sorted(JWKS_ALGORITHMS))} (not {', '.join(bad)}):"
                    " RS*, PS* and ES* with a JWKS",
                )
        if self.label.lower() == NO_PROVIDER_LABEL:
            raise ValueError(
                f"a provider named (or, unnamed, at a host) '{self.label}' would share the "
                f"metrics label '{NO_PROVIDER_LABEL}' of refusals before a provider is known; "
                "give it another name"
            )
        return self

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


class _FieldRule(ValueError):
    """A rule of the whole provider that one field breaks: the error names that field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field} {message}")
        self.field = field
        self.message = message


class IssuerEntry(ProviderConfig):
    """One object of `BROKER_AUTH_ISSUERS`: an issuer is required, keys come from a JWKS."""

    issuer: str = Field(min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _no_secret(cls, value: object) -> object:
        if isinstance(value, dict) and (
            value.get("hs256_secret") is not None or value.get("hs256_next_secret") is not None
        ):
            raise ValueError(
                "hs256_secret is not supported in the list; shared-secret mode is the "
                "single-issuer BROKER_AUTH_HS256_SECRET"
            )
        return value


# The flat style's variables, by the ProviderConfig field each one fills.
FLAT_VARIABLES = {
    "issuer": "BROKER_AUTH_ISSUER",
    "audience": "BROKER_AUTH_AUDIENCE",
    "jwks_url": "BROKER_AUTH_JWKS_URL",
    "algorithms": "BROKER_AUTH_ALGORITHMS",
    "user_claim": "BROKER_AUTH_USER_CLAIM",
    "user_id_prefix": "BROKER_AUTH_USER_ID_PREFIX",
    "required_scopes": "BROKER_AUTH_REQUIRED_SCOPES",
    "hs256_secret": "BROKER_AUTH_HS256_SECRET",
    "hs256_next_secret": "BROKER_AUTH_HS256_NEXT_SECRET",
}


def single_issuer_provider(options: dict[str, object], algorithms_set: bool) -> ProviderConfig:
    """The one provider the flat `BROKER_AUTH_*` options describe, validated as any
    provider is; a broken rule is a ValueError naming the flat variable.

    `options` holds ProviderConfig's fields by name, None where unset; `algorithms_set`
    says whether BROKER_AUTH_ALGORITHMS was given (shared-secret mode defaults it to HS256).
    """
    values = {key: value for key, value in options.items() if value is not None}
    if not values.get("audience"):
        raise ValueError("BROKER_AUTH_AUDIENCE: is required")
    if values.get("hs256_next_secret") is not None and values.get("hs256_secret") is None:
        raise ValueError(f"BROKER_AUTH_HS256_NEXT_SECRET: {NEXT_SECRET_ALONE}")
    if values.get("hs256_secret") is not None:
        if values.get("jwks_url"):
            raise ValueError(
                "BROKER_AUTH_JWKS_URL and BROKER_AUTH_HS256_SECRET are exclusive: "
                "choose one source of signing keys"
            )
        if not algorithms_set:
            values["algorithms"] = [SHARED_SECRET_ALGORITHM]
    elif not values.get("jwks_url") and not values.get("issuer"):
        raise ValueError(
            "no source of signing keys: set BROKER_AUTH_JWKS_URL, BROKER_AUTH_ISSUER "
            "(OIDC discovery), BROKER_AUTH_HS256_SECRET or BROKER_AUTH_ISSUERS"
        )
    try:
        return ProviderConfig.model_validate(values)
    except ValidationError as exc:
        raise ValueError(_flat_message(exc)) from None


def _flat_message(exc: ValidationError) -> str:
    error = exc.errors(include_input=False, include_url=False)[0]
    cause = error.get("ctx", {}).get("error")
    if isinstance(cause, _FieldRule):
        return f"{FLAT_VARIABLES[cause.field]}: {cause.message}"
    message = str(error["msg"]).removeprefix("Value error, ")
    if error["loc"] and str(error["loc"][0]) in FLAT_VARIABLES:
        return f"{FLAT_VARIABLES[str(error['loc'][0])]}: {message}"
    if str(error["type"]) == "too_short":
        return f"BROKER_AUTH_ALGORITHMS: {message}"
    return f"BROKER_AUTH_*: {message}"


def issuer_list_rules(providers: Sequence[ProviderConfig]) -> None:
    """What the providers of `BROKER_AUTH_ISSUERS` must be to one another."""
    if not providers:
        raise ValueError("BROKER_AUTH_ISSUERS: the list is empty; name at least one provider")
    _distinct(providers, lambda p: p.issuer, "issuer", "each issuer may appear once")
    _distinct(providers, lambda p: p.label, "name", "give each provider its own 'name'")
    if len(providers) < 2:
        return
    prefixes = [p.user_id_prefix for p in providers]
    if not all(prefixes):
        raise ValueError(
            "BROKER_AUTH_ISSUERS: with several providers each needs a non-empty "
            "user_id_prefix, so that one 'sub' at two providers is two VideoDB users"
        )
    # VideoDB documents nothing of how it compares user ids; they are taken to be compared
    # without regard to case, so 'Web:' and 'web:' would merge two providers' users.
    for i, first in enumerate(prefixes):
        for j, second in enumerate(prefixes):
            if i != j and second.casefold().startswith(first.casefold()):
                raise ValueError(
                    "BROKER_AUTH_ISSUERS: user_id_prefix values must be distinct and none "
                    f"may begin another, ignoring case ('{first}' begins '{second}'): "
                    "users could collide"
                )


def _distinct(
    providers: Sequence[ProviderConfig],
    key: Callable[[ProviderConfig], object],
    what: str,
    hint: str,
) -> None:
    seen: set[object] = set()
    for provider in providers:
        value = key(provider)
        if value in seen:
            raise ValueError(f"BROKER_AUTH_ISSUERS: two providers share one {what} ({hint})")
        seen.add(value)
