"""The chain's one appender, inside the store's writer: a batch's events become linked entries.

The writer hands over, in the order its records came, the ``aud`` records of the batch and a
disclosure for every delivered attempt (``broker.trail``'s ``att`` records: which subscriber
received which message, of which patient, under which policy). They are linked and inserted in
the writer's own transaction, after its messages (a disclosure's patient is read from the
``messages`` row, the same batch's or an older one), so the chain commits with what it tells.

One appender: ``seq`` is the primary key, so a second writer appending at the same time fails
its transaction instead of forking the chain; and the retention's prune, which appends its
``audit.pruned`` entry from wherever ``purge`` runs (the writer, ``passerelle store purge``),
waits for the writer's transaction (``lock``) instead of failing it. Idempotent: an entry
remembers its ``pl:store`` record (unique), and a batch read again after a crash skips the
records already appended (they are the chain's newest entries).
"""

from __future__ import annotations

import time
from typing import Any, NamedTuple

import pydantic_core
import sqlalchemy as sa

from broker.audit.anchor import ANCHOR_FILE, AnchorFile, queue_head
from broker.audit.chain import FIELDS, GENESIS, dumps, seal
from broker.audit.events import PRUNED, REASON_LIMIT
from broker.audit.key import ensure_key, patient_ref
from broker.settings import Settings
from broker.store.schema import identifiers, messages

__all__ = [
    "LOCK",
    "SYSTEM",
    "Known",
    "Ledger",
    "WriterAudit",
    "disclosure",
    "event",
    "head",
    "lock",
]

SYSTEM = "passerelle"
"""The actor of what the broker does by itself (a delivery, a prune)."""
LOCK = int.from_bytes(b"pl:audit", "big")
"""PostgreSQL's advisory lock (a bigint) that appenders hold until their transaction ends."""
_CHUNK = 500
_REFS = 20_000
"""How many patient references the ledger keeps between batches (a few MB at most)."""
_COLUMNS = (*FIELDS, "prev", "hash")


def event(entry_id: str, fields: dict[Any, Any], now: float) -> dict[str, Any]:
    """The pending entry of an ``aud`` record (``broker.audit.events.record``).

    ``fields`` as Redis gives them (bytes) or already decoded (str keys and values, as a
    reader of batched ``pl:store`` entries hands them over).
    """
    decoded = {
        (k.decode() if isinstance(k, bytes) else str(k)): (
            v.decode("utf-8", "replace") if isinstance(v, bytes) else v
        )
        for k, v in fields.items()
    }

    def text(name: str, default: str = "") -> str:
        value = decoded.get(name)
        return str(value) if value is not None else default

    def json_field(name: str) -> Any:
        value = decoded.get(name) or "{}"
        return value if isinstance(value, dict) else pydantic_core.from_json(value)

    return {
        "record": entry_id,
        "at": float(text("at") or now),
        "actor": text("who", "?")[:256],
        "action": text("act", "?")[:64],
        "targets": json_field("t"),
        "reason": text("why")[:REASON_LIMIT],
        "details": json_field("d"),
    }


def disclosure(entry_id: str, details: dict[str, Any]) -> dict[str, Any]:
    """The pending entry of a delivered attempt (an ``att`` record's parsed ``d``).

    The patient is filled in by ``Ledger.append`` from the stored message.
    """
    targets = {"envelope": str(details["env"]), "subscriber": str(details["sub"])}
    facts = {"digest": str(details.get("digest") or "")}
    # The data-sharing policy the payload was shaped by: ``pol`` = ``policy-id/PURPOSE``.
    policy, _, purpose = str(details.get("pol") or details.get("policy") or "").partition("/")
    if policy:
        targets["policy"] = policy
    if purpose or details.get("purpose"):
        facts["purpose"] = purpose or str(details["purpose"])
    return {
        "record": f"{entry_id}:d",
        "at": float(details["at"]),
        "actor": SYSTEM,
        "action": "message.delivered",
        "targets": targets,
        "reason": "",
        "details": facts,
    }


