"""Where the chain's head is also kept, so a deleted tail is noticed.

A chain proves every entry up to its last one, but not that the last one *is* the last: whoever
can delete rows can delete the newest ones and leave a shorter chain that verifies. So the
writer keeps the head ``(seq, hash)`` elsewhere too: in Redis (``pl:audit:head``, set in the
MULTI that acknowledges each batch) and, at most once a minute, as a line appended to
``<data dir>/audit-anchors``. ``verify`` then requires the table to reach each anchor's seq with
the same hash there. An anchor is only as safe as its place: copy the file elsewhere (backups,
a ticket) where the database's administrators cannot reach it (docs/security.md).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from broker import keys

__all__ = ["ANCHOR_FILE", "Anchor", "AnchorFile", "queue_head", "read_anchors"]

ANCHOR_FILE = "audit-anchors"
"""The anchors' file name in the data directory."""
INTERVAL_S = 60.0


@dataclass(frozen=True)
class Anchor:
    """A head seen once: ``seq`` had ``hash``; ``where`` says which copy told it."""

    seq: int
    hash: str
    where: str


def queue_head(pipe: Any, seq: int, hash_: str, at: float) -> None:
    """Queue the new head on the writer's acknowledging MULTI."""
    pipe.hset(keys.AUDIT_HEAD, mapping={"seq": seq, "hash": hash_, "at": repr(at)})


class AnchorFile:
    """The anchors' file, appended to at most every ``interval_s`` (and on ``flush``)."""

    def __init__(self, path: Path, interval_s: float = INTERVAL_S) -> None:
        self.path = path
        self.interval_s = interval_s
        self._written = 0.0
        self._head: tuple[int, str] | None = None

    def note(self, seq: int, hash_: str, now: float | None = None) -> None:
        """The head after a commit; written when the last line is older than the interval."""
        self._head = (seq, hash_)
        now = time.time() if now is None else now
        if now - self._written >= self.interval_s:
            self.flush(now)

    def flush(self, now: float | None = None) -> None:
        """Append the last head noted (if not written yet)."""
        if self._head is None:
            return
        seq, hash_ = self._head
        now = time.time() if now is None else now
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as file:
            file.write(json.dumps({"seq": seq, "hash": hash_, "at": now}) + "\n")
        self.path.chmod(0o600)
        self._written = now
        self._head = None


def read_anchors(client: redis.Redis | None, path: Path | None) -> list[Anchor]:
    """The anchors to check: Redis's head, and the file's newest line (each when present)."""
    found: list[Anchor] = []
    if client is not None:
        head: dict[bytes, bytes] = client.hgetall(keys.AUDIT_HEAD)
        if head.get(b"seq"):
            found.append(Anchor(int(head[b"seq"]), head[b"hash"].decode(), "redis"))
    if path is not None and path.exists():
        lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if lines:
            last = json.loads(lines[-1])
            found.append(Anchor(int(last["seq"]), str(last["hash"]), str(path)))
    return found
