"""Every option of the broker, read from the environment, `.env` and `_FILE` secrets.

Plain option fields in one place; each rule lives beside the options it is about: the
identity provider's in config/providers.py (the flat `BROKER_AUTH_*` options become a
validated `ProviderConfig` there), the other single values' in config/rules.py. Nothing here
imports a part of the broker that uses the configuration.
"""

from __future__ import annotations

import json
from typing import Annotated, Literal

from pydantic import (
    AliasChoices,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from app.config import live, redis, rules
from app.config.errors import ConfigError, describe_validation_errors, env_name
from app.config.live import PipelineStep
from app.config.providers import (
    IssuerEntry,
    ProviderConfig,
    issuer_list_rules,
    single_issuer_provider,
)
from app.config.secret_files import SecretFileError, SecretFilesSource
from app.urls import require_secure_url

CommaList = Annotated[list[str], NoDecode]


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
        `_FILE` variable (config/secret_files.py)."""
        secret_files = SecretFilesSource(settings_cls)
        return init_settings, secret_files, env_settings, dotenv_settings, file_secret_settings

    videodb_api_key: SecretStr = Field(
        validation_alias=AliasChoices("VIDEO_DB_API_KEY", "VIDEODB_API_KEY"),
    )
    videodb_api: str = Field(default="https://api.videodb.io", validation_alias="VIDEO_DB_API")

    # One identity provider, flat (config/providers.py checks them as a ProviderConfig) ...
    auth_jwks_url: str | None = None
    auth_issuer: str | None = None
    auth_audience: str | None = None
    auth_algorithms: CommaList = Field(default_factory=lambda: ["RS256"])
    auth_hs256_secret: SecretStr | None = None
    auth_hs256_next_secret: SecretStr | None = None  # beside it while it rotates
    auth_user_claim: str = "sub"
    auth_required_scopes: CommaList = Field(default_factory=list)
    auth_user_id_prefix: str = ""
    # ... or several, as a JSON array
    auth_issuers: Annotated[list[IssuerEntry] | None, NoDecode] = None
    auth_leeway_seconds: int = Field(default=30, ge=0, le=300)
    auth_cookie_name: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.\-]{1,64}$")

    token_default_ttl: int = Field(default=900, gt=0)
    token_min_ttl: int = Field(default=60, gt=0)
    token_max_ttl: int = Field(default=3600, gt=0, le=86400)

    cors_origins: CommaList = Field(default_factory=list)
    rate_limit: str = "30/minute"
    redis_url: SecretStr | None = None
    # its shape (config/redis.py): TLS verified against a CA, a Cluster, or Sentinel's primary
    redis_ca_file: str | None = None
    redis_cluster: Literal["on", "off"] = "off"
    redis_sentinels: CommaList = Field(default_factory=list)
    redis_sentinel_password: SecretStr | None = None
    # what seals tokens in Redis (else the VideoDB key), and what sealed them before a rollout
    redis_encryption_key: SecretStr | None = None
    redis_previous_encryption_key: SecretStr | None = None
    upstream_timeout: float = Field(default=5.0, gt=0, le=60)
    # VideoDB calls in flight at once per worker; the rest queue in front of the pool
    upstream_max_connections: int = Field(default=64, ge=1, le=1024)
    cache_max_entries: int = Field(default=10_000, ge=0, le=10_000_000)
    circuit_failure_threshold: int = Field(default=5, ge=1, le=1000)
    circuit_reset_seconds: float = Field(default=15.0, gt=0, le=600)

    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    trusted_proxies: CommaList = Field(default_factory=list)
    # /metrics on a port of its own (token-broker serve binds it), never on the main one
    metrics_port: int | None = Field(default=None, ge=1, le=65535)

    capture_sessions: Literal["on", "off"] = "off"
    capture_collection_id: str = Field(default="default", pattern=r"^[A-Za-z0-9_-]{1,128}$")
    capture_callback_url: str | None = None
    capture_rate_limit: str = "10/minute"
    capture_read_rate_limit: str = "120/minute"
    capture_live: Literal["on", "off"] = "off"
    public_url: str | None = None
    capture_webhook_secret: SecretStr | None = None
    capture_pipelines: Annotated[list[PipelineStep], NoDecode] = Field(default_factory=list)

    otel: Literal["on", "off"] = "off"

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    log_format: Literal["json", "console"] = "json"

    _providers: list[ProviderConfig] = PrivateAttr(default_factory=list)
    _redis_target: redis.RedisTarget | None = PrivateAttr(default=None)

    _comma_separated = field_validator(
        "auth_algorithms",
        "auth_required_scopes",
        "cors_origins",
        "trusted_proxies",
        "redis_sentinels",
        mode="before",
    )(rules.split_commas)
    _key = field_validator("videodb_api_key")(rules.videodb_key)
    _secret = field_validator(
        "auth_hs256_secret",
        "auth_hs256_next_secret",
        "redis_encryption_key",
        "redis_previous_encryption_key",
    )(rules.shared_secret)  # every problem at once
    _origins = field_validator("cors_origins")(rules.exact_origins)
    _proxies = field_validator("trusted_proxies")(rules.proxy_networks)
    _redis = field_validator("redis_url")(redis.redis_url)
    _sentinels = field_validator("redis_sentinels")(redis.sentinel_addresses)
    _rates = field_validator("rate_limit", "capture_rate_limit", "capture_read_rate_limit")(
        rules.rate
    )
    _tracing = field_validator("otel")(rules.tracing_installed)

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

    _public_url = field_validator("public_url")(live.public_origin)
    _webhook_secret = field_validator("capture_webhook_secret")(live.webhook_secret)
    _pipelines = field_validator("capture_pipelines", mode="before")(live.parse_pipelines)

    @field_validator("capture_sessions", "capture_live", "otel", "redis_cluster", mode="before")
    @classmethod
    def _on_off(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("videodb_api")
    @classmethod
    def _videodb_base(cls, value: str) -> str:
        return require_secure_url(value).rstrip("/")

    @field_validator("capture_callback_url")
    @classmethod
    def _secure_callback(cls, value: str | None) -> str | None:
        return None if value is None else require_secure_url(value)

    @model_validator(mode="after")
    def _cross_field_rules(self) -> Settings:
        self._providers = self._identity_providers()
        if not self.token_min_ttl <= self.token_default_ttl <= self.token_max_ttl:
            raise ValueError(
                "BROKER_TOKEN_DEFAULT_TTL must lie between BROKER_TOKEN_MIN_TTL and "
                "BROKER_TOKEN_MAX_TTL"
            )
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ValueError("BROKER_TLS_CERT_FILE and BROKER_TLS_KEY_FILE must be set together")
        if self.redis_previous_encryption_key and not self.redis_encryption_key:
            raise ValueError(
                "BROKER_REDIS_PREVIOUS_ENCRYPTION_KEY needs BROKER_REDIS_ENCRYPTION_KEY: it is "
                "the key entries were sealed with before the current one"
            )
        self._redis_target = redis.redis_target(
            self.redis_url,
            self.redis_ca_file,
            self.redis_cluster == "on",
            self.redis_sentinels,
            self.redis_sentinel_password,
        )
        live.live_rules(
            self.capture_live_on,
            self.capture_sessions_on,
            self.public_url,
            self.capture_webhook_secret,
            self.capture_callback_url,
        )
        return self

    def _identity_providers(self) -> list[ProviderConfig]:
        if self.auth_issuers is None:
            options = {
                field: getattr(self, f"auth_{field}")
                for field in (
                    "issuer",
                    "audience",
                    "jwks_url",
                    "algorithms",
                    "user_claim",
                    "user_id_prefix",
                    "required_scopes",
                    "hs256_secret",
                    "hs256_next_secret",
                )
            }
            algorithms_set = "auth_algorithms" in self.model_fields_set
            return [single_issuer_provider(options, algorithms_set)]
        mixed = sorted(_SINGLE_ISSUER_FIELDS & self.model_fields_set)
        if mixed:
            names = ", ".join(env_name(field) for field in mixed)
            raise ValueError(
                f"BROKER_AUTH_ISSUERS replaces {names}: set each provider's values in the "
                "list and unset the single-issuer variables"
            )
        issuer_list_rules(self.auth_issuers)
        return list(self.auth_issuers)

    @property
    def identity_providers(self) -> list[ProviderConfig]:
        """Every trusted provider, in either configuration style, validated."""
        return list(self._providers)

    @property
    def redis_target(self) -> redis.RedisTarget | None:
        """The shared Redis and its shape, validated; None: each replica on its own."""
        return self._redis_target

    @property
    def otel_on(self) -> bool:
        """Whether traces are exported (BROKER_OTEL=on)."""
        return self.otel == "on"

    @property
    def capture_sessions_on(self) -> bool:
        """Whether the capture-session endpoints are served."""
        return self.capture_sessions == "on"

    @property
    def capture_live_on(self) -> bool:
        """Whether the broker receives webhooks, runs the pipelines and serves live feeds."""
        return self.capture_live == "on"

    @property
    def key_source(self) -> str:
        """Where signing keys come from, for `token-broker check`."""
        if self.auth_issuers is not None:
            return f"{len(self.auth_issuers)} identity providers, BROKER_AUTH_ISSUERS"
        return f"{self._providers[0].key_source} keys"


_SINGLE_ISSUER_FIELDS = frozenset(
    {
        "auth_jwks_url",
        "auth_issuer",
        "auth_audience",
        "auth_hs256_secret",
        "auth_hs256_next_secret",
        "auth_algorithms",
        "auth_user_claim",
        "auth_required_scopes",
        "auth_user_id_prefix",
    }
)


def load_settings(**overrides: object) -> Settings:
    """Read settings from the environment, .env and `_FILE` secrets; raise ConfigError with
    every broken rule found."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except SecretFileError as exc:
        raise ConfigError(*exc.problems) from None
    except ValidationError as exc:
        raise ConfigError(*describe_validation_errors(exc)) from None
