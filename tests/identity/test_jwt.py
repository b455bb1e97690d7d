"""The fenced python-jose module: key selection, algorithms and JWKS parsing."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jose import jwk, jwt

from app.identity.jwt import (
    TokenHeader,
    TokenRejected,
    build_key_ring,
    build_shared_secret_ring,
    decode,
    read_header,
    select_key,
)
from app.sandbox.dev_issuer import SigningKey

ALL = frozenset({"RS256", "PS256", "ES256", "ES384"})


def _rsa(bits: int = 2048) -> tuple[str, dict[str, Any]]:
    key = SigningKey("RS256", bits=bits)
    return key.pem, key.public_jwk()


def _ec(alg: str) -> tuple[str, dict[str, Any]]:
    key = SigningKey(alg)
    return key.pem, key.public_jwk()


def _claims(**extra: Any) -> dict[str, Any]:
    return {"sub": "u", "aud": "aud", "exp": int(time.time()) + 60, **extra}


def _verify(token: str, ring: Any, allowed: frozenset[str] = ALL) -> dict[str, Any]:
    header = read_header(token)
    key = select_key(ring, header, allowed)
    assert key is not None
    return decode(token, key, header, audience="aud", issuer=None, leeway=0)


def test_es256_and_es384_tokens_verify_with_the_matching_curve() -> None:
    pem256, pub256 = _ec("ES256")
    pem384, pub384 = _ec("ES384")
    ring, skipped = build_key_ring(
        {"keys": [{**pub256, "kid": "p256"}, {**pub384, "kid": "p384"}]}, ALL
    )
    assert skipped == 0
    assert set(ring["p256"]) == {"ES256"}
    assert set(ring["p384"]) == {"ES384"}
    token = jwt.encode(_claims(), pem256, algorithm="ES256", headers={"kid": "p256"})
    assert _verify(token, ring)["sub"] == "u"
    es384 = jwt.encode(_claims(), pem384, algorithm="ES384", headers={"kid": "p384"})
    assert _verify(es384, ring)["sub"] == "u"
    swapped = jwt.encode(_claims(), pem256, algorithm="ES256", headers={"kid": "p384"})
    with pytest.raises(TokenRejected):
        _verify(swapped, ring)


def test_ps256_which_python_jose_lacks_is_verified() -> None:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    from tests.forge import b64

    pem, public = _rsa()
    ring, _ = build_key_ring({"keys": [{**public, "kid": "k", "alg": "PS256"}]}, ALL)
    header_b64 = b64(b'{"alg":"PS256","kid":"k"}')
    import json

    payload_b64 = b64(json.dumps(_claims()).encode())
    private = serialization.load_pem_private_key(pem.encode(), password=None)
    assert isinstance(private, rsa.RSAPrivateKey)
    signature = private.sign(
        f"{header_b64}.{payload_b64}".encode(),
        padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32),
        hashes.SHA256(),
    )
    token = f"{header_b64}.{payload_b64}.{b64(signature)}"
    assert _verify(token, ring)["sub"] == "u"
    with pytest.raises(TokenRejected):
        _verify(token[:-4] + "AAAA", ring)
    rs = jwt.encode(_claims(), pem, algorithm="RS256", headers={"kid": "k"})
    with pytest.raises(TokenRejected, match="does not match its key"):
        _verify(rs, ring)  # the JWK declares PS256 only


def test_jwks_entries_that_must_not_be_used_are_skipped() -> None:
    _, public = _rsa()
    _, short = _rsa(1024)
    pem_priv, _ = _rsa()
    private_jwk = jwk.construct(pem_priv, "RS256").to_dict()
    document = {
        "keys": [
            {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"},  # HS confusion: never
            {**public, "kid": "enc", "use": "enc"},
            {**public, "kid": "ops", "key_ops": ["encrypt"]},
            {**short, "kid": "short"},
            {**public, "kid": 5},
            {"kty": "RSA", "kid": "broken", "n": "!!", "e": "AQAB"},
            "not-a-dict",
            {**private_jwk, "kid": "leaked-private"},
            {**public, "kid": "good"},
        ]
    }
    ring, skipped = build_key_ring(document, frozenset({"RS256"}))
    assert set(ring) == {"leaked-private", "good"}
    assert skipped == 7
    # A published private key is used as a public key only.
    assert ring["leaked-private"]["RS256"].is_public()


@pytest.mark.parametrize("document", [None, [], {"keys": "x"}, {"nokeys": []}])
def test_not_a_jwks(document: object) -> None:
    with pytest.raises(ValueError, match="JWKS"):
        build_key_ring(document, ALL)


def test_token_without_kid_uses_the_only_key_and_refuses_ambiguity() -> None:
    pem, public = _rsa()
    _, other = _rsa()
    token = jwt.encode(_claims(), pem, algorithm="RS256")
    single, _ = build_key_ring({"keys": [{**public, "kid": "a"}]}, ALL)
    assert _verify(token, single)["sub"] == "u"
    double, _ = build_key_ring({"keys": [{**public, "kid": "a"}, {**other, "kid": "b"}]}, ALL)
    with pytest.raises(TokenRejected, match="several keys"):
        select_key(double, read_header(token), ALL)
    assert select_key(double, TokenHeader("RS256", "zzz"), ALL) is None


def test_shared_secret_ring_refuses_short_and_verifies_hs256() -> None:
    with pytest.raises(ValueError, match="short"):
        build_shared_secret_ring(b"")
    secret = b"s" * 32
    ring = build_shared_secret_ring(secret)
    token = jwt.encode(_claims(), secret.decode(), algorithm="HS256", headers={"kid": "any"})
    assert _verify(token, ring, frozenset({"HS256"}))["sub"] == "u"


def test_a_ring_of_two_secrets_verifies_either_and_nothing_else() -> None:
    # current and next, while a shared secret rotates: no kid needed, no 401 either side
    current, following = b"c" * 32, b"n" * 32
    ring = build_shared_secret_ring(current, following)
    hs = frozenset({"HS256"})
    for secret in (current, following):
        token = jwt.encode(_claims(), secret.decode(), algorithm="HS256")
        assert _verify(token, ring, hs)["sub"] == "u"
    forged = jwt.encode(_claims(), "x" * 32, algorithm="HS256")
    with pytest.raises(TokenRejected) as info:
        _verify(forged, ring, hs)
    assert info.value.reason == "signature"
    with pytest.raises(ValueError, match="short"):
        build_shared_secret_ring(current, b"")


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({"exp": -100}, "expired"),
        ({"nbf": +100}, "not_yet_valid"),
        ({"iat": +100}, "not_yet_valid"),
        ({"aud": "other"}, "audience"),
        ({"iat": "yesterday"}, "claims"),
    ],
)
def test_claim_failures_have_reasons(claims: dict[str, Any], reason: str) -> None:
    # Times are offsets from now, resolved when the test runs (not when it is collected).
    claims = {
        k: int(time.time()) + v if k in ("exp", "nbf", "iat") and isinstance(v, int) else v
        for k, v in claims.items()
    }
    ring = build_shared_secret_ring(b"s" * 32)
    token = jwt.encode(_claims(**claims), "s" * 32, algorithm="HS256")
    with pytest.raises(TokenRejected) as info:
        _verify(token, ring, frozenset({"HS256"}))
    assert info.value.reason == reason


@pytest.mark.parametrize("claim", ["nbf", "iat"])
def test_a_clock_a_little_ahead_is_within_the_leeway(claim: str) -> None:
    """An identity provider whose clock runs 20 s fast is not refused with 30 s of leeway."""
    ring = build_shared_secret_ring(b"s" * 32)
    token = jwt.encode(_claims(**{claim: int(time.time()) + 20}), "s" * 32, algorithm="HS256")
    header = read_header(token)
    key = select_key(ring, header, frozenset({"HS256"}))
    claims = decode(token, key, header, audience="aud", issuer=None, leeway=30)
    assert claims["sub"] == "u"


def test_issuer_is_required_when_configured() -> None:
    ring = build_shared_secret_ring(b"s" * 32)
    token = jwt.encode(_claims(), "s" * 32, algorithm="HS256")
    header = read_header(token)
    key = select_key(ring, header, frozenset({"HS256"}))
    with pytest.raises(TokenRejected) as info:
        decode(token, key, header, audience="aud", issuer="https://idp", leeway=0)
    assert info.value.reason == "issuer"


_PURE_PYTHON_CRYPTO_PROBE = """
import sys, time
from jose import jwk
from app.identity.jwt import (
    build_key_ring, build_shared_secret_ring, decode, read_header, select_key
)
from tests.forge import attacker_ec_pem, attacker_rsa_pem, sign

