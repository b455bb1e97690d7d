"""Fingerprints in place of secrets: short, stable, distinct; and the scrubber that replaces
any key, session token or JWT that would otherwise reach a log line."""

from __future__ import annotations

import hashlib

from app.observability.fingerprints import fingerprint, scrub

JWT = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhZGEifQ.c2lnbmF0dXJl"


def test_a_fingerprint_is_a_short_prefix_of_the_sha256() -> None:
    print_ = fingerprint("st-secret-token")
    assert print_ == "sha256:" + hashlib.sha256(b"st-secret-token").hexdigest()[:12]
    assert fingerprint("st-secret-token") == print_
    assert fingerprint("st-secret-tokeN") != print_


def test_secrets_are_scrubbed_wherever_they_appear() -> None:
    text = f"key sk-live-0123456789 token st-abcdefghij and bearer {JWT} end"
    cleaned = scrub(text)
    for secret in ("sk-live-0123456789", "st-abcdefghij", JWT):
        assert secret not in cleaned
        assert fingerprint(secret) in cleaned
    assert cleaned.startswith("key [redacted sha256:")
    assert cleaned.endswith(" end")


def test_text_without_secrets_is_left_alone() -> None:
    for text in ("user ada asked at 12:00", "ask-me", "st-ab", ""):
        assert scrub(text) == text
