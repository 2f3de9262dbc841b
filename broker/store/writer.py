"""The store's writer: ``pl:store`` and ``pl:rejected`` → SQL, in batches, one transaction each.

One loop (``passerelle store``, a role ``serve`` supervises): read about ``store_batch_size``
records with a consumer group (``XREADGROUP``, blocking), load the envelopes and journal
entries they need in one round trip, write every row of the batch in ONE transaction
(``executemany``), then ``XACK`` (and ``XDEL`` the ``pl:store`` entries: they exist only for
the store; ``pl:rejected`` is kept for ``/api/refusals``).

Idempotent: every row has a unique key (the envelope id; the ``pl:store`` entry id of an
attempt or an action) and is inserted with ON CONFLICT DO NOTHING, and a subscriber's state is
an upsert, so a batch read again after a crash between the commit and the XACK writes nothing
twice. Nothing is lost while the writer is down: the records wait in the stream, and its
pending entries are read first when it starts again.

Redis then keeps only what is in flight (docs/reliability.md §15): after the commit, in the MULTI
that acknowledges the batch, the writer drops the envelope (``pl:env:ID``) of every message of
the batch that the store holds and that is final for every subscriber (delivered, filtered,
discarded, edited), unless an operator queued it again meanwhile (``pl:reopened``, counted by
``broker.trail.state``), and marks per partition the last journal entry whose message is stored
(``pl:stored``), up to which housekeeping trims the journal. Where no writer runs, nothing is
dropped: envelopes expire after the retention, as they always did.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

import redis
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from broker import keys
from broker.audit.registrations import note_registrations
from broker.log import get_logger
from broker.settings import Settings
from broker.store import ledger, retention
from broker.store.records import (
    envelope_data,
    identifier_rows,
    message_row,
    read_records,
    rejected_row,
    reply_codes,
)
from broker.store.schema import actions, attempts, deliveries, identifiers, messages

__all__ = ["CONSUMER", "FINAL", "Batch", "StoreWriter"]

log = get_logger(__name__)
CONSUMER = "writer"
"""The writer's consumer name: fixed, so a restarted writer reads its own pending entries."""
PURGE_INTERVAL_S = 600.0
FINAL = ("delivered", "filtered", "discarded", "edited")
"""A subscriber's states after which nothing more is sent unless an operator asks again."""
SPAN_SLACK = 4
"""A partition's span of journal entries is read whole when at most this many times as long as
the batch's messages in it (else the rest one by one)."""
FIRST_RECORDS_PER_ENTRY = 50.0
"""How many records a ``pl:store`` entry is taken to hold until a batch has shown it."""
_Entry = tuple[str, dict[bytes, bytes] | None]
_DROP = """
local n = tonumber(ARGV[1])
for i = n + 2, #ARGV do
  if redis.call('HINCRBY', KEYS[1], ARGV[i], -1) <= 0 then redis.call('HDEL', KEYS[1], ARGV[i]) end
end
local dropped = 0
for i = 1, n do
  if redis.call('HEXISTS', KEYS[1], ARGV[i + 1]) == 0 then
    dropped = dropped + redis.call('DEL', KEYS[i + 1])
  end
end
return dropped
"""
"""Count one re-queue off ``pl:reopened`` (KEYS[1]) per id after the ``n`` finished ones; drop
the envelopes (KEYS[2..n+1]) of those finished (ARGV[2..n+1]) that no operator re-queued."""


_KEEP: Any = object()
"""``Batch.delivery``'s reason when none is given: the row keeps the one it has."""
_STATES = {"delivered": "delivered", "retrying": "retrying"}
"""An attempt's outcome → its subscriber's state (any other outcome: ``dead_lettered``)."""


