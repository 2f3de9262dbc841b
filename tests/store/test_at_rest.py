"""Data at rest: no message content in clear in Redis or in the store; rotation; tampering.

Real Redis, the real drains and writer (EagerBroker), on SQLite and PostgreSQL. The oracle is
the bytes themselves: every Redis value (strings, hash fields and values, stream entries, lists,
sets) and every column of every store table is searched for the patient's name, street and
phone, which only the message bodies carry. Patient identifiers (CIN, IPP) stay in clear on
purpose (ordering, search by identifier: docs/security.md) and are not markers here.
"""

from __future__ import annotations

import base64

import pytest
import sqlalchemy as sa

from broker import keys, sealing
from broker.datakeys import parse_keys
from broker.delivery.replay import OperationError
from broker.errors import DataKeyError, SealedDataError
from broker.ops.reencrypt import count_streams, reencrypt_redis
from broker.store import trace
from broker.store.reencrypt import reencrypt_store
from broker.store.schema import metadata
from passerelle_demo.synthetic import adt, patients

DMP = "dmp-national"
HOLD = {"max_attempts": 1, "initial_delay_s": 60, "max_delay_s": 60, "on_exhausted": "hold"}


def _patient():
    return next(p for p in patients(20, seed=611) if p.cin)


def _markers(patient) -> list[bytes]:
    return [patient.family.encode(), patient.phone.encode(), b"Quartier Agdal"]


def _redis_bytes(client) -> bytes:
    """Every key name and value of the Redis database, concatenated."""
    out: list[bytes] = []
    for name in client.scan_iter(count=1000):
        out.append(name)
        kind = client.type(name)
        if kind == b"string":
            out.append(client.get(name) or b"")
        elif kind == b"hash":
            for field, value in client.hgetall(name).items():
                out += [field, value]
        elif kind == b"stream":
            for entry_id, fields in client.xrange(name):
                out.append(entry_id)
                for field, value in fields.items():
                    out += [field, value]
        elif kind == b"list":
            out += client.lrange(name, 0, -1)
        elif kind == b"set":
            out += list(client.smembers(name))
        elif kind == b"zset":
            out += [m for m, _ in client.zrange(name, 0, -1, withscores=True)]
    return b"\x00".join(out)


def _store_bytes(engine) -> bytes:
    """Every value of every row of every store table, as bytes."""
    out: list[bytes] = []
    with engine.connect() as connection:
        for table in metadata.sorted_tables:
            for row in connection.execute(sa.select(table)):
                for value in row:
                    if isinstance(value, bytes | memoryview):
                        out.append(bytes(value))
                    elif value is not None:
                        out.append(str(value).encode())
    return b"\x00".join(out)


def _everything(broker, patient) -> None:
    """A delivered message, a dead letter (refused for good) and a refused frame, all stored."""
    broker.receive(adt(patient, "A01", control_id="AR-1"))
    broker.run()
    broker.fhir.mode = "reject"
    broker.receive(adt(patient, "A08", control_id="AR-2"))
    broker.run()
    broker.fhir.mode = "ok"
    refused = f"not hl7 at all, {patient.family} {patient.phone} Quartier Agdal"
    broker.receive(refused)
    broker.write_store()


def test_no_message_content_in_clear_in_redis_or_the_store(make_broker, store_url):
    """Journal, envelopes, dead letters, rejected input; store rows: no name, phone or street."""
    broker = make_broker(store_url=store_url, retry=HOLD)
    patient = _patient()
    _everything(broker, patient)
    at_rest = _redis_bytes(broker.client)
    stored = _store_bytes(broker.store)
    assert broker.client.hlen(keys.dead_records(DMP)) == 1, "the dead letter was not made"
    assert broker.client.xlen(keys.REJECTED) == 1, "the refused frame was not kept"
    for marker in _markers(patient):
        assert marker not in at_rest, f"{marker!r} in clear in Redis"
        assert marker not in stored, f"{marker!r} in clear in the store"
    # ...and every reading path still reads them.
    dead = broker.dead_letters.find(DMP)[0]
    assert dead["envelope"]["bundle"]["resourceType"] == "Bundle"
    with broker.store.connect() as connection:
        ids = [r.id for r in connection.execute(sa.select(metadata.tables["messages"].c.id))]
    traced = [trace(broker.store, i) for i in ids]
    raws = " ".join(t["raw"] or "" for t in traced)
    assert patient.family in raws
    assert "not hl7 at all" in raws
    assert any(t["canonical"] for t in traced)


