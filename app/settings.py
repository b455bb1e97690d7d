"""The broker's configuration: one pydantic-settings class, checked at start-up."""

from __future__ import annotations

import importlib.util
import ipaddress
import json
from collections.abc import Callable
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import (
    AliasChoices,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from app.identity.provider_config import (
    JWKS_ALGORITHMS,
    NO_PROVIDER_LABEL,
    SHARED_SECRET_ALGORITHM,
    USER_ID_PREFIX_PATTERN,
    IssuerEntry,
    ProviderConfig,
)
from app.secret_files import SecretFileError, SecretFilesSource
from app.urls import require_secure_url

MIN_SHARED_SECRET_BYTES = 32
MIN_KEY_CHARS = 8  # 'sk-' and a little: real keys are far longer; this catches 'sk-' alone
PLACEHOLDER_KEY = "sk-replace-me"  # .env.example's, copied and never filled in
_SENDABLE_MIN, _SENDABLE_MAX = 0x21, 0x7E  # visible ASCII: what an HTTP header value can carry
REDIS_SCHEMES = frozenset({"redis", "rediss", "unix"})

CommaList = Annotated[list[str], NoDecode]


class ConfigError(Exception):
    """Configuration rules are broken: one line per problem, naming the variable and the rule
    only, never a value."""

    def __init__(self, *problems: str) -> None:
        super().__init__(problems[0] if len(problems) == 1 else "; ".join(problems))
        self.problems = list(problems)


def _split_commas(value: object) -> object:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


class Settings(BaseSettings):
    """Every setting in the contract; names are the environment variables."""

    model_config = SettingsConfigDict(
        env_prefix="BROKER_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        hide_input_in_errors=True,
        populate_by_name=True,
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """The environment and .env as pydantic-settings reads them, and each secret's
        `_FILE` variable (app/secret_files.py)."""
        secret_files = SecretFilesSource(settings_cls)
        return init_settings, secret_files, env_settings, dotenv_settings, file_secret_settings

    videodb_api_key: SecretStr = Field(
        validation_alias=AliasChoices("VIDEO_DB_API_KEY", "VIDEODB_API_KEY"),
    )
    videodb_api: str = Field(default="https://api.videodb.io", validation_alias="VIDEO_DB_API")

    auth_jwks_url: str | None = None
    auth_issuer: str | None = None
    auth_audience: str | None = Field(default=None, min_length=1)
    auth_algorithms: CommaList = Field(default_factory=lambda: ["RS256"])
    auth_hs256_secret: SecretStr | None = None
    auth_user_claim: str = Field(default="sub", min_length=1, max_length=128)
    auth_required_scopes: CommaList = Field(default_factory=list)
    auth_leeway_seconds: int = Field(default=30, ge=0, le=300)
    auth_cookie_name: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.\-]{1,64}$")
    auth_user_id_prefix: str = Field(default="", pattern=USER_ID_PREFIX_PATTERN)
    auth_issuers: Annotated[list[IssuerEntry] | None, NoDecode] = None

    token_default_ttl: int = Field(default=900, gt=0)
    token_min_ttl: int = Field(default=60, gt=0)
    token_max_ttl: int = Field(default=3600, gt=0, le=86400)

    cors_origins: CommaList = Field(default_factory=list)
    rate_limit: str = "30/minute"
    redis_url: SecretStr | None = None
    upstream_timeout: float = Field(default=5.0, gt=0, le=60)
    cache_max_entries: int = Field(default=10_000, ge=0, le=10_000_000)
    circuit_failure_threshold: int = Field(default=5, ge=1, le=1000)
    circuit_reset_seconds: float = Field(default=15.0, gt=0, le=600)

    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    trusted_proxies: CommaList = Field(default_factory=list)

    capture_sessions: Literal["on", "off"] = "off"
    capture_collection_id: str = Field(default="default", pattern=r"^[A-Za-z0-9_-]{1,128}$")
    capture_callback_url: str | None = None
    capture_rate_limit: str = "10/minute"
    capture_read_rate_limit: str = "120/minute"

    otel: Literal["on", "off"] = "off"

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    log_format: Literal["json", "console"] = "json"

    @field_validator(
        "auth_algorithms",
        "auth_required_scopes",
        "cors_origins",
        "trusted_proxies",
        mode="before",
    )
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        return _split_commas(value)

    @field_validator("auth_issuers", mode="before")
    @classmethod
    def _issuers_json(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        if not value.strip():
            return None  # an empty variable (a compose file's ${X:-}) is an unset one
        try:
            parsed = json.loads(value)
        except (ValueError, RecursionError):
            raise ValueError("is not JSON (a JSON array of provider objects)") from None
        if not isinstance(parsed, list):
            raise ValueError("must be a JSON array of provider objects")
        return parsed

    @field_validator("capture_sessions", "otel", mode="before")
    @classmethod
    def _on_off(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("capture_callback_url")
    @classmethod
    def _secure_callback(cls, value: str | None) -> str | None:
        return None if value is None else require_secure_url(value)

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("videodb_api_key")
    @classmethod
    def _key_shape(cls, value: SecretStr) -> SecretStr:
        raw = value.get_secret_value()
        if any(c.isspace() for c in raw):
            # Most often a newline kept from a secret file (`kubectl create secret --from-file`)
            raise ValueError("holds whitespace (a trailing newline from a file?); remove it")
        if not all(_SENDABLE_MIN <= ord(c) <= _SENDABLE_MAX for c in raw):
            # It travels in an HTTP header: anything outside visible ASCII cannot be sent.
            raise ValueError("holds a character that is not visible ASCII (non-ASCII or control)")
        if raw == PLACEHOLDER_KEY:
            raise ValueError(
                "is still the placeholder from .env.example: set your VideoDB secret key"
            )
        if not raw.startswith("sk-"):
            raise ValueError("must be a VideoDB secret key starting with 'sk-'")
        if len(raw) < MIN_KEY_CHARS:
            raise ValueError(
                f"is too short for a VideoDB secret key ('sk-' and {MIN_KEY_CHARS - 3}+ more)"
            )
        return value

    @field_validator("videodb_api", "auth_jwks_url", "auth_issuer")
    @classmethod
    def _secure_urls(cls, value: str | None) -> str | None:
        return None if value is None else require_secure_url(value)

    @field_validator("videodb_api")
    @classmethod
    def _strip_slash(cls, value: str) -> str:
        return value.rstrip("/")

    @field_validator("auth_hs256_secret")
    @classmethod
    def _secret_length(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value().encode()) < MIN_SHARED_SECRET_BYTES:
            raise ValueError(f"must be at least {MIN_SHARED_SECRET_BYTES} bytes")
        return value

    @field_validator("cors_origins")
    @classmethod
    def _exact_origins(cls, value: list[str]) -> list[str]:
        for origin in value:
            parts = urlsplit(origin)
            if (
                origin == "*"
                or parts.scheme not in {"http", "https"}
                or not parts.netloc
                or parts.path
                or parts.query
                or parts.fragment
            ):
                raise ValueError(
                    "each entry must be an exact origin such as https://app.example.com "
                    "(no wildcard, path or trailing slash)"
                )
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _proxy_addresses(cls, value: list[str]) -> list[str]:
        for entry in value:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ValueError("each entry must be an IP address or CIDR network") from None
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_url_shape(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        # Checked here so that a bad URL is one line at start-up, not a traceback from the
        # Redis client; the message never repeats the URL, which may hold a password.
        try:
            parts = urlsplit(value.get_secret_value())
            port = parts.port
        except ValueError:
            raise ValueError("is not a valid URL (check the host and port)") from None
        if parts.scheme not in REDIS_SCHEMES:
            raise ValueError("must start with redis://, rediss:// or unix://")
        if parts.scheme != "unix" and not parts.hostname:
            raise ValueError("must name a host, as in redis://redis:6379/0")
        if parts.scheme == "unix" and not parts.path:
            raise ValueError("must name a socket path, as in unix:///run/redis.sock")
        if port == 0:
            raise ValueError("port must be from 1 to 65535")
        from redis.asyncio.connection import parse_url

        try:
            parse_url(value.get_secret_value())
        except (ValueError, TypeError):
            raise ValueError("has an option the Redis client refuses (check its query)") from None
        return value

    @field_validator("rate_limit", "capture_rate_limit", "capture_read_rate_limit")
    @classmethod
    def _rate_shape(cls, value: str) -> str:
        from limits import parse_many

        try:
            if not parse_many(value):
                raise ValueError
        except ValueError:
            raise ValueError("must look like '30/minute' or '5/second;100/hour'") from None
        return value

    @model_validator(mode="after")
    def _cross_field_rules(self) -> Settings:
        if self.auth_issuers is None:
            self._single_issuer_rules()
        else:
            self._issuer_list_rules(self.auth_issuers)
        for provider in self.identity_providers:
            if provider.label.lower() == NO_PROVIDER_LABEL:
                where = (
                    "BROKER_AUTH_ISSUERS"
                    if self.auth_issuers is not None
                    else "BROKER_AUTH_ISSUER/BROKER_AUTH_JWKS_URL"
                )
                raise ValueError(
                    f"{where}: a provider named (or, unnamed, at a host) '{provider.label}' "
                    f"would share the metrics label '{NO_PROVIDER_LABEL}' of refusals before "
                    "a provider is known; give it another name"
                )
        if not self.token_min_ttl <= self.token_default_ttl <= self.token_max_ttl:
            raise ValueError(
                "BROKER_TOKEN_DEFAULT_TTL must lie between BROKER_TOKEN_MIN_TTL and "
                "BROKER_TOKEN_MAX_TTL"
            )
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ValueError("BROKER_TLS_CERT_FILE and BROKER_TLS_KEY_FILE must be set together")
        return self

    def _single_issuer_rules(self) -> None:
        if not self.auth_audience:
            raise ValueError("BROKER_AUTH_AUDIENCE: is required")
        secret_mode = self.auth_hs256_secret is not None
        if secret_mode and self.auth_jwks_url:
            raise ValueError(
                "BROKER_AUTH_JWKS_URL and BROKER_AUTH_HS256_SECRET are exclusive: "
                "choose one source of signing keys"
            )
        if not secret_mode and not self.auth_jwks_url and not self.auth_issuer:
            raise ValueError(
                "no source of signing keys: set BROKER_AUTH_JWKS_URL, BROKER_AUTH_ISSUER "
                "(OIDC discovery), BROKER_AUTH_HS256_SECRET or BROKER_AUTH_ISSUERS"
            )
        if not self.auth_algorithms:
            raise ValueError("BROKER_AUTH_ALGORITHMS: at least one algorithm is required")
        if secret_mode:
            if "auth_algorithms" in self.model_fields_set and self.auth_algorithms != [
                SHARED_SECRET_ALGORITHM
            ]:
                raise ValueError("BROKER_AUTH_ALGORITHMS: shared-secret mode accepts HS256 only")
            self.auth_algorithms = [SHARED_SECRET_ALGORITHM]
        else:
            bad = [alg for alg in self.auth_algorithms if alg not in JWKS_ALGORITHMS]
            if bad:
                raise ValueError(
                    "BROKER_AUTH_ALGORITHMS: with a JWKS only RS*, PS* and ES* algorithms "
                    f"are allowed ({', '.join(sorted(JWKS_ALGORITHMS))})"
                )

    def _issuer_list_rules(self, providers: list[IssuerEntry]) -> None:
        mixed = sorted(_SINGLE_ISSUER_FIELDS & self.model_fields_set)
        if mixed:
            names = ", ".join(env_name(field) for field in mixed)
            raise ValueError(
                f"BROKER_AUTH_ISSUERS replaces {names}: set each provider's values in the "
                "list and unset the single-issuer variables"
            )
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
        # VideoDB documents nothing of how it compares user ids; they are taken to be
        # compared without regard to case, so 'Web:' and 'web:' would merge two providers' users.
        for i, first in enumerate(prefixes):
            for j, second in enumerate(prefixes):
                if i != j and second.casefold().startswith(first.casefold()):
                    raise ValueError(
                        "BROKER_AUTH_ISSUERS: user_id_prefix values must be distinct and none "
                        f"may begin another, ignoring case ('{first}' begins '{second}'): "
                        "users could collide"
                    )

    @property
    def identity_providers(self) -> list[ProviderConfig]:
        """Every trusted provider, in either configuration style."""
        if self.auth_issuers is not None:
            return list(self.auth_issuers)
        assert self.auth_audience is not None  # checked by the single-issuer rules
        return [
            ProviderConfig.model_construct(
                issuer=self.auth_issuer,
                audience=self.auth_audience,
                jwks_url=self.auth_jwks_url,
                algorithms=list(self.auth_algorithms),
                user_claim=self.auth_user_claim,
                user_id_prefix=self.auth_user_id_prefix,
                audience_claim="aud",
                required_scopes=list(self.auth_required_scopes),
                hs256_secret=self.auth_hs256_secret,
                name=None,
            )
        ]

    @field_validator("otel")
    @classmethod
    def _otel_installed(cls, value: str) -> str:
        if value == "on" and not all(map(_installed, _OTEL_MODULES)):
            raise ValueError(
                "on needs the tracing packages: pip install 'videodb-token-broker[otel]' "
                "(the container image has them)"
            )
        return value

    @property
    def otel_on(self) -> bool:
        """Whether traces are exported (BROKER_OTEL=on)."""
        return self.otel == "on"

    @property
    def capture_sessions_on(self) -> bool:
        """Whether the capture-session endpoints are served."""
        return self.capture_sessions == "on"

    @property
    def key_source(self) -> str:
        """Where signing keys come from, for `token-broker check`."""
        if self.auth_issuers is not None:
            return f"{len(self.auth_issuers)} identity providers, BROKER_AUTH_ISSUERS"
        return f"{self.identity_providers[0].key_source} keys"


_OTEL_MODULES = ("opentelemetry.sdk", "opentelemetry.exporter.otlp.proto.http")


def _installed(module: str) -> bool:
    """Whether a module can be imported, without importing it."""
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # its parent package is missing
        return False


_SINGLE_ISSUER_FIELDS = frozenset(
    {
        "auth_jwks_url",
        "auth_issuer",
        "auth_audience",
        "auth_hs256_secret",
        "auth_algorithms",
        "auth_user_claim",
        "auth_required_scopes",
        "auth_user_id_prefix",
    }
)


def _distinct(
    providers: list[IssuerEntry], key: Callable[[IssuerEntry], object], what: str, hint: str
) -> None:
    seen: set[object] = set()
    for provider in providers:
        value = key(provider)
        if value in seen:
            raise ValueError(f"BROKER_AUTH_ISSUERS: two providers share one {what} ({hint})")
        seen.add(value)


_ENV_NAMES = {
    "videodb_api_key": "VIDEO_DB_API_KEY",
    "VIDEO_DB_API_KEY": "VIDEO_DB_API_KEY",
    "VIDEODB_API_KEY": "VIDEO_DB_API_KEY",
    "videodb_api": "VIDEO_DB_API",
}


def env_name(field: str) -> str:
    """The environment variable behind a settings field."""
    if field in _ENV_NAMES:
        return _ENV_NAMES[field]
    if field.isupper():
        return field
    return f"BROKER_{field.upper()}"


def describe_validation_errors(exc: ValidationError) -> list[str]:
    """One line per broken rule, naming the variable and the rule; never the value."""
    return [_describe(error) for error in exc.errors(include_input=False, include_url=False)]


def _describe(error: ErrorDetails) -> str:
    loc = [str(part) for part in error["loc"]]
    message = str(error["msg"]).removeprefix("Value error, ")
    if error["type"] == "missing":
        message = "is required"
    elif error["type"] == "extra_forbidden":
        message = "is not a setting a provider has"
    if not loc:
        return message
    where = env_name(loc[0])
    if loc[0] == "auth_issuers" and len(loc) > 1 and loc[1].isdigit():  # which provider, which key
        where += f": provider {int(loc[1]) + 1}"
        detail = [part for part in loc[2:] if not part.isdigit()]
        if not detail:
            return f"{where}: {message}"
        # our own rules read on from the name ("issuer must use"); pydantic's are sentences
        return f"{where}: {detail[0]}{' ' if message[:1].islower() else ': '}{message}"
    return f"{where}: {message}"


def load_settings(**overrides: object) -> Settings:
    """Read settings from the environment, .env and `_FILE` secrets; raise ConfigError with
    every broken rule found."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except SecretFileError as exc:
        raise ConfigError(*exc.problems) from None
    except ValidationError as exc:
        raise ConfigError(*describe_validation_errors(exc)) from None