def _stream_id(entry_id: str) -> tuple[int, int]:
    """A stream entry id (``MS-SEQ``) as its order."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


@dataclass
class Batch:
    """The rows of one batch, before they are written."""

    messages: list[dict[str, Any]] = field(default_factory=list)
    identifiers: list[dict[str, Any]] = field(default_factory=list)
    attempts: list[dict[str, Any]] = field(default_factory=list)
    actions: list[dict[str, Any]] = field(default_factory=list)
    deliveries: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    touched: set[str] = field(default_factory=set)
    """The messages the batch's records are about (their envelopes may go once it commits)."""
    reopened: list[str] = field(default_factory=list)
    """One message id per ``replayed`` record: an operator's re-queue, now in the store."""
    journal: dict[int, str] = field(default_factory=dict)
    """Partition → the last journal entry whose message the batch stores."""
    records: int = 0
    """How many records the batch's ``pl:store`` entries held."""
    audit: list[dict[str, Any]] = field(default_factory=list)
    """The audit entries to append (``broker.store.ledger``), in the order of their records."""
    audit_head: tuple[int, str] | None = None
    """The audit chain's head once the batch committed (``None``: nothing appended)."""

    def known(self) -> dict[str, ledger.Known]:
        """What the batch's own message rows tell its disclosures (``ledger.Known``)."""
        values: dict[str, list[str]] = {}
        for row in self.identifiers:
            values.setdefault(row["message_id"], []).append(row["value"])
        return {
            m["id"]: ledger.Known(
                m["partition_key"], m["event"], m["adapter"], tuple(values.get(m["id"], ()))
            )
            for m in self.messages
        }

    def delivery(
        self,
        message_id: str,
        subscriber: str,
        at: float,
        state: str,
        reason: Any = _KEEP,
        dead_letter: str | None = None,
    ) -> None:
        """Set one subscriber's state of one message (the last change of the batch wins).

        A ``reason`` not given keeps the one the batch set before (``None`` on a new row); a
        ``dead_letter`` not given keeps the one set before.
        """
        row = self.deliveries.get((message_id, subscriber))
        if row is None:
            self.deliveries[(message_id, subscriber)] = {
                "message_id": message_id,
                "subscriber": subscriber,
                "dead_letter": dead_letter,
                "state": state,
                "reason": None if reason is _KEEP else reason,
                "updated_at": at,
            }
            return
        row["state"] = state
        row["updated_at"] = at
        if reason is not _KEEP:
            row["reason"] = reason
        if dead_letter is not None:
            row["dead_letter"] = dead_letter


