"""Short, non-reversible fingerprints of secrets, and a scrubber for anything that slips by."""

from __future__ import annotations

import hashlib
import re

FINGERPRINT_HEX_CHARS = 12

# One character of a key or session token as a rendered log line holds it: anything visible
# (a key may hold any visible ASCII: `+`, `/`, `=`...) but the JSON string's own `"` and `\`,
# or a whole JSON escape (`\"`, `\\`, `\n`, `\u00e9`). A match never takes a closing quote
# nor ends inside an escape, so a scrubbed JSON line is still JSON.
_SECRET_CHAR = r'(?:[!#-\[\]-~]|\\(?:["\\/bfnrt]|u[0-9A-Fa-f]{4}))'  # noqa: S105 - a pattern
_WORDLIKE_CHAR = r"[A-Za-z0-9_\-+=]"

# Things that must never reach a log line whole: VideoDB keys and session tokens, and JWTs,
# whatever comes before them. A word boundary was asked for, and after a JSON escape
# (`\nst-…`, `\teyJ…`) or a word character there is none: they passed whole.
# - After anything but a letter (a digit, `_`, punctuation, a JSON escape such as `\n`): a
#   key or token of 6 characters or more.
# - After a letter, where many words end in s (`us-east-1`, `Last-Event-ID`, `first-class`):
#   a run of at least 12 key characters without a dot or a slash first
#   (`tokenst-LEAKTOKEN123456`), so that a Cognito host (`cognito-idp.us-east-1.amazonaws.com`)
#   and its JWKS URL (`/us-east-1_AbCdEf123/.well-known/jwks.json`) stay readable.
# - A JWT after anything, and cut short too (its claims show without the signature).
_SECRET_PATTERNS = re.compile(
    rf"(?:(?:(?<![A-Za-z])|(?<=\\[bfnrt]))(?:sk|st)-{_SECRET_CHAR}{{6,}})"
    rf"|(?:(?:sk|st)-{_WORDLIKE_CHAR}{{12}}{_SECRET_CHAR}*)"
    r"|(?:eyJ[A-Za-z0-9_\-]{4,}\.[A-Za-z0-9_\-]*(?:\.[A-Za-z0-9_\-]*)?)"
)


def fingerprint(secret: str) -> str:
    """A prefix of the SHA-256 of the secret: enough to correlate, useless to replay."""
    digest = hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()
    return f"sha256:{digest[:FINGERPRINT_HEX_CHARS]}"


def scrub(text: str) -> str:
    """Replace every secret-looking substring with its fingerprint."""
    if "sk-" not in text and "st-" not in text and "eyJ" not in text:
        return text
    return _SECRET_PATTERNS.sub(lambda m: f"[redacted {fingerprint(m.group(0))}]", text)
