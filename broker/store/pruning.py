"""The audit trail's retention: vouch for the chain's oldest entries, then remove them.

A chain cannot just lose its first entries: ``verify`` would take the gap for a deletion, and a
gap nobody accounts for is one. So a prune first appends, on the appender's path and lock
(``broker.store.ledger``), one ``audit.pruned`` entry naming what goes: the first and last seq,
how many, the hash of the last (the ``prev`` of the first entry kept) and the time bound. It is
linked and sealed like any entry, so nobody without the key can forge one to excuse a deletion,
and ``verify`` accepts a chain that starts past 1 only where such an entry vouches for the gap.
Then the entries go, oldest first, ``batch`` per transaction; a crash in between leaves the
range's newer part, still vouched for and finished by the next prune.

What goes: the run of entries from the chain's first whose ``at`` is before the cutoff (an entry
written late with an older time waits for the ones before it). The run is checked first as
``verify`` checks it (no gap, every link): a prune never erases the evidence of tampering; it
refuses (``audit.prune_refused``, logged) and leaves the fault for ``passerelle audit verify``.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa

from broker.audit.chain import GENESIS, link
from broker.audit.events import PRUNED
from broker.audit.key import load_key
from broker.log import get_logger
from broker.settings import Settings
from broker.store.ledger import SYSTEM, Ledger, head, lock
from broker.store.schema import audit

__all__ = ["Vouched", "prune", "vouch"]

log = get_logger(__name__)


@dataclass(frozen=True)
class Vouched:
    """What a prune's ``audit.pruned`` entry vouches for: entries ``first``..``last`` may go.

    Attributes:
        first: the oldest entry to remove (the chain's first).
        last: the newest entry to remove (the last one older than the retention).
        head: the ``audit.pruned`` entry's ``(seq, hash)``, the chain's new head.
    """

    first: int
    last: int
    head: tuple[int, str]


def _fault(connection: sa.Connection, key: bytes, first: int, last: int) -> str | None:
    """The first fault of entries ``first``..``last`` and the link to the next, in words."""
    expected, prev = first, GENESIS if first == 1 else None
    statement = (
        sa.select(audit)
        .where(audit.c.seq.between(first, last + 1))
        .order_by(audit.c.seq)
        .execution_options(yield_per=1000)  # on the statement: the connection appends next
    )
    with connection.execute(statement) as rows:
        for row in rows:
            entry = row._mapping
            seq = int(entry["seq"])
            if seq != expected:
                return f"entry {expected} is missing"
            if link(key, str(entry["prev"]), entry) != entry["hash"]:
                return f"entry {seq} does not match its hash"
            if prev is not None and entry["prev"] != prev:
                return f"entry {seq} does not follow entry {seq - 1}"
            prev, expected = str(entry["hash"]), seq + 1
    return None


def vouch(
    connection: sa.Connection, ledger: Ledger, *, cutoff: float, now: float, retention_s: int
) -> Vouched | None:
    """Append the ``audit.pruned`` entry for the entries older than ``cutoff``, if any.

    Args:
        connection: a transaction; the chain's lock is held from here to its end.
        ledger: the appender (with the audit key).
        cutoff: entries whose ``at`` is before this may go (epoch seconds).
        now: the prune entry's time.
        retention_s: the setting, recorded with the entry.

    Returns:
        The range to remove and the new head, or ``None`` (nothing old enough, or a fault).
    """
    lock(connection)
    newest = head(connection)
    if newest is None:
        return None
    first = int(connection.scalar(sa.select(sa.func.min(audit.c.seq))) or 0)
    young = connection.scalar(
        sa.select(audit.c.seq).where(audit.c.at >= cutoff).order_by(audit.c.seq).limit(1)
    )
    last = newest[0] if young is None else int(young) - 1
    if last < first:
        return None
    fault = _fault(connection, ledger.key, first, last)
    if fault is not None:
        log.error("audit.prune_refused", seq_first=first, seq_last=last, reason=fault)
        return None
    last_hash = connection.scalar(sa.select(audit.c.hash).where(audit.c.seq == last))
    details = {
        "first": first,
        "last": last,
        "count": last - first + 1,
        "last_hash": str(last_hash),
        "before": cutoff,
        "retention_s": retention_s,
    }
    entry = {
        "record": f"pruned:{newest[0] + 1}",
        "at": now,
        "actor": SYSTEM,
        "action": PRUNED,
        "targets": {},
        "reason": "retention",
        "details": details,
    }
    appended = ledger.append(connection, [entry])
    if appended is None:  # pragma: no cover - the record is new by construction
        return None
    return Vouched(first, last, appended)


def prune(
    engine: sa.Engine,
    settings: Settings,
    *,
    now: float,
    batch: int,
    key: bytes | None = None,
) -> int:
    """Vouch for the entries older than ``retention_audit_s``, then delete them; how many went.

    Args:
        engine: the store.
        settings: ``retention_audit_s``, and where the audit key is when ``key`` is not given.
        now: the present (epoch seconds).
        batch: entries deleted per transaction.
        key: the audit key (the writer's); else loaded, only when something is old enough.

    Raises:
        ConfigurationError: entries are old enough to go, and no audit key is configured.
    """
    cutoff = now - settings.retention_audit_s
    with engine.connect() as connection:
        oldest = connection.scalar(sa.select(audit.c.at).order_by(audit.c.seq).limit(1))
    if oldest is None or oldest >= cutoff:
        return 0
    ledger = Ledger(key if key is not None else load_key(settings))
    with engine.begin() as connection:
        vouched = vouch(
            connection, ledger, cutoff=cutoff, now=now, retention_s=settings.retention_audit_s
        )
    if vouched is None:
        return 0
    removed = 0
    for start in range(vouched.first, vouched.last + 1, batch):
        end = min(start + batch - 1, vouched.last)
        with engine.begin() as connection:
            removed += connection.execute(
                audit.delete().where(audit.c.seq.between(start, end))
            ).rowcount
    log.info("audit.pruned", seq_first=vouched.first, seq_last=vouched.last, entry=vouched.head[0])
    return removed