def lock(connection: sa.Connection) -> None:
    """Hold the chain's head until ``connection``'s transaction ends; call before reading it.

    PostgreSQL: a transaction-level advisory lock. SQLite: a write that changes nothing, which
    takes the database's write lock now rather than at the first insert; before that, the
    head read (outside any transaction, as pysqlite begins one at the first write) could be
    stale by the time the insert runs. The writer takes it once a batch: measured per
    transaction, 85 µs of CPU on PostgreSQL as driver SQL (190 µs through ``sa.func``), 22 µs
    on SQLite, next to the writer's ~0.16 ms per message (``benchmarks/store.py``).
    """
    if connection.dialect.name == "postgresql":
        connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({LOCK})")
    else:
        connection.exec_driver_sql("UPDATE audit SET seq = seq WHERE 0")


def head(connection: sa.Connection) -> tuple[int, str] | None:
    """The chain's newest entry ``(seq, hash)``; ``None`` when it is empty."""
    # Driver SQL: the writer asks once a batch, and SQLAlchemy's statement cost more than it.
    row = connection.exec_driver_sql(
        "SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1"
    ).first()
    return (int(row[0]), str(row[1])) if row is not None else None


class Known(NamedTuple):
    """What a disclosure tells of its message: the ``messages`` row's patient key, event and
    adapter, and the values of its ``identifiers`` rows (a tuple: the writer makes one a
    message, at a quarter of a frozen dataclass's cost)."""

    partition_key: str | None
    event: str | None
    adapter: str
    identifiers: tuple[str, ...] = ()


