"""AES-GCM sealing of cached tokens, with keys derived (HKDF) from BROKER_REDIS_ENCRYPTION_KEY,
or from the VideoDB key when it is unset.

Every replica derives the same key from the same setting, and a Redis dump alone holds no
usable token. Each key has an id, derived too (it says nothing of the key): the Redis keys of
the entries it sealed carry it, so pods holding different keys during a rollout never read or
overwrite each other's entries, and a pod given the previous key reads those sealed with it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

_NONCE_BYTES = 12
_INFO = b"videodb-token-broker/token-cache/v1"
_KEY_ID_INFO = b"videodb-token-broker/token-cache/v1/key-id"
KEY_ID_BYTES = 6  # 12 hex digits: distinct keys, distinct names


class CacheSealError(Exception):
    """A cached value could not be opened (tampered, or sealed under another key)."""


def _derive(material: str, info: bytes, length: int) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info).derive(
        material.encode()
    )


@dataclass(frozen=True)
class SealingKey:
    """One key: its AEAD and the id its entries are named by."""

    key_id: str
    aead: AESGCM

    @classmethod
    def from_material(cls, material: str) -> SealingKey:
        """The key and id a setting's value stands for."""
        key_id = _derive(material, _KEY_ID_INFO, KEY_ID_BYTES).hex()
        return cls(key_id, AESGCM(_derive(material, _INFO, 32)))


class TokenSealer:
    """Seal with the current key, open with it or the previous one; the Redis key is bound in
    as associated data."""

    def __init__(self, key_material: str, previous_material: str | None = None) -> None:
        self.current = SealingKey.from_material(key_material)
        self.previous = None
        if previous_material is not None:
            self.previous = SealingKey.from_material(previous_material)

    @property
    def keys(self) -> tuple[SealingKey, ...]:
        """The keys entries are looked up under, the current first."""
        return (self.current,) if self.previous is None else (self.current, self.previous)

    def seal(self, plaintext: bytes, bound_to: bytes) -> bytes:
        """nonce || ciphertext+tag, under the current key."""
        nonce = os.urandom(_NONCE_BYTES)
        return nonce + self.current.aead.encrypt(nonce, plaintext, bound_to)

    def open(self, sealed: bytes, bound_to: bytes, key: SealingKey | None = None) -> bytes:
        """The plaintext (under `key`, the current one by default), or CacheSealError."""
        aead = (key or self.current).aead
        try:
            return aead.decrypt(sealed[:_NONCE_BYTES], sealed[_NONCE_BYTES:], bound_to)
        except Exception as exc:  # InvalidTag, short input: the same answer
            raise CacheSealError("cached value does not open") from exc