def test_rotation_reencrypt_then_retire_reads_everything(make_broker, store_url):
    """Old data reads after rotation; re-encryption moves store and Redis bodies to the new key;
    with the old key removed, everything re-encrypted still reads (and the journal entries,
    append-only, are counted on the old key until they are trimmed)."""
    broker = make_broker(store_url=store_url, retry=HOLD)
    patient = _patient()
    suite = sealing.active()
    old = parse_keys("k-old:" + "A" * 43 + "=", "test")
    new = parse_keys("k-new:" + "B" * 43 + "=," + "k-old:" + "A" * 43 + "=", "test")
    only_new = parse_keys("k-new:" + "B" * 43 + "=", "test")
    try:
        sealing.install(old)
        _everything(broker, patient)
        sealing.install(new)  # rotated: old bodies still open
        assert patient.family in (trace(broker.store, _stored_ids(broker)[0])["raw"] or "")
        store_done = reencrypt_store(broker.store, batch=1)
        redis_done = reencrypt_redis(broker.client)
        assert store_done.resealed == store_done.rows == 3
        assert redis_done.dead_letters == 1
        assert redis_done.streams["k-old"] >= 1, "journal entries are not rewritten"
        again = reencrypt_store(broker.store)
        assert again.resealed == 0, "a second pass found bodies still on the old key"
        sealing.install(only_new)  # the old key retired
        for message_id in _stored_ids(broker):
            traced = trace(broker.store, message_id)
            assert traced is not None
            assert traced["raw"]
        assert broker.dead_letters.find(DMP)[0]["envelope"]["id"]
        for name in broker.client.scan_iter(match="pl:env:*"):
            stored = broker.client.get(name)
            assert sealing.key_id_of(stored) == "k-new"
        assert set(count_streams(broker.client)) == {"k-old"}
    finally:
        sealing.install(suite)


def _stored_ids(broker) -> list[str]:
    with broker.store.connect() as connection:
        table = metadata.tables["messages"]
        return [r.id for r in connection.execute(sa.select(table.c.id).order_by(table.c.id))]


def test_a_flipped_byte_in_the_store_is_a_clear_error(make_broker, store_url):
    """One byte of a stored raw message changed: trace raises SealedDataError naming the
    message and the field, never returns altered content; a foreign key id is named too."""
    broker = make_broker(store_url=store_url)
    patient = _patient()
    broker.receive(adt(patient, "A01", control_id="TP-1"))
    broker.run()
    broker.write_store()
    (message_id,) = _stored_ids(broker)
    table = metadata.tables["messages"]
    with broker.store.begin() as connection:
        raw = bytearray(connection.execute(sa.select(table.c.raw)).scalar_one())
        raw[-5] ^= 0x40
        connection.execute(table.update().values(raw=bytes(raw)))
    with pytest.raises(SealedDataError, match=f"raw of {message_id} fails authentication"):
        trace(broker.store, message_id)
    suite = sealing.active()
    try:
        sealing.install(parse_keys("k-other:" + "C" * 43 + "=", "test"))
        with pytest.raises(OperationError, match="sealed with data key ktest-1"):
            broker.operations().resend(message_id, DMP, who="ops@example.test", why="a test")
    finally:
        sealing.install(suite)