class Ledger:
    """Links and inserts pending entries after the chain's head.

    Args:
        key: the audit key (``broker.audit.key``).
    """

    def __init__(self, key: bytes) -> None:
        self.key = key
        self._refs: dict[str, str] = {}
        """Identity or identifier value → its reference, across batches (a patient's messages
        come in several), dropped whole at ``_REFS`` entries."""

    def append(
        self,
        connection: sa.Connection,
        pending: list[dict[str, Any]],
        known: dict[str, Known] | None = None,
    ) -> tuple[int, str] | None:
        """Append ``pending`` (in order) on ``connection``'s transaction.

        Args:
            connection: the writer's transaction.
            pending: the entries, in the order their records came.
            known: what the writer's batch already holds of its messages (id → :class:`Known`):
                their disclosures are not looked up again in the tables.

        Returns:
            The new head ``(seq, hash)``, or ``None`` when nothing was appended.
        """
        if not pending:
            return None
        lock(connection)
        # A batch read again (a crash between the commit and the XACK) was the last one the
        # writer committed: its entries, if any, are the chain's newest but for prunes appended
        # since. Reading those by the primary key costs less than looking every record up.
        marker = "?" if connection.dialect.paramstyle == "qmark" else "%s"
        newest = connection.exec_driver_sql(
            f"SELECT record FROM audit WHERE action != {marker} ORDER BY seq DESC LIMIT {marker}",
            (PRUNED, len(pending)),
        )
        seen = {row[0] for row in newest}
        fresh = [p for p in pending if p["record"] not in seen]
        if not fresh:
            return None
        self._patients(connection, fresh, known or {})
        seq, prev = head(connection) or (0, GENESIS)
        rows = []
        for item in fresh:
            seq += 1
            entry = {  # FIELDS, in their order: its JSON is the canonical form (chain.canonical)
                "seq": seq,
                "record": item["record"],
                "at": round(float(item["at"]), 6),
                "actor": item["actor"],
                "action": item["action"],
                "targets": dumps(item["targets"]),
                "reason": item["reason"],
                "details": dumps(item["details"]),
            }
            hash_ = seal(self.key, prev, pydantic_core.to_json(entry))
            rows.append((*entry.values(), prev, hash_))
            prev = hash_
        # The driver's executemany with tuples: SQLAlchemy's per-row parameter processing
        # cost three times the insert itself (measured: 31 → 12 µs an entry on SQLite).
        statement = (
            f"INSERT INTO audit ({', '.join(_COLUMNS)}) "
            f"VALUES ({', '.join([marker] * len(_COLUMNS))})"
        )
        connection.exec_driver_sql(statement, rows)
        return seq, prev

    def _patients(
        self, connection: sa.Connection, fresh: list[dict[str, Any]], known: dict[str, Known]
    ) -> None:
        """Give each disclosure its patient's references and the message's event and source.

        ``patient`` is the reference of the identity (``system|value``, the one the message is
        ordered and delivered by); ``identifiers`` those of every identifier value the Patient
        carries (CIN, IPP, insurance number…), so an auditor who holds any of them, or a search
        made by one, finds the disclosure.
        """
        # Most disclosures are of the batch's own messages (routed and delivered within one
        # drain's batch): those come from the rows in hand, the rest from the tables.
        found: dict[str, Any] = dict(known)
        values: dict[str, set[str]] = {i: set(k.identifiers) for i, k in known.items()}
        wanted = sorted(
            {
                p["targets"]["envelope"]
                for p in fresh
                if p["action"] == "message.delivered" and "patient" not in p["targets"]
            }
            - found.keys()
        )
        for start in range(0, len(wanted), _CHUNK):
            chunk = wanted[start : start + _CHUNK]
            query = sa.select(
                messages.c.id, messages.c.partition_key, messages.c.event, messages.c.adapter
            ).where(messages.c.id.in_(chunk))
            found.update((row.id, row) for row in connection.execute(query))
            query = sa.select(identifiers.c.message_id, identifiers.c.value).where(
                identifiers.c.message_id.in_(chunk)
            )
            for row in connection.execute(query):
                values.setdefault(row.message_id, set()).add(row.value)
        refs = self._refs
        if len(refs) > _REFS:
            refs.clear()

        def ref(text: str) -> str:
            if (found := refs.get(text)) is None:
                found = refs[text] = patient_ref(self.key, text)
            return found

        # A message's references, made once for its disclosures (one per subscriber).
        patients: dict[str, tuple[str | None, list[str] | None]] = {}
        for item in fresh:
            if item["action"] != "message.delivered":
                continue
            envelope_id = item["targets"]["envelope"]
            message = found.get(envelope_id)
            if message is None:
                continue  # sent before the store held it, or purged: the ids stay
            if (refs_of := patients.get(envelope_id)) is None:
                refs_of = patients[envelope_id] = (
                    ref(message.partition_key) if message.partition_key else None,
                    sorted(map(ref, values[envelope_id])) if values.get(envelope_id) else None,
                )
            patient, identified = refs_of
            if patient is not None:
                item["targets"]["patient"] = patient
            if identified is not None:
                item["targets"]["identifiers"] = identified
            item["details"]["event"] = message.event
            item["details"]["source"] = message.adapter


class WriterAudit:
    """What the store's writer does for the audit trail: append, then anchor the new head.

    The key is the configured one, else generated into the data directory (the writer is the
    chain's owner, so it must never run without one).

    Args:
        settings: the audit key's settings and the data directory (the anchors' file).
    """

    def __init__(self, settings: Settings) -> None:
        self.ledger = Ledger(ensure_key(settings))
        self.anchors = AnchorFile(settings.data_dir / ANCHOR_FILE)

    def append(
        self,
        connection: sa.Connection,
        pending: list[dict[str, Any]],
        known: dict[str, Known] | None = None,
    ) -> tuple[int, str] | None:
        """``Ledger.append`` on the writer's transaction."""
        return self.ledger.append(connection, pending, known)

    def anchor(self, pipe: Any, head: tuple[int, str] | None) -> None:
        """Queue the committed head on the acknowledging MULTI, and note it for the file."""
        if head is None:
            return
        now = time.time()
        queue_head(pipe, head[0], head[1], now)
        self.anchors.note(head[0], head[1], now)
