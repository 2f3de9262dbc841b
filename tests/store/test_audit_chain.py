"""The audit trail end to end: the real drains and writer append it; tampering is found.

On SQLite and PostgreSQL: a broker delivers (two subscribers), an operator resends, the writer
writes; the chain then holds one disclosure per delivered copy and the operator's action, and
``verify`` names the first seq of every kind of tampering done to the table with plain SQL (as
someone with the database's credentials but without the audit key would).
"""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa

from broker import keys
from broker.ack import read_ack
from broker.audit import load_key, patient_ref
from broker.store import StoreWriter
from broker.store.schema import identifiers, messages
from broker.store.verify import verify
from passerelle_demo.synthetic import adt, patients
from tests.store.conftest import audit_entries, verify_trail


@pytest.fixture
def chained(make_broker, store_url):
    """A broker whose three ADTs were delivered to both subscribers, one resent; all written."""
    broker = make_broker(store_url=store_url)
    people = [p for p in patients(6, seed=41) if p.cin][:3]
    for number, person in enumerate(people):
        ack = broker.receive(adt(person, "A01", control_id=f"AU-{number}"))
        assert read_ack(ack).code == "AA"
    broker.run()
    assert broker.write_store() > 0
    return broker, people


def test_every_delivered_copy_is_a_disclosure_with_the_patients_keyed_reference(chained):
    """3 messages × 2 subscribers = 6 ``message.delivered`` entries, seq 1..6, linked."""
    broker, people = chained
    entries = audit_entries(broker.store)
    delivered = [e for e in entries if e["action"] == "message.delivered"]
    assert len(delivered) == 6
    assert [e["seq"] for e in entries] == list(range(1, len(entries) + 1))
    key = load_key(broker.settings)
    refs = {json.loads(e["targets"])["patient"] for e in delivered}
    assert len(refs) == 3
    subscribers = {json.loads(e["targets"])["subscriber"] for e in delivered}
    assert subscribers == {"dmp-national", "lab-legacy"}
    for entry in delivered:
        text = json.dumps(entry)
        for person in people:
            assert person.cin not in text, "no national identifier in the trail"
            assert person.family not in text, "no name in the trail"
    assert all(len(json.loads(e["details"])["digest"]) == 64 for e in delivered)
    verdict = verify_trail(broker)
    assert verdict.ok, verdict.reason
    assert verdict.head_seq == len(entries)
    with broker.store.connect() as connection:
        identities = set(connection.scalars(sa.select(messages.c.partition_key)))
    assert refs == {patient_ref(key, i) for i in identities}


def test_the_redis_anchor_follows_the_head(chained):
    """``pl:audit:head`` holds the last committed (seq, hash)."""
    broker, _ = chained
    head = broker.client.hgetall(keys.AUDIT_HEAD)
    last = audit_entries(broker.store)[-1]
    assert int(head[b"seq"]) == last["seq"]
    assert head[b"hash"].decode() == last["hash"]


def test_writing_the_same_records_again_appends_nothing(chained):
    """A batch read twice (a crash between commit and XACK) does not fork or lengthen the chain."""
    broker, _ = chained
    before = audit_entries(broker.store)
    writer = broker._store_writer
    pending = [
        {
            "record": entry["record"],
            "at": 1.0,
            "actor": "x",
            "action": "message.delivered",
            "targets": {"envelope": "e", "subscriber": "s"},
            "reason": "",
            "details": {},
        }
        for entry in before[-3:]  # the last batch's records, read again
    ]
    with broker.store.begin() as connection:
        assert writer.audit.append(connection, pending) is None
    assert audit_entries(broker.store) == before


def _tamper(engine, *statements):
    with engine.begin() as connection:
        for statement, params in statements:
            connection.execute(sa.text(statement), params)


def test_an_altered_entry_is_named(chained):
    """UPDATE of one column of entry 3: verify fails at 3, ``altered``."""
    broker, _ = chained
    _tamper(broker.store, ("UPDATE audit SET actor = 'someone else' WHERE seq = 3", {}))
    verdict = verify_trail(broker)
    assert (verdict.ok, verdict.first_bad, verdict.problem) == (False, 3, "altered")


def test_an_altered_entry_with_a_recomputed_plain_hash_is_named(chained):
    """Without the key, a new SHA-256 of the changed row does not pass for the HMAC."""
    import hashlib

    broker, _ = chained
    forged = hashlib.sha256(b"forged").hexdigest()
    _tamper(broker.store, ("UPDATE audit SET reason = 'x', hash = :h WHERE seq = 2", {"h": forged}))
    verdict = verify_trail(broker)
    assert (verdict.first_bad, verdict.problem) == (2, "altered")


def test_a_deleted_entry_is_named(chained):
    """DELETE of entry 4: verify fails at 4, ``deleted``."""
    broker, _ = chained
    _tamper(broker.store, ("DELETE FROM audit WHERE seq = 4", {}))
    verdict = verify_trail(broker)
    assert (verdict.ok, verdict.first_bad, verdict.problem) == (False, 4, "deleted")


def test_a_deletion_hidden_by_renumbering_is_named(chained):
    """Entry 4 deleted and the later ones renumbered down: verify fails at 4."""
    broker, _ = chained
    last = len(audit_entries(broker.store))
    statements = [("DELETE FROM audit WHERE seq = 4", {})]
    statements += [
        ("UPDATE audit SET seq = :new WHERE seq = :old", {"new": seq - 1, "old": seq})
        for seq in range(5, last + 1)
    ]
    _tamper(broker.store, *statements)
    verdict = verify_trail(broker)
    assert verdict.ok is False
    assert verdict.first_bad == 4
    assert verdict.problem in ("reordered", "altered", "broken")


