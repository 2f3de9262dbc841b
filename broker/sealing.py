"""Sealing: message bodies encrypted at rest with AES-GCM, under a ring of data keys.

A sealed body is ``MAGIC | version | key-id length | key id | 96-bit nonce | ciphertext+tag``.
``MAGIC`` starts with 0xFF, a byte no UTF-8 text, JSON or HL7 v2 message starts with, so a body
written before encryption was turned on is told apart and read as it is (``open`` returns it
unchanged). The associated data names the record and the field the body belongs to
(``envelope id`` + ``raw``): a body copied onto another record fails authentication instead of
being read as that record's.

The key ring's first key seals; every key of the ring opens. Rotation adds a new first key
(``passerelle keys rotate``); ``passerelle keys reencrypt`` then moves stored bodies to it, after
which an old key may be removed. A body naming a key the ring lacks is a ``DataKeyError`` naming
that key id; a body that fails authentication is a ``SealedDataError``: never garbage.

One ring per process, named at start (``broker.datakeys.use_later(settings)``); encryption
off (``PASSERELLE_DATA_ENCRYPTION=off``) installs none, and then ``seal`` returns bodies as they
are while ``open`` still reads sealed ones it has a key for.

Usage::

    blob = sealing.seal(raw, envelope_id, "raw")
    raw = sealing.open(blob, envelope_id, "raw")
"""

from __future__ import annotations

import base64
import os
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from broker.errors import DataKeyError, SealedDataError

__all__ = [
    "MAGIC",
    "NONCE_BYTES",
    "TEXT_PREFIX",
    "KeyRing",
    "active",
    "as_text",
    "defer",
    "install",
    "is_sealed",
    "key_id_of",
    "open",
    "open_text",
    "ready",
    "seal",
    "seal_text",
]

MAGIC = b"\xffPL"
"""The first bytes of a sealed body (0xFF starts no UTF-8 text, JSON or HL7 v2 message)."""
VERSION = 1
NONCE_BYTES = 12
TEXT_PREFIX = "plsealed1:"
"""A sealed body in a text column (the store's ``canonical``): this prefix then base64."""
_HEADER = len(MAGIC) + 2


@dataclass(frozen=True)
class KeyRing:
    """Data keys by id; ``current`` seals, every key opens.

    Args:
        keys: key id → 32-byte AES-256 key, the current key first.
    """

    keys: dict[str, bytes]

    def __post_init__(self) -> None:
        if not self.keys:
            msg = "the data key ring is empty; configure at least one key"
            raise DataKeyError(msg)
        for key_id, key in self.keys.items():
            if not 0 < len(key_id.encode()) < 256 or not key_id.isascii():
                msg = f"the data key id {key_id!r} must be 1 to 255 ASCII characters"
                raise DataKeyError(msg, key_id)
            if len(key) != 32:
                msg = f"the data key {key_id} is {len(key)} bytes; AES-256 needs 32"
                raise DataKeyError(msg, key_id)
        object.__setattr__(self, "_ciphers", {k: AESGCM(v) for k, v in self.keys.items()})
        object.__setattr__(self, "_ids", {k: k.encode() for k in self.keys})

    @property
    def current(self) -> str:
        """The id of the key new bodies are sealed with."""
        return next(iter(self.keys))

    def seal(self, body: bytes, record: str, field: str) -> bytes:
        """Encrypt ``body`` for ``record``'s ``field`` with the current key."""
        key_id = self.current
        kid: bytes = self._ids[key_id]  # type: ignore[attr-defined]
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._ciphers[key_id].encrypt(nonce, body, _aad(record, field))  # type: ignore[attr-defined]
        return b"".join((MAGIC, bytes((VERSION, len(kid))), kid, nonce, sealed))

    def open(self, blob: bytes, record: str, field: str) -> bytes:
        """Decrypt a sealed body of ``record``'s ``field``.

        Raises:
            DataKeyError: the body names a key the ring lacks (its id is in the message).
            SealedDataError: the body was altered, truncated or sealed for another record.
        """
        key_id, nonce, sealed = _parse(blob, record, field)
        cipher = self._ciphers.get(key_id)  # type: ignore[attr-defined]
        if cipher is None:
            msg = (
                f"the {field} of {record} is sealed with data key {key_id}, which is not "
                "configured; add that key to the ring (PASSERELLE_DATA_KEY_FILE) to read it"
            )
            raise DataKeyError(msg, key_id)
        try:
            return bytes(cipher.decrypt(nonce, sealed, _aad(record, field)))
        except InvalidTag as exc:
            msg = (
                f"the {field} of {record} fails authentication with data key {key_id}: it was "
                "altered, truncated or copied from another record"
            )
            raise SealedDataError(msg) from exc


