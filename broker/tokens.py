"""API tokens: how one is made, recognised and kept (its SHA-256, never the token).

A token reads ``pas_<id>_<secret>``: ``id`` (12 hex digits) is public, printed by
``passerelle tokens list`` and the audit trail, and finds the row; ``secret`` is 256 random bits
(``secrets``). The store keeps the SHA-256 of the whole token: a fast hash is right for a
high-entropy secret (a password needs a slow KDF because people choose guessable ones; nobody
guesses 256 random bits), and the digest read back is compared in constant time. The fixed
prefix lets secret scanners and people recognise a leaked Passerelle token.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

__all__ = ["PREFIX", "NewToken", "digest", "digests_match", "new_token", "token_id"]

PREFIX = "pas_"
_SHAPE = re.compile(r"^pas_([0-9a-f]{12})_[A-Za-z0-9_-]{43}$")


@dataclass(frozen=True, slots=True)
class NewToken:
    """A token just made: shown once, then only its :attr:`digest` is kept.

    Attributes:
        id: the public id.
        token: the whole token, to hand to its holder once.
        digest: its SHA-256 (hex), what the store keeps.
    """

    id: str
    token: str
    digest: str


def digest(token: str) -> str:
    """The SHA-256 (hex) of ``token``, as the store keeps it."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def digests_match(a: str, b: str) -> bool:
    """Whether two digests are equal, compared in constant time."""
    return hmac.compare_digest(a.encode("ascii", "replace"), b.encode("ascii", "replace"))


def new_token() -> NewToken:
    """A fresh random token (256-bit secret) with its id and digest."""
    token_id = secrets.token_hex(6)
    token = f"{PREFIX}{token_id}_{secrets.token_urlsafe(32)}"
    return NewToken(token_id, token, digest(token))


def token_id(presented: str) -> str | None:
    """The id of a presented token of Passerelle's shape, else ``None`` (never looked up)."""
    found = _SHAPE.match(presented)
    return found.group(1) if found else None
