"""Fingerprints in place of secrets: short, stable, distinct; and the scrubber that replaces
any key, session token or JWT that would otherwise reach a log line."""

from __future__ import annotations

import hashlib
import json

import pytest

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


@pytest.mark.parametrize(
    ("line", "secret"),
    [
        ('{"path":"/x\\nst-LEAKTOKEN123456"}', "st-LEAKTOKEN123456"),  # after a JSON \n
        ('{"ua":"x\\t' + JWT + '"}', JWT),  # after a JSON \t
        ('{"path":"/tokenst-LEAKTOKEN123456"}', "st-LEAKTOKEN123456"),  # after a word character
        ('{"m":"key sk-ab+cd/ef=gh+ij"}', "sk-ab+cd/ef=gh+ij"),  # a key with + / =
        ('{"m":"key sk-a+/=$%&*()~!b"}', "sk-a+/=$%&*()~!b"),  # any visible ASCII
        ('{"m":"key sk-ab\\"cd\\\\ef12"}', 'sk-ab\\"cd\\\\ef12'),  # ... escaped quote, backslash
        ('{"m":"xsk-live0123456789"}', "sk-live0123456789"),
        ('{"m":"x9st-0123456"}', "st-0123456"),  # after a digit: short ones too
    ],
    ids=[
        "newline",
        "tab",
        "word",
        "plus_slash_equals",
        "visible_ascii",
        "escapes",
        "word_key",
        "digit",
    ],
)
def test_secrets_are_scrubbed_whatever_comes_before_or_inside_them(line: str, secret: str) -> None:
    cleaned = scrub(line)
    assert secret not in cleaned
    assert fingerprint(secret) in cleaned
    assert json.loads(cleaned)  # still one JSON object: no quote taken, no escape cut


def test_what_follows_a_secret_in_a_json_line_is_left_alone() -> None:
    line = '{"a":"st-abcdefghij","b":"next","c":["eyJhbGciOiJSUzI1NiJ9.eyJ4IjoxfQ.c2ln"]}'
    cleaned = json.loads(scrub(line))
    assert cleaned["b"] == "next"
    assert cleaned["a"].startswith("[redacted sha256:")
    assert cleaned["c"][0].startswith("[redacted sha256:")


def test_a_jwt_cut_short_before_its_signature_is_scrubbed_too() -> None:
    header_and_claims = JWT.rsplit(".", 1)[0]
    cleaned = scrub(f'{{"user_agent":"{header_and_claims}"}}')
    assert header_and_claims not in cleaned
    assert json.loads(cleaned)["user_agent"].startswith("[redacted sha256:")


@pytest.mark.parametrize(
    "text",
    [
        "cognito-idp.us-east-1.amazonaws.com",
        "https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_AbCdEf123/.well-known/jwks.json",
        "ap-southeast-2_XyZ123456",
        "Access-Control-Request-Method, Last-Event-ID",
        "request-context",
    ],
)
def test_words_that_end_in_s_before_a_hyphen_stay_readable(text: str) -> None:
    """Without a word boundary, `st-`/`sk-` after a letter needs a dotless run of 12: an AWS
    region (an identity provider's host, in every identity log line) is no secret."""
    assert scrub(text) == text