def _aad(record: str, field: str) -> bytes:
    return f"passerelle\x00{record}\x00{field}".encode()


def _parse(blob: bytes, record: str, field: str) -> tuple[str, bytes, bytes]:
    """Key id, nonce and ciphertext+tag of a sealed body."""
    if len(blob) < _HEADER or blob[len(MAGIC)] != VERSION:
        version = blob[len(MAGIC)] if len(blob) > len(MAGIC) else None
        msg = f"the {field} of {record} has an unknown sealed format (version {version})"
        raise SealedDataError(msg)
    size = blob[len(MAGIC) + 1]
    start = _HEADER + size
    if len(blob) < start + NONCE_BYTES + 16:
        msg = f"the {field} of {record} is a truncated sealed body"
        raise SealedDataError(msg)
    key_id = blob[_HEADER:start].decode("ascii", "replace")
    return key_id, blob[start : start + NONCE_BYTES], blob[start + NONCE_BYTES :]


def is_sealed(body: bytes | str) -> bool:
    """Whether ``body`` (bytes, or the text form) is sealed rather than written in clear."""
    if isinstance(body, str):
        return body.startswith(TEXT_PREFIX)
    return body[: len(MAGIC)] == MAGIC


def key_id_of(body: bytes | str) -> str | None:
    """The id of the key a sealed body was sealed with; ``None`` for a body in clear."""
    if isinstance(body, str):
        if not body.startswith(TEXT_PREFIX):
            return None
        body = base64.b64decode(body[len(TEXT_PREFIX) :])
    if body[: len(MAGIC)] != MAGIC:
        return None
    return _parse(body, "?", "?")[0]


_ring: KeyRing | None = None
_installed = False
_loader: Callable[[], KeyRing | None] | None = None


def install(ring: KeyRing | None) -> None:
    """Make ``ring`` this process's key ring; ``None``: encryption off (bodies written in clear)."""
    global _ring, _installed
    _ring, _installed = ring, True


def defer(loader: Callable[[], KeyRing | None]) -> None:
    """Load this process's key ring with ``loader`` when a body is first sealed or opened.

    Entry points name their settings' keys this way: a command that never touches a body
    never needs a key (``serve`` makes one on a fresh install after reading its settings).
    """
    global _installed, _loader
    _installed, _loader = False, loader


def ready() -> bool:
    """Whether this process was given its key ring, or how to load it (``install``, ``defer``)."""
    return _installed or _loader is not None


def active() -> KeyRing | None:
    """This process's key ring, loaded on first use (``defer``).

    Raises:
        DataKeyError: the process was given neither a ring nor a way to load one; or loading
            it failed (no key configured, a malformed key file).
    """
    if not _installed:
        if _loader is None:
            msg = (
                "this process has no data key ring: its entry point must load one "
                "(broker.datakeys.use or use_later) before a body is sealed or opened"
            )
            raise DataKeyError(msg)
        install(_loader())
    return _ring


def seal(body: bytes, record: str, field: str) -> bytes:
    """``body`` sealed with the current key, or as it is when encryption is off."""
    ring = active()
    return body if ring is None else ring.seal(body, record, field)


def open(blob: bytes, record: str, field: str) -> bytes:
    """The body ``blob`` holds: opened if sealed, as it is if written in clear (before upgrade).

    Raises:
        DataKeyError: sealed with a key this process lacks, or no key ring while one is needed.
        SealedDataError: altered, truncated or sealed for another record.
    """
    if blob[: len(MAGIC)] != MAGIC:
        return blob
    ring = active()
    if ring is None:
        key_id = _parse(blob, record, field)[0]
        msg = (
            f"the {field} of {record} is sealed with data key {key_id} but encryption is off "
            "and no data key is configured; configure the key ring to read it"
        )
        raise DataKeyError(msg, key_id)
    return ring.open(blob, record, field)


def seal_text(text: str, record: str, field: str) -> str:
    """``text`` sealed for a text column (``TEXT_PREFIX`` + base64), or as it is when off."""
    ring = active()
    if ring is None:
        return text
    return TEXT_PREFIX + base64.b64encode(ring.seal(text.encode(), record, field)).decode()


def as_text(blob: bytes) -> str:
    """A sealed body in its text form, without opening it (copied into a JSON record)."""
    return TEXT_PREFIX + base64.b64encode(blob).decode()


def open_text(value: str, record: str, field: str) -> str:
    """The text a text column holds: opened if sealed, as it is if written in clear."""
    if not value.startswith(TEXT_PREFIX):
        return value
    return open(base64.b64decode(value[len(TEXT_PREFIX) :]), record, field).decode()
