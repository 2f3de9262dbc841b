"""Registration changes, into the audit trail: which adapter files were added, changed, removed.

Registrations are files (``adapters/*.yaml``) read when a process starts. The store's writer,
the one process that always runs once per installation, compares their SHA-256 with the ones
it last recorded (``pl:audit:registrations``: file name → digest) when it starts, and records a
``registrations.changed`` event naming the files (never their content) when they differ; the
first start records them all as added.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import redis

from broker.audit.events import record

__all__ = ["REGISTRATIONS_KEY", "note_registrations"]

REGISTRATIONS_KEY = "pl:audit:registrations"
"""Hash: registration file name → SHA-256 of its bytes, as last recorded."""


def _digests(directory: Path) -> dict[str, str]:
    return {
        path.name: hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(directory.glob("*.yaml"))
        if path.is_file()
    }


def note_registrations(client: redis.Redis, directory: Path, who: str = "passerelle") -> bool:
    """Record a change of the registrations in ``directory`` since the last call; True if any."""
    now = _digests(directory) if directory.is_dir() else {}
    raw: dict[bytes, bytes] = client.hgetall(REGISTRATIONS_KEY)
    before = {k.decode(): v.decode() for k, v in raw.items()}
    if now == before:
        return False
    details = {
        "added": sorted(set(now) - set(before)),
        "removed": sorted(set(before) - set(now)),
        "changed": sorted(n for n in set(now) & set(before) if now[n] != before[n]),
        "sha256": {name: digest[:16] for name, digest in now.items()},
    }
    pipe = client.pipeline(transaction=True)
    record(pipe, "registrations.changed", who=who, details=details)
    pipe.delete(REGISTRATIONS_KEY)
    if now:
        pipe.hset(REGISTRATIONS_KEY, mapping=now)
    pipe.execute()
    return True
