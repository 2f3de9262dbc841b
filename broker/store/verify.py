"""The audit chain's check (``passerelle audit verify``): walk the chain from its first entry and name the first fault.

Each entry is checked in ``seq`` order against what the key says it must be:

- ``deleted``: a ``seq`` is missing (the entries between are gone);
- ``reordered``: the entry verifies only at another place (its ``prev`` is another entry's hash);
- ``altered``: its hash does not match its content (a column was changed);
- ``broken``: its own hash holds but its ``prev`` is not the entry before's (that one was
  replaced, or rows were renumbered to hide a deletion);
- ``truncated``: the chain ends before an anchor's head, or differs from it there
  (``broker.audit.anchor``): its newest entries were deleted.

A chain that starts past entry 1 was pruned by retention (``broker.store.pruning``) or lost its
first entries. It holds only if an ``audit.pruned`` entry of the chain (checked like the rest)
vouches for the gap: it removed entries up to at least the one before the first kept, and the
``prev`` of the entry after its range is the hash it recorded. Else the gap is ``deleted``. An
anchor older than the first kept entry is not checked (it was pruned too).

Nothing is repaired: the verdict names the first fault, the operator investigates from there.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import sqlalchemy as sa

from broker.audit.anchor import Anchor
from broker.audit.chain import GENESIS, link
from broker.audit.events import PRUNED
from broker.store.schema import audit

__all__ = ["Problem", "Prune", "Verdict", "verify"]

Problem = Literal["deleted", "reordered", "altered", "broken", "truncated"]


@dataclass(frozen=True)
class Verdict:
    """What ``verify`` found.

    Attributes:
        ok: the chain is intact up to its head and every anchor.
        entries: how many entries were checked.
        head_seq: the last entry's seq (0: none).
        head_hash: the last entry's hash.
        first_bad: the first seq at fault (``None`` when intact).
        problem: which fault.
        reason: one sentence that says what was found.
        anchors: the anchors checked (``where: seq``).
        first_seq: the first entry kept (past 1 once pruned).
        pruned: each ``audit.pruned`` entry of the chain, in words, oldest first.
    """

    ok: bool
    entries: int
    head_seq: int
    head_hash: str
    first_bad: int | None = None
    problem: Problem | None = None
    reason: str = ""
    anchors: list[str] = field(default_factory=list)
    first_seq: int = 1
    pruned: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return asdict(self)


@dataclass(frozen=True)
class Prune:
    """An ``audit.pruned`` entry: it removed entries ``first``..``last``, the last of which had
    ``last_hash``."""

    seq: int
    at: float
    first: int
    last: int
    last_hash: str

    @classmethod
    def of(cls, entry: Any) -> Prune | None:
        """The prune an entry tells of (``None``: another action, or details not a prune's)."""
        if entry["action"] != PRUNED:
            return None
        try:
            facts = json.loads(entry["details"])
            return cls(
                int(entry["seq"]),
                float(entry["at"]),
                int(facts["first"]),
                int(facts["last"]),
                str(facts["last_hash"]),
            )
        except (ValueError, KeyError, TypeError):
            return None

    def __str__(self) -> str:
        day = datetime.fromtimestamp(self.at, UTC).date().isoformat()
        return (
            f"entries {self.first}–{self.last} pruned on {day} by retention "
            f"(vouched by entry {self.seq})"
        )


def _gap(first: int, last: int) -> str:
    return f"entry {first} is" if first == last else f"entries {first}–{last} are"


def _written_at(connection: sa.Connection, prev: str) -> int | None:
    """The seq right after the entry whose hash is ``prev`` (where an entry was written)."""
    found = connection.scalar(sa.select(audit.c.seq).where(audit.c.hash == prev).limit(1))
    return int(found) + 1 if found is not None else None


def verify(engine: sa.Engine, key: bytes, anchors: list[Anchor] | None = None) -> Verdict:
    """Check the whole chain in ``engine``'s store, then its start against its prunes and its
    head against ``anchors``."""
    checked = [f"{a.where}: {a.seq}" for a in anchors or []]
    expected_seq, prev, count, start = 1, GENESIS, 0, 1
    heads: dict[int, str] = {}
    wanted = {a.seq for a in anchors or []}
    prunes: list[Prune] = []
    follows: dict[int, str] = {}  # seq → prev, of the entries right after a prune's range
    said: list[str] = []

    def bad(seq: int, problem: Problem, reason: str) -> Verdict:
        return Verdict(
            False, count, expected_seq - 1, prev, seq, problem, reason, checked, start, said
        )

    with engine.connect() as connection:
        claimed = connection.execute(sa.select(audit).where(audit.c.action == PRUNED))
        after = {p.last + 1 for p in map(Prune.of, (r._mapping for r in claimed)) if p}
        rows = connection.execution_options(yield_per=1000).execute(
            sa.select(audit).order_by(audit.c.seq)
        )
        for row in rows:
            entry = row._mapping
            seq = int(entry["seq"])
            if count == 0 and seq > 1:  # pruned, or its first entries deleted: decided below
                expected_seq, prev, start = seq, str(entry["prev"]), seq
            if seq != expected_seq:
                rows.close()
                gone = _gap(expected_seq, seq - 1)
                return bad(expected_seq, "deleted", f"{gone} missing: deleted")
            if link(key, str(entry["prev"]), entry) != entry["hash"]:
                rows.close()
                if entry["prev"] != prev:
                    moved = {**dict(entry), "seq": _written_at(connection, str(entry["prev"]))}
                    if (
                        moved["seq"] is not None
                        and link(key, str(entry["prev"]), moved) == entry["hash"]
                    ):
                        reason = f"entry {seq} was written as entry {moved['seq']}: reordered"
                        return bad(seq, "reordered", reason)
                return bad(seq, "altered", f"entry {seq} does not match its hash: altered")
            if entry["prev"] != prev:
                rows.close()
                reason = (
                    f"entry {seq} does not follow entry {seq - 1}: an entry before it was "
                    "replaced, or entries were renumbered after a deletion"
                )
                return bad(seq, "broken", reason)
            if seq in after:
                follows[seq] = prev
            if (prune := Prune.of(entry)) is not None:
                prunes.append(prune)
                said.append(str(prune))
            prev = str(entry["hash"])
            if seq in wanted:
                heads[seq] = prev
            count += 1
            expected_seq += 1
        for prune in prunes:  # the range's end: checked wherever the entry after it is kept
            if prune.last + 1 >= start and prune.last + 1 not in follows:
                found = connection.scalar(
                    sa.select(audit.c.prev).where(audit.c.seq == prune.last + 1)
                )
                follows[prune.last + 1] = str(found)
    head = expected_seq - 1  # from here ``bad`` names the head and its hash
    for prune in prunes:
        if prune.last + 1 >= start and follows[prune.last + 1] != prune.last_hash:
            reason = (
                f"entry {prune.last + 1} does not follow entry {prune.last}, which entry "
                f"{prune.seq} says was pruned last: broken"
            )
            return bad(prune.last + 1, "broken", reason)
    if start > 1 and not any(p.first <= start <= p.last + 1 for p in prunes):
        first = max([p.last + 1 for p in prunes if p.last < start], default=1)
        vouched = f" (the prunes vouch up to entry {first - 1})" if first > 1 else ""
        gone = _gap(first, start - 1)
        return bad(first, "deleted", f"{gone} missing, and no prune vouches: deleted{vouched}")
    for anchor in sorted(anchors or [], key=lambda a: -a.seq):
        if anchor.seq > head:
            reason = (
                f"the chain ends at entry {head} but {anchor.where} saw entry {anchor.seq}: "
                "its tail was truncated"
            )
            return bad(head + 1, "truncated", reason)
        if anchor.seq >= start and heads.get(anchor.seq) != anchor.hash:  # older: pruned
            reason = f"entry {anchor.seq} differs from the head {anchor.where} saw: replaced"
            return bad(anchor.seq, "truncated", reason)
    reason = f"{count} entries intact" + (f" from entry {start}" if start > 1 else "")
    return Verdict(
        True, count, head, prev, anchors=checked, reason=reason, first_seq=start, pruned=said
    )
