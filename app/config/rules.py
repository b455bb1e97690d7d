"""The rules of single settings that are not an identity provider's (config/providers.py):
each a function of one value, returning it or raising ValueError with the rule, never the
value."""

from __future__ import annotations

import importlib.util
import ipaddress
from urllib.parse import urlsplit

from pydantic import SecretStr

MIN_SHARED_SECRET_BYTES = 32
MIN_KEY_CHARS = 8  # 'sk-' and a little: real keys are far longer; this catches 'sk-' alone
PLACEHOLDER_KEY = "sk-replace-me"  # .env.example's, copied and never filled in
_SENDABLE_MIN, _SENDABLE_MAX = 0x21, 0x7E  # visible ASCII: what an HTTP header value can carry
OTEL_MODULES = ("opentelemetry.sdk", "opentelemetry.exporter.otlp.proto.http")


def split_commas(value: object) -> object:
    """A comma-separated variable as a list of its non-empty items."""
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


def videodb_key(value: SecretStr) -> SecretStr:
    """A VideoDB secret key that can travel in a header."""
    raw = value.get_secret_value()
    if any(c.isspace() for c in raw):
        # Most often a newline kept from a secret file (`kubectl create secret --from-file`)
        raise ValueError("holds whitespace (a trailing newline from a file?); remove it")
    if not all(_SENDABLE_MIN <= ord(c) <= _SENDABLE_MAX for c in raw):
        # It travels in an HTTP header: anything outside visible ASCII cannot be sent.
        raise ValueError("holds a character that is not visible ASCII (non-ASCII or control)")
    if raw == PLACEHOLDER_KEY:
        raise ValueError("is still the placeholder from .env.example: set your VideoDB secret key")
    if not raw.startswith("sk-"):
        raise ValueError("must be a VideoDB secret key starting with 'sk-'")
    if len(raw) < MIN_KEY_CHARS:
        raise ValueError(
            f"is too short for a VideoDB secret key ('sk-' and {MIN_KEY_CHARS - 3}+ more)"
        )
    return value


def shared_secret(value: SecretStr | None) -> SecretStr | None:
    """A secret (an HS256 secret, a Redis encryption key) long enough to resist guessing."""
    if value is not None and len(value.get_secret_value().encode()) < MIN_SHARED_SECRET_BYTES:
        raise ValueError(f"must be at least {MIN_SHARED_SECRET_BYTES} bytes")
    return value


def exact_origins(value: list[str]) -> list[str]:
    """Browser origins, each exact: no wildcard, path or trailing slash."""
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


def proxy_networks(value: list[str]) -> list[str]:
    """Addresses or CIDR networks."""
    for entry in value:
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError:
            raise ValueError("each entry must be an IP address or CIDR network") from None
    return value


def rate(value: str) -> str:
    """A rate the limits library reads, such as 30/minute or 5/second;100/hour."""
    from limits import parse_many

    try:
        if not parse_many(value):
            raise ValueError
    except ValueError:
        raise ValueError("must look like '30/minute' or '5/second;100/hour'") from None
    return value


def tracing_installed(value: str) -> str:
    """BROKER_OTEL=on needs the [otel] extra, found without importing it."""
    if value == "on" and not all(map(_installed, OTEL_MODULES)):
        raise ValueError(
            "on needs the tracing packages: pip install 'videodb-token-broker[otel]' "
            "(the container image has them)"
        )
    return value


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # its parent package is missing
        return False
