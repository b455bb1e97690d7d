"""URL rules shared by the settings and the key fetcher: https only, loopback excepted."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit


def is_loopback_host(host: str | None) -> bool:
    """True for localhost and loopback addresses, where plain HTTP is tolerated."""
    if not host:
        return False
    if host.lower() in {"localhost", "localhost."} or host.lower().endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def require_secure_url(value: str) -> str:
    """Refuse anything but https://, except for loopback hosts."""
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - parsed for its ValueError on a port that is no port
    except ValueError:
        raise ValueError("must be an absolute http(s) URL") from None
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise ValueError("must be an absolute http(s) URL")
    if parts.username or parts.password:
        raise ValueError("must not carry credentials in the URL")
    if parts.scheme != "https" and not is_loopback_host(parts.hostname):
        raise ValueError("must use https:// (plain http is allowed for loopback hosts only)")
    return value


def host_of(url: str | None) -> str | None:
    """The host name of a URL, lower-cased; None when there is none."""
    return urlsplit(url).hostname if url else None