def test_data_written_before_encryption_reads_and_reencrypt_seals_it(make_broker, store_url):
    """Messages journalled, routed and stored with encryption off (the version before) read
    the same once it is on; ``reencrypt`` then seals them, and nothing is left in clear."""
    broker = make_broker(store_url=store_url, retry=HOLD)
    patient = _patient()
    suite = sealing.active()
    try:
        sealing.install(None)
        _everything(broker, patient)
    finally:
        sealing.install(suite)
    assert patient.family.encode() in _store_bytes(broker.store), "not written in clear"
    traced = [trace(broker.store, i) for i in _stored_ids(broker)]
    assert patient.family in " ".join(t["raw"] or "" for t in traced)
    assert broker.dead_letters.find(DMP)[0]["envelope"]["bundle"]["resourceType"] == "Bundle"
    assert reencrypt_store(broker.store).resealed == 3
    assert reencrypt_redis(broker.client).dead_letters == 1
    assert patient.family.encode() not in _store_bytes(broker.store)
    for name in broker.client.scan_iter(match="pl:env:*"):
        assert sealing.key_id_of(broker.client.get(name)) == "ktest-1"
    assert count_streams(broker.client)["clear"] >= 1, "journal entries stay as written"
    traced = [trace(broker.store, i) for i in _stored_ids(broker)]
    assert patient.family in " ".join(t["raw"] or "" for t in traced)


def _journal(broker, envelope_id: str, raw: bytes) -> None:
    """A journal entry as the listener writes it, with ``raw`` as given, and its drain queued."""
    from datetime import UTC, datetime

    broker.client.xgroup_create(keys.inbound(0), keys.PIPELINE_GROUP, id="0", mkstream=True)
    broker.client.xadd(
        keys.inbound(0),
        {
            "id": envelope_id,
            "source": "chu-rabat-adt",
            "content_type": "application/hl7-v2",
            "received_at": datetime.now(UTC).isoformat(),
            "charset": "utf-8",
            "raw": raw,
            "peer": "127.0.0.1:0",
        },
    )
    broker.celery.send_task("passerelle.drain_inbound", args=[0])


def test_an_altered_journal_entry_is_quarantined_with_why_and_the_next_goes_on(make_broker):
    """Sealed for another envelope: quarantined, the reason naming the check; then a good
    message of the same partition is delivered."""
    broker = make_broker(partitions=1)
    patient = _patient()
    moved = sealing.seal(adt(patient, "A01", control_id="MV-1").encode(), "someone-else", "raw")
    _journal(broker, "01a2400000000000000000000001", moved)
    broker.run()
    ((_, quarantined),) = broker.client.xrange(keys.QUARANTINE)
    assert b"fails authentication" in quarantined[b"reason"]
    broker.receive(adt(patient, "A01", control_id="MV-2"))
    broker.run()
    assert broker.fhir_control_ids() == ["MV-2"]


def test_a_key_the_worker_lacks_fails_the_drain_and_the_entry_waits(make_broker):
    """Sealed with a key not in this worker's ring: the drain fails naming it, the entry stays
    unacknowledged (not quarantined); with the key back, it is delivered."""
    broker = make_broker(partitions=1)
    patient = _patient()
    other = parse_keys("k-elsewhere:" + "D" * 43 + "=", "test")
    raw = adt(patient, "A01", control_id="NK-1").encode()
    _journal(
        broker,
        "01a2400000000000000000000002",
        other.seal(raw, "01a2400000000000000000000002", "raw"),
    )
    with pytest.raises(DataKeyError, match="k-elsewhere"):
        broker.run()
    assert broker.client.xlen(keys.QUARANTINE) == 0
    assert broker.client.xpending(keys.inbound(0), keys.PIPELINE_GROUP)["pending"] == 1
    suite = sealing.active()
    try:
        sealing.install(
            parse_keys(
                f"ktest-1:{base64.b64encode(bytes(range(32))).decode()},k-elsewhere:{'D' * 43}=",
                "t",
            )
        )
        broker.celery.send_task("passerelle.drain_inbound", args=[0])
        broker.run()
    finally:
        sealing.install(suite)
    assert broker.fhir_control_ids() == ["NK-1"]
