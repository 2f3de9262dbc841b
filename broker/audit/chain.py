"""The chain's arithmetic: one entry's canonical form, and the link that seals it to the last.

Each entry's ``hash`` is ``HMAC-SHA256(key, prev || "\\n" || canonical JSON of the entry)``,
where ``prev`` is the previous entry's hash (``GENESIS`` for the first) and the entry is every
column but ``prev`` and ``hash`` (its ``seq`` included, so an entry moved to another place no
longer verifies there). Canonical JSON: keys sorted, no spaces, UTF-8, floats as Python's
shortest ``repr`` (both SQLite's REAL and PostgreSQL's double precision give them back exactly).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any, TypedDict

__all__ = ["FIELDS", "GENESIS", "Entry", "canonical", "dumps", "link"]

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
    """Canonical JSON text of ``value`` (what ``targets`` and ``details`` are stored as)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def canonical(entry: Any) -> bytes:
    """The bytes an entry's hash covers: its ``FIELDS`` as canonical JSON."""
    return dumps({name: entry[name] for name in FIELDS}).encode()


def link(key: bytes, prev: str, entry: Any) -> str:
    """The hash that seals ``entry`` after the entry whose hash is ``prev``."""
    return hmac.new(key, prev.encode() + b"\n" + canonical(entry), hashlib.sha256).hexdigest()
