"""The chain's arithmetic: one entry's canonical form, and the link that seals it to the last.

Each entry's ``hash`` is ``HMAC-SHA256(key, prev || "\n" || canonical JSON of the entry)``,
where ``prev`` is the previous entry's hash (``GENESIS`` for the first) and the entry is every
column but ``prev`` and ``hash`` (its ``seq`` included, so an entry moved to another place no
longer verifies there). Canonical JSON: a JSON object of ``FIELDS`` in that order, compact,
UTF-8, as pydantic-core (Rust) writes it, ``targets`` and ``details`` being the JSON texts the
table holds (so ``verify`` hashes the stored bytes, it never re-serialises them); floats are
written shortest-first and read back exactly from SQLite's REAL and PostgreSQL's double
precision. pydantic-core rather than ``json.dumps``: a sixth of the time, and the store's
writer hashes one entry per delivered message.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
from typing import Any, TypedDict

import pydantic_core

__all__ = ["FIELDS", "GENESIS", "Entry", "canonical", "dumps", "keyed", "link", "seal"]

GENESIS = "0" * 64
"""The ``prev`` of the first entry."""
FIELDS = ("seq", "record", "at", "actor", "action", "targets", "reason", "details")
"""The columns an entry's hash covers, as they are stored (``targets``, ``details``: JSON)."""


class Entry(TypedDict):
    """One audit entry as the store holds it (``broker.store.schema.audit``)."""

    seq: int
    record: str
    at: float
    actor: str
    action: str
    targets: str
    reason: str
    details: str
    prev: str
    hash: str


def dumps(value: Any) -> str:
    """Compact JSON text of ``value`` (what ``targets`` and ``details`` are stored as)."""
    return pydantic_core.to_json(value).decode()


def canonical(entry: Any) -> bytes:
    """The bytes an entry's hash covers: its ``FIELDS``, in that order, as compact JSON."""
    return pydantic_core.to_json({name: entry[name] for name in FIELDS})


@functools.lru_cache(maxsize=4)
def keyed(key: bytes) -> hmac.HMAC:
    """An HMAC-SHA256 of ``key`` over nothing yet: a ``copy()`` of it costs a third less than a
    new HMAC (the key's pads are hashed once), and the writer makes two a message."""
    return hmac.new(key, digestmod=hashlib.sha256)


def seal(key: bytes, prev: str, entry: bytes) -> str:
    """The hash that seals an entry whose canonical bytes are ``entry`` after ``prev``."""
    mac = keyed(key).copy()
    mac.update(b"%s\n%s" % (prev.encode(), entry))
    return mac.hexdigest()


def link(key: bytes, prev: str, entry: Any) -> str:
    """The hash that seals ``entry`` after the entry whose hash is ``prev``."""
    return seal(key, prev, canonical(entry))
