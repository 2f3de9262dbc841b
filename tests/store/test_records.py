"""The writer's reading of ``pl:store``: a drain's batch as one entry, the previous version's
entries, and the journal entries it loads by span (real Redis, real SQLite)."""

from __future__ import annotations

import json

import pydantic_core
import sqlalchemy as sa

from broker import keys, trail
from broker.settings import Settings
from broker.store import StoreWriter, connect, upgrade
from broker.store.records import read_records
from broker.store.schema import attempts, deliveries, messages


def test_a_many_entry_is_its_records_each_with_an_id_of_its_own():
    items = [
        {"k": "msg", "env": "E1", "st": "routed", "to": "a,b", "off": {"c": "why"}},
        {"k": "att", "env": "E1", "sub": "a", "at": 1.0, "out": "delivered"},
    ]
    entries = [("5-1", {b"k": b"many", b"d": pydantic_core.to_json(items)}), ("5-2", None)]
    assert read_records(entries) == [("5-1.0", items[0]), ("5-1.1", items[1])]


def test_entries_of_the_previous_version_read_as_records():
    details = {"env": "E1", "sub": "a", "at": 1.0, "out": "retrying", "reply": "HTTP 503"}
    entries = [
        ("1-0", {b"k": b"msg", b"env": b"E1", b"st": b"routed", b"to": b"a", b"off": b'{"b":"x"}'}),
        ("2-0", {b"k": b"att", b"env": b"E1", b"d": json.dumps(details).encode()}),
        ("3-0", {b"k": b"st", b"env": b"E1", b"sub": b"a", b"st": b"parked", b"why": b"held"}),
    ]
    records = dict(read_records(entries))
    assert records["1-0"] == {"k": "msg", "env": "E1", "st": "routed", "to": "a", "off": {"b": "x"}}
    assert records["2-0"] == {**details, "k": "att"}
    assert records["3-0"]["st"] == "parked"


def _envelope(client, envelope_id: str, journal_id: str) -> None:
    envelope = {"id": envelope_id, "source": "src", "partition": 0, "journal_id": journal_id}
    client.set(keys.envelope(envelope_id), json.dumps(envelope))


def test_journal_entries_are_found_in_a_span_and_one_by_one_beyond_it(redis_client, tmp_path):
    """Three neighbours come from one XRANGE; one far behind (beyond the slack) on its own."""
    journal = [
        redis_client.xadd(keys.inbound(0), {"id": f"E{n}", "raw": f"RAW-{n}"}).decode()
        for n in range(200)
    ]
    chosen = [0, 1, 2, 199]  # 199 entries apart: longer than the span the writer reads whole
    records: trail.Records = []
    for n in chosen:
        _envelope(redis_client, f"E{n}", journal[n])
        records.append({"k": "msg", "env": f"E{n}", "st": "routed", "to": ""})
    trail.flush(redis_client, records)
    engine = connect(f"sqlite:///{tmp_path / 'store.sqlite3'}", create=True)
    upgrade(engine)
    writer = StoreWriter(redis_client, engine, Settings())
    before = _xranges(redis_client)
    writer.drain()
    assert _xranges(redis_client) - before == 2, "one XRANGE over the span, one for the far one"
    with engine.connect() as connection:
        stored = {
            row.id: row.raw for row in connection.execute(sa.select(messages.c.id, messages.c.raw))
        }
        assert stored == {f"E{n}": f"RAW-{n}".encode() for n in chosen}
        assert connection.scalar(sa.select(sa.func.count()).select_from(attempts)) == 0
        assert connection.scalar(sa.select(sa.func.count()).select_from(deliveries)) == 0
    engine.dispose()


def _xranges(client) -> int:
    return int(client.info("commandstats").get("cmdstat_xrange", {}).get("calls", 0))
