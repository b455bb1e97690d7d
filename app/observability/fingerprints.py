"""Short, non-reversible fingerprints of secrets, and a scrubber for anything that slips by."""

from __future__ import annotations

import hashlib
import re

FINGERPRINT_HEX_CHARS = 12

# Things that must never reach a log line whole: VideoDB keys and session tokens, and JWTs.
_SECRET_PATTERNS = re.compile(
    r"(?:\b(?:sk|st)-[A-Za-z0-9_\-\.]{6,})"
    r"|(?:\beyJ[A-Za-z0-9_\-]{4,}\.[A-Za-z0-9_\-]*\.[A-Za-z0-9_\-]*)"
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
