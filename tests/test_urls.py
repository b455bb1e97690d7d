"""URL rules: the key and the signing keys never travel in clear text, loopback excepted."""

from __future__ import annotations

import re

import pytest

from app.urls import host_of, is_loopback_host, require_secure_url


@pytest.mark.parametrize(
    "url",
    [
        "https://idp.example.com",
        "http://127.0.0.1:8080/jwks.json",
        "http://localhost/x",
        "http://[::1]:9/x",
        "http://dev.localhost/",
    ],
)
def test_https_or_loopback_is_accepted(url: str) -> None:
    assert require_secure_url(url) == url


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("http://idp.example.com", "must use https://"),
        ("http://127.0.0.1.example.com/", "must use https://"),  # a name, not the loopback
        ("ftp://idp.example.com", "absolute http(s) URL"),
        ("idp.example.com/jwks", "absolute http(s) URL"),
        ("https://user:pw@idp.example.com", "credentials"),
        ("https://idp.example.com:99999/", "absolute http(s) URL"),
    ],
)
def test_anything_else_is_refused_saying_why(url: str, says: str) -> None:
    with pytest.raises(ValueError, match=re.escape(says)):
        require_secure_url(url)


def test_hosts() -> None:
    assert host_of("https://Cognito-IDP.us-east-1.amazonaws.com/pool") == (
        "cognito-idp.us-east-1.amazonaws.com"
    )
    assert host_of(None) is None
    assert not is_loopback_host(None)
    assert not is_loopback_host("10.0.0.1")