class StoreWriter:
    """Moves the records of ``pl:store`` and ``pl:rejected`` into the SQL store.

    Args:
        client: the broker's Redis (``decode_responses=False``).
        engine: the store (its schema up to date: ``broker.store.db.upgrade``).
        settings: ``store_batch_size`` and the retention settings.
        clock: the time source (tests give a fixed one).
    """

    def __init__(
        self,
        client: redis.Redis,
        engine: sa.Engine,
        settings: Settings,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self.engine = engine
        self.settings = settings
        self.clock = clock
        self._backlog = True  # read our own pending entries first (a crash left them)
        self._per_entry = FIRST_RECORDS_PER_ENTRY
        self._next_purge = 0.0
        self._known: dict[str, ledger.Known] = {}
        dialect = engine.dialect.name
        self._insert: Any = postgresql.insert if dialect == "postgresql" else sqlite.insert
        self._drop = client.register_script(_DROP)
        self._statements = self._compile()
        self._sql: dict[
            tuple[str, tuple[str, ...]], tuple[str, Callable[[Any], tuple[Any, ...]]]
        ] = {}
        self.audit = ledger.WriterAudit(settings)
        self.ensure_groups()
        note_registrations(client, settings.adapters_dir)

    def ensure_groups(self) -> None:
        """Create the ``store`` consumer group on both streams (from their first entry)."""
        for stream in (keys.STORE, keys.REJECTED):
            try:
                self.client.xgroup_create(stream, keys.STORE_GROUP, id="0", mkstream=True)
            except redis.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    # --- the loop ------------------------------------------------------------------------------

    def run(self, stop: Callable[[], bool], block_ms: int = 1000) -> None:
        """Write batches until ``stop()`` is true; purge by age every ``PURGE_INTERVAL_S``."""
        while not stop():
            written = self.write_batch(block_ms=block_ms)
            if 0 < written < self.settings.store_batch_size:
                # A short batch: let the next ones gather (one transaction per message at light
                # load cost ~4.6 ms of CPU per message at 50 ADT/s, docs/operations.md).
                linger_until = time.monotonic() + self.settings.store_linger_s
                while not stop() and time.monotonic() < linger_until:
                    time.sleep(min(0.05, self.settings.store_linger_s))
            if self.clock() >= self._next_purge:
                self.purge()
                self._next_purge = self.clock() + PURGE_INTERVAL_S

    def purge(self) -> dict[str, int]:
        """Purge by age (``broker.store.retention``); anchor the chain's head if a prune moved it.

        In the loop, between batches: the audit trail's prune appends to the chain the writer
        owns without waiting for anyone.
        """
        purged = retention.purge(
            self.engine, self.settings, now=self.clock(), key=self.audit.ledger.key
        )
        if purged["audit"]:
            with self.engine.connect() as connection:
                newest = ledger.head(connection)
            pipe = self.client.pipeline(transaction=True)
            self.audit.anchor(pipe, newest)
            pipe.execute()
        if any(purged.values()):
            log.info("store.purged", **purged)
        return purged

    def drain(self) -> int:
        """Write every record waiting now, batch after batch, without blocking; return how many."""
        total = 0
        while written := self.write_batch():
            total += written
        return total

    def write_batch(self, block_ms: int | None = None) -> int:
        """Read one batch, write it in one transaction, acknowledge it; return how many records.

        A batch is about ``store_batch_size`` records: a drain's entry holds a whole batch of
        records (``broker.trail.flush``), so the entries to read are counted from how many
        records the last ones held.
        """
        ids = "0" if self._backlog else ">"
        count = max(1, round(self.settings.store_batch_size / self._per_entry))
        reply: list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes] | None]]]]
        reply = self.client.xreadgroup(
            keys.STORE_GROUP,
            CONSUMER,
            {keys.STORE: ids, keys.REJECTED: ids},
            count=count,
            block=None if self._backlog else block_ms,
        )
        read: dict[str, list[_Entry]] = {keys.STORE: [], keys.REJECTED: []}
        for stream, entries in reply or []:
            read[stream.decode()] = [(i.decode(), f) for i, f in entries]
        if not read[keys.STORE] and not read[keys.REJECTED]:
            if self._backlog:
                self._backlog = False
                return self.write_batch(block_ms)
            return 0
        started = time.perf_counter()
        batch = self.collect(read[keys.STORE], read[keys.REJECTED])
        if read[keys.STORE]:
            self._per_entry = max(1.0, batch.records / len(read[keys.STORE]))
        size = batch.records + len(read[keys.REJECTED])
        self.commit(batch)
        # One MULTI: the envelopes go, the marks move and the batch is acknowledged together, so
        # a crash before it repeats all of it (the commit is idempotent) and after it none.
        pipe = self.client.pipeline(transaction=True)
        dropping = self.release(pipe, batch, self.finished(batch.touched))
        if read[keys.STORE]:
            done = [i for i, _ in read[keys.STORE]]
            pipe.xack(keys.STORE, keys.STORE_GROUP, *done)
            pipe.xdel(keys.STORE, *done)
        if read[keys.REJECTED]:
            pipe.xack(keys.REJECTED, keys.STORE_GROUP, *[i for i, _ in read[keys.REJECTED]])
        self.audit.anchor(pipe, batch.audit_head)
        replies = pipe.execute()
        log.info(
            "store.batch",
            records=size,
            messages=len(batch.messages),
            attempts=len(batch.attempts),
            dropped=replies[0] if dropping else 0,
            ms=round((time.perf_counter() - started) * 1000, 1),
        )
        return size

    # --- records → rows ------------------------------------------------------------------------

    def collect(self, entries: list[_Entry], rejected: Iterable[_Entry]) -> Batch:
        """Turn one batch of entries into rows, loading envelopes and journal entries."""
        now = self.clock()
        batch = Batch()
        records = read_records(entries)
        batch.records = len(records)
        wanted = [str(r["env"]) for _, r in records if r.get("k") == "msg"]
        envelopes, journal = self._load(wanted)
        for record_id, record in records:
            kind = record.get("k")
            if kind == "aud":
                batch.audit.append(ledger.event(record_id, record, now))
                continue
            envelope_id = str(record["env"])
            batch.touched.add(envelope_id)
            if kind == "msg":
                self._message(batch, record, envelopes, journal, now)
            elif kind == "att":
                self._attempt(batch, record_id, record)
            elif kind == "st":
                if record["st"] == "replayed":
                    batch.reopened.append(envelope_id)
                batch.delivery(
                    envelope_id,
                    record["sub"],
                    float(record.get("at") or now),
                    record["st"],
                    record.get("why") or None,
                    record.get("dead") or None,
                )
            elif kind == "act":
                batch.actions.append(
                    {
                        "record": record_id,
                        "message_id": envelope_id,
                        "subscriber": record["sub"],
                        "action": record["act"],
                        "who": record["who"],
                        "why": record["why"],
                        "target": record.get("target") or None,
                        "at": float(record.get("at") or now),
                    }
                )
        for entry_id, fields in rejected:
            if fields:
                batch.messages.append(rejected_row(entry_id, fields, now))
        for envelope_id in wanted:
            envelope = (envelopes.get(envelope_id) or ({}, b""))[0]
            partition, journal_id = envelope.get("partition"), envelope.get("journal_id")
            if partition is not None and journal_id:
                batch.journal[int(partition)] = str(journal_id)  # in journal order: the last wins
        return batch

    def _load(
        self, envelope_ids: list[str]
    ) -> tuple[dict[str, tuple[dict[str, Any], bytes]], dict[str, dict[bytes, bytes]]]:
        """The envelopes (``MGET``: each opened, and as Redis holds it) and, in a second trip,
        their journal entries (``XRANGE``)."""
        if not envelope_ids:
            return {}, {}
        raw: list[bytes | None] = self.client.mget([keys.envelope(i) for i in envelope_ids])
        loaded = {i: (envelope_data(r, i), r) for i, r in zip(envelope_ids, raw, strict=True) if r}
        envelopes = {i: data for i, (data, _) in loaded.items()}
        located: dict[str, dict[str, str]] = {}  # stream → journal entry id → envelope id
        for envelope_id, envelope in envelopes.items():
            if envelope.get("journal_id") and envelope.get("partition") is not None:
                stream = keys.inbound(envelope["partition"])
                located.setdefault(stream, {})[str(envelope["journal_id"])] = envelope_id
        journal: dict[str, dict[bytes, bytes]] = {}
        # A batch's messages are runs of consecutive journal entries of a few partitions (the
        # drains' batches): one XRANGE per partition over the span, not one per message.
        pipe = self.client.pipeline(transaction=False)
        for stream, wanted in located.items():
            span = sorted(wanted, key=_stream_id)
            pipe.xrange(stream, span[0], span[-1], count=SPAN_SLACK * len(span) + 16)
        for wanted, entries in zip(located.values(), pipe.execute(), strict=True):
            for entry_id, fields in entries:
                if envelope_id := wanted.pop(entry_id.decode(), ""):
                    journal[envelope_id] = fields
        missed = [(stream, i, e) for stream, wanted in located.items() for i, e in wanted.items()]
        for stream, entry_id, _ in missed:  # the span was longer than the slack allowed
            pipe.xrange(stream, entry_id, entry_id)
        for (_, _, envelope_id), entries in zip(
            missed, pipe.execute() if missed else [], strict=True
        ):
            if entries:
                journal[envelope_id] = entries[0][1]
        return loaded, journal

    @staticmethod
    def _message(
        batch: Batch,
        record: dict[str, Any],
        envelopes: dict[str, tuple[dict[str, Any], bytes]],
        journal: dict[str, dict[bytes, bytes]],
        now: float,
    ) -> None:
        envelope_id = str(record["env"])
        envelope, stored = envelopes.get(envelope_id) or (None, None)
        row = message_row(record, envelope, journal.get(envelope_id), now, stored)
        batch.messages.append(row)
        batch.identifiers.extend(identifier_rows(envelope_id, (envelope or {}).get("bundle")))
        at = row["received_at"]
        for subscriber in filter(None, str(record.get("to") or "").split(",")):
            batch.delivery(envelope_id, subscriber, at, "queued")
        for subscriber, why in (record.get("off") or {}).items():
            batch.delivery(envelope_id, subscriber, at, "filtered", why)

    @staticmethod
    def _attempt(batch: Batch, record_id: str, record: dict[str, Any]) -> None:
        envelope_id, subscriber = str(record["env"]), str(record["sub"])
        outcome = str(record["out"])
        at = float(record["at"])
        reply = str(record.get("reply") or "")
        error = str(record.get("error") or "") or None
        ack, status = reply_codes(reply)
        batch.attempts.append(
            {
                "record": record_id,
                "message_id": envelope_id,
                "subscriber": subscriber,
                "at": at,
                "duration_ms": float(record.get("ms") or 0),
                "outcome": outcome,
                "ack_code": ack,
                "http_status": status,
                "reply": reply or None,
                "error": error,
                "digest": str(record.get("digest") or "") or None,
                "policy": str(record.get("pol") or "") or None,
            }
        )
        if outcome == "delivered":
            batch.audit.append(ledger.disclosure(record_id, record))
        batch.delivery(envelope_id, subscriber, at, _STATES.get(outcome, "dead_lettered"), error)

    # --- what Redis no longer needs ------------------------------------------------------------

    def finished(self, message_ids: Iterable[str]) -> list[str]:
        """Those of ``message_ids`` the store holds and that are final for every subscriber.

        Final: every delivery row is delivered, filtered or discarded (a message routed to
        nobody, or that failed mapping, has none). Retrying, parked, dead-lettered, queued or
        replayed for any subscriber: not final, its envelope is still needed.
        """
        ids = sorted(message_ids)
        done: list[str] = []
        marker = "?" if self.engine.dialect.paramstyle == "qmark" else "%s"
        final = ", ".join(f"'{state}'" for state in FINAL)
        # Driver SQL: SQLAlchemy's compiling of the IN list cost more than the query (measured
        # 3.9 → 2.2 µs a message on SQLite, ``benchmarks/store.py``'s data).
        with self.engine.connect() as connection:
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                query = (
                    f"SELECT id FROM messages WHERE id IN ({', '.join([marker] * len(chunk))}) "
                    "AND NOT EXISTS (SELECT 1 FROM deliveries WHERE message_id = messages.id "
                    f"AND state NOT IN ({final}))"
                )
                done.extend(row[0] for row in connection.exec_driver_sql(query, tuple(chunk)))
        return done

    def release(self, pipe: Any, batch: Batch, finished: list[str]) -> bool:
        """Queue on ``pipe`` (the batch's MULTI) what the store now holds for Redis.

        The ``replayed`` records of the batch are counted off ``pl:reopened``; the envelopes of
        ``finished`` go unless an operator re-queued the message since (its count is not zero);
        ``pl:stored`` moves to the batch's last stored journal entry of each partition.

        Returns:
            Whether the drop is queued (then its reply, how many envelopes went, comes first).
        """
        dropping = bool(finished or batch.reopened)
        if dropping:
            self._drop(
                keys=[keys.REOPENED, *[keys.envelope(i) for i in finished]],
                args=[len(finished), *finished, *batch.reopened],
                client=pipe,
            )
        if batch.journal:
            pipe.hset(keys.STORED, mapping={str(p): i for p, i in batch.journal.items()})
        return dropping

    # --- rows → SQL ----------------------------------------------------------------------------

    def _compile(self) -> dict[str, Any]:
        """Each table's statement: insert, or do nothing (a state: update) where the row exists."""
        insert = self._insert
        statements = {
            table.name: insert(table).on_conflict_do_nothing()
            for table in (messages, identifiers, attempts, actions)
        }
        if self._insert is not sqlite.insert:
            statements[attempts.name] = statements[attempts.name].returning(attempts.c.record)
        upsert = insert(deliveries)
        excluded = upsert.excluded
        statements[deliveries.name] = upsert.on_conflict_do_update(
            index_elements=[deliveries.c.message_id, deliveries.c.subscriber],
            set_={
                "state": excluded.state,
                "reason": excluded.reason,
                "updated_at": excluded.updated_at,
                "attempts": deliveries.c.attempts + excluded.attempts,
                "dead_letter": sa.func.coalesce(excluded.dead_letter, deliveries.c.dead_letter),
            },
        )
        return statements

    def _execute_many(
        self, connection: sa.Connection, table: str, rows: list[dict[str, Any]]
    ) -> int:
        """Insert (or upsert) ``rows`` into ``table`` with one ``executemany``; how many rows it
        wrote (an insert that did nothing, its row being there, counts none; -1 where the
        driver cannot tell, never for ``attempts``).

        On SQLite the compiled SQL goes to the driver's ``executemany`` with each row as a
        tuple: SQLAlchemy's per-row parameter processing cost ~6 µs a row, a fifth of the
        writer's time at saturation (every value here is a str, bytes, int, float or None,
        which sqlite3 takes as they are). On PostgreSQL, SQLAlchemy's own path sends the rows
        as multi-row INSERTs ("insertmanyvalues"), faster than the driver's executemany.
        """
        statement = self._statements[table]
        if self._insert is not sqlite.insert:
            result = connection.execute(statement, rows)
            # psycopg's executemany tells no rowcount: the attempts' insert returns its new rows.
            return len(result.all()) if result.returns_rows else int(result.rowcount)
        columns = tuple(rows[0])
        if (found := self._sql.get((table, columns))) is None:
            compiled = statement.compile(dialect=connection.dialect, column_keys=list(columns))
            names = list(compiled.positiontup or [])
            # itemgetter builds each row's tuple in C (a generator per row cost ~10 µs a message).
            pick = itemgetter(*names) if len(names) > 1 else (lambda row: (row[names[0]],))
            found = self._sql[(table, columns)] = (str(compiled), pick)
        sql, pick = found
        return int(connection.exec_driver_sql(sql, [pick(row) for row in rows]).rowcount)

    def commit(self, batch: Batch) -> None:
        """Write a batch's rows in one transaction; rows already there are left as they are."""
        with self.engine.begin() as connection:
            if batch.messages:
                self._execute_many(connection, messages.name, batch.messages)
            if batch.identifiers:
                self._execute_many(connection, identifiers.name, batch.identifiers)
            tried = (
                self._execute_many(connection, attempts.name, batch.attempts)
                if batch.attempts
                else 0
            )
            if batch.actions:
                self._execute_many(connection, actions.name, batch.actions)
            # The batch's messages and the last batch's: a message's attempts are often read a
            # batch after its routing (drains flush routing and delivery apart).
            known = batch.known()
            batch.audit_head = self.audit.append(connection, batch.audit, self._known | known)
            self._known = known
            if not batch.deliveries:
                return
            # A subscriber's attempts: the count its row holds plus those the batch added. A batch
            # read again added none (its attempts were there); one that added only some (never
            # seen: a batch is committed whole) has every touched row counted again.
            added: dict[tuple[str, str], int] = {}
            if tried == len(batch.attempts):
                for attempt in batch.attempts:
                    pair = (attempt["message_id"], attempt["subscriber"])
                    added[pair] = added.get(pair, 0) + 1
            for pair, row in batch.deliveries.items():
                row["attempts"] = added.get(pair, 0)
            self._execute_many(connection, deliveries.name, list(batch.deliveries.values()))
            if 0 < tried < len(batch.attempts):
                self._recount(connection, {a["message_id"] for a in batch.attempts})

    @staticmethod
    def _recount(connection: sa.Connection, message_ids: Iterable[str]) -> None:
        """Set the attempts of every delivery row of ``message_ids`` to the rows that exist."""
        count = (
            sa.select(sa.func.count())
            .where(
                attempts.c.message_id == deliveries.c.message_id,
                attempts.c.subscriber == deliveries.c.subscriber,
            )
            .scalar_subquery()
        )
        connection.execute(
            deliveries.update()
            .where(deliveries.c.message_id.in_(sorted(message_ids)))
            .values(attempts=count)
        )