def test_reordered_entries_are_named(chained):
    """Entries 2 and 5 swap places: verify fails at 2, ``reordered`` (written as entry 5)."""
    broker, _ = chained
    _tamper(
        broker.store,
        ("UPDATE audit SET seq = -2 WHERE seq = 2", {}),
        ("UPDATE audit SET seq = 2 WHERE seq = 5", {}),
        ("UPDATE audit SET seq = 5 WHERE seq = -2", {}),
    )
    verdict = verify_trail(broker)
    assert (verdict.ok, verdict.first_bad, verdict.problem) == (False, 2, "reordered")
    assert "written as entry 5" in verdict.reason


def test_a_deleted_tail_is_named_by_the_anchor(chained):
    """DELETE of the last two entries: the chain alone still verifies, the anchor does not."""
    broker, _ = chained
    last = len(audit_entries(broker.store))
    _tamper(broker.store, ("DELETE FROM audit WHERE seq >= :s", {"s": last - 1}))
    assert verify(broker.store, load_key(broker.settings), []).ok, "the shorter chain holds"
    verdict = verify_trail(broker)
    assert (verdict.ok, verdict.first_bad, verdict.problem) == (False, last - 1, "truncated")


def test_the_anchor_file_catches_a_truncation_redis_forgot(chained):
    """Redis's head lost too (FLUSHALL): the anchors' file still names the truncation."""
    broker, _ = chained
    writer = broker._store_writer
    writer.audit.anchors.flush()
    last = len(audit_entries(broker.store))
    broker.client.delete(keys.AUDIT_HEAD)
    _tamper(broker.store, ("DELETE FROM audit WHERE seq = :s", {"s": last}))
    verdict = verify_trail(broker)
    assert (verdict.first_bad, verdict.problem) == (last, "truncated")


def test_registration_changes_are_recorded_by_file(chained, tmp_path):
    """A new writer after a registration file changed: one ``registrations.changed`` naming it."""
    from broker.audit.registrations import note_registrations

    broker, _ = chained
    directory = tmp_path / "adapters"
    directory.mkdir()
    for source in sorted(broker.settings.adapters_dir.glob("*.yaml")):
        (directory / source.name).write_bytes(source.read_bytes())
    assert note_registrations(broker.client, directory) is False, "as the writer saw them at start"
    first = [e for e in audit_entries(broker.store) if e["action"] == "registrations.changed"]
    assert len(first) == 1, "the writer's first start recorded them all as added"
    changed = sorted(directory.glob("*.yaml"))[0]
    changed.write_bytes(changed.read_bytes() + b"\n# retuned\n")
    assert note_registrations(broker.client, directory) is True
    broker.write_store()
    entries = [e for e in audit_entries(broker.store) if e["action"] == "registrations.changed"]
    assert json.loads(entries[-1]["details"])["changed"] == [changed.name]
    assert verify_trail(broker).ok


def test_a_disclosure_names_the_policy_and_purpose_of_the_delivery_record():
    """``pol`` = ``policy-id/PURPOSE`` (the policy's delivery record): target and detail."""
    from broker.store.ledger import disclosure, event

    found = disclosure(
        "1-0.3", {"env": "e1", "sub": "dmp", "at": 1.5, "digest": "d", "pol": "p7/TREAT"}
    )
    assert found["targets"] == {"envelope": "e1", "subscriber": "dmp", "policy": "p7"}
    assert found["details"] == {"digest": "d", "purpose": "TREAT"}
    assert found["record"] == "1-0.3:d"
    raw = {
        b"k": b"aud",
        b"act": b"content.viewed",
        b"who": b"nadia",
        b"why": b"INC-1 x",
        b"at": b"2.0",
    }
    raw[b"t"], raw[b"d"] = b'{"envelope":"e1"}', b"{}"
    decoded = {k.decode(): v.decode() for k, v in raw.items()}
    assert event("9-0", raw, 0.0) == event("9-0", decoded, 0.0)
    assert event("9-0", raw, 0.0)["targets"] == {"envelope": "e1"}


def test_a_disclosure_names_its_patient_however_the_batches_fall(make_broker, store_url):
    """Written one ``pl:store`` entry per batch, a message's routing and its two subscribers'
    attempts fall in three batches: a disclosure's patient then comes from the batch in hand,
    from the writer's last batch, or from the tables; each names the same patient references,
    event and source as the stored message."""
    broker = make_broker(store_url=store_url)
    people = [p for p in patients(6, seed=43) if p.cin][:2]
    for number, person in enumerate(people):
        assert read_ack(broker.receive(adt(person, "A01", control_id=f"AB-{number}"))).code == "AA"
    broker.run()
    one_by_one = broker.settings.model_copy(update={"store_batch_size": 1})
    writer = StoreWriter(broker.client, broker.store, one_by_one)
    batches = 0
    while writer.write_batch():
        batches += 1
    assert batches >= 3, "the records were not spread over several batches"
    key = load_key(broker.settings)
    with broker.store.connect() as connection:
        stored = {r.id: r for r in connection.execute(sa.select(messages))}
        values: dict[str, set[str]] = {}
        for row in connection.execute(sa.select(identifiers)):
            values.setdefault(row.message_id, set()).add(row.value)
    delivered = [e for e in audit_entries(broker.store) if e["action"] == "message.delivered"]
    assert len(delivered) == 4
    for entry in delivered:
        targets, details = json.loads(entry["targets"]), json.loads(entry["details"])
        message = stored[targets["envelope"]]
        assert targets["patient"] == patient_ref(key, message.partition_key)
        assert targets["identifiers"] == sorted(patient_ref(key, v) for v in values[message.id])
        assert (details["event"], details["source"]) == (message.event, message.adapter)
    verdict = verify_trail(broker)
    assert verdict.ok, verdict.reason
