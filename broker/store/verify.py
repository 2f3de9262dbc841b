"""The audit chain's check (``passerelle audit verify``): walk the chain from its first entry and name the first fault.

Each entry is checked in ``seq`` order against what the key says it must be:

- ``deleted``: a ``seq`` is missing (the entries between are gone);
- ``reordered``: the entry verifies only at another place (its ``prev`` is another entry's hash);
- ``altered``: its hash does not match its content (a column was changed);
- ``broken``: its own hash holds but its ``prev`` is not the entry before's (that one was
  replaced, or rows were renumbered to hide a deletion);
- ``truncated``: the chain ends before an anchor's head, or differs from it there
  (``broker.audit.anchor``): its newest entries were deleted.

Nothing is repaired: the verdict names the first fault, the operator investigates from there.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import sqlalchemy as sa

from broker.audit.anchor import Anchor
from broker.audit.chain import GENESIS, link
from broker.store.schema import audit

__all__ = ["Problem", "Verdict", "verify"]

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
    """

    ok: bool
    entries: int
    head_seq: int
    head_hash: str
    first_bad: int | None = None
    problem: Problem | None = None
    reason: str = ""
    anchors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return asdict(self)


def _written_at(connection: sa.Connection, prev: str) -> int | None:
    """The seq right after the entry whose hash is ``prev`` (where an entry was written)."""
    found = connection.scalar(sa.select(audit.c.seq).where(audit.c.hash == prev).limit(1))
    return int(found) + 1 if found is not None else None


def verify(engine: sa.Engine, key: bytes, anchors: list[Anchor] | None = None) -> Verdict:
    """Check the whole chain in ``engine``'s store, then its head against ``anchors``."""
    checked = [f"{a.where}: {a.seq}" for a in anchors or []]
    expected_seq, prev, count = 1, GENESIS, 0
    heads: dict[int, str] = {}
    wanted = {a.seq for a in anchors or []}

    def bad(seq: int, problem: Problem, reason: str) -> Verdict:
        return Verdict(False, count, expected_seq - 1, prev, seq, problem, reason, checked)

    with engine.connect() as connection:
        rows = connection.execution_options(yield_per=1000).execute(
            sa.select(audit).order_by(audit.c.seq)
        )
        for row in rows:
            entry = row._mapping
            seq = int(entry["seq"])
            if seq != expected_seq:
                rows.close()
                gone = f"{expected_seq}" if seq == expected_seq + 1 else f"{expected_seq}–{seq - 1}"
                return bad(expected_seq, "deleted", f"entry {gone} is missing: deleted")
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
            prev = str(entry["hash"])
            if seq in wanted:
                heads[seq] = prev
            count += 1
            expected_seq += 1
    head = expected_seq - 1
    for anchor in sorted(anchors or [], key=lambda a: -a.seq):
        if anchor.seq > head:
            reason = (
                f"the chain ends at entry {head} but {anchor.where} saw entry {anchor.seq}: "
                "its tail was truncated"
            )
            return Verdict(False, count, head, prev, head + 1, "truncated", reason, checked)
        if heads.get(anchor.seq) != anchor.hash:
            reason = f"entry {anchor.seq} differs from the head {anchor.where} saw: replaced"
            return Verdict(False, count, head, prev, anchor.seq, "truncated", reason, checked)
    return Verdict(True, count, head, prev, anchors=checked, reason=f"{count} entries intact")
