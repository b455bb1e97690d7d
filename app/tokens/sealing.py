"""AES-GCM sealing of cached tokens, keyed from the VideoDB key by HKDF.

Every replica derives the same key from the same VideoDB key, so no new setting is needed, and
a Redis dump alone holds no usable token.
"""

from __future__ import annotations

import os

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

_NONCE_BYTES = 12
_INFO = b"videodb-token-broker/token-cache/v1"


class CacheSealError(Exception):
    """A cached value could not be opened (tampered, or sealed under another key)."""


class TokenSealer:
    """Seal and open cache values; the Redis key is bound in as associated data."""

    def __init__(self, videodb_api_key: str) -> None:
        key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_INFO).derive(
            videodb_api_key.encode()
        )
        self._aead = AESGCM(key)

    def seal(self, plaintext: bytes, bound_to: bytes) -> bytes:
        """nonce || ciphertext+tag."""
        nonce = os.urandom(_NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, plaintext, bound_to)

    def open(self, sealed: bytes, bound_to: bytes) -> bytes:
        """The plaintext, or CacheSealError."""
        try:
            return self._aead.decrypt(sealed[:_NONCE_BYTES], sealed[_NONCE_BYTES:], bound_to)
        except Exception as exc:  # InvalidTag, short input: the same answer
            raise CacheSealError("cached value does not open") from exc