claims = {"sub": "u", "aud": "aud", "exp": int(time.time()) + 60}
secret = b"s" * 32
cases = []
for alg, pem in (("RS256", attacker_rsa_pem()), ("ES256", attacker_ec_pem())):
    public = {**jwk.construct(pem, alg).public_key().to_dict(), "kid": alg}
    ring, _ = build_key_ring({"keys": [public]}, frozenset({alg}))
    cases.append((alg, ring, sign(claims, pem, alg, kid=alg)))
cases.append(("HS256", build_shared_secret_ring(secret), sign(claims, secret.decode(), "HS256")))
for alg, ring, token in cases:
    header = read_header(token)
    key = select_key(ring, header, frozenset({alg}))
    assert decode(token, key, header, audience="aud", issuer=None, leeway=0)["sub"] == "u"
    print(alg, type(key).__module__)
print("imported:", sorted(m for m in ("ecdsa", "rsa", "pyasn1") if m in sys.modules))
"""


def test_python_joses_pure_python_crypto_dependencies_are_never_loaded() -> None:
    """python-jose installs ecdsa (the Minerva timing advisory, CVE-2024-23342, which will
    not be fixed) and rsa; with its cryptography extra every key we build is cryptography's,
    so verifying RS256, ES256 and HS256 tokens in a fresh interpreter imports neither."""
    out = subprocess.run(
        [sys.executable, "-c", _PURE_PYTHON_CRYPTO_PROBE],
        cwd=Path(__file__).resolve().parents[2],  # the repository, where `tests` imports
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert out == [
        "RS256 jose.backends.cryptography_backend",
        "ES256 jose.backends.cryptography_backend",
        "HS256 jose.backends.cryptography_backend",
        "imported: []",
    ]


def test_ruff_refuses_python_jose_anywhere_but_its_module() -> None:
    """The fence is a lint rule (ruff's banned-api), not a sentence in docs/security.md."""
    repo = Path(__file__).resolve().parents[2]
    ruff = Path(sys.executable).parent / "ruff"

    def lint(path: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(ruff), "check", "--no-cache", "--stdin-filename", path, "-"],
            input="from jose import jwt\n\nprint(jwt)\n",
            capture_output=True,
            text=True,
            cwd=repo,
        )

    refused = lint("app/web/token_endpoint.py")
    assert refused.returncode == 1
    assert "TID251" in refused.stdout
    assert lint("app/identity/jwt.py").returncode == 0
