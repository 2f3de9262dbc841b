"""The store end to end: real Redis, the real drains (EagerBroker), the writer, SQLite and PostgreSQL.

One scenario, on each database: ``dmp-national`` (FHIR) accepts everything; ``lab-legacy``
(MLLP) answers AR, so its copy of the ADT dead-letters after two attempts; the ORU^R01 is not
for ``lab-legacy`` (it takes ADT only), so it is filtered for it; a frame that is not HL7 is
refused at the edge. What is asserted is what the store answers, against what the peers saw.
"""

from __future__ import annotations

import json
import threading

import pytest
import sqlalchemy as sa

from broker import keys, sealing
from broker.ack import read_ack
from broker.store import Search, StoreWriter, purge, search, stored_envelope, trace
from broker.store.schema import actions, attempts, audit, deliveries, identifiers, messages
from broker.store.writer import Batch
from passerelle_demo.synthetic import adt, oru_r01, patients

DMP = "dmp-national"
LAB = "lab-legacy"


@pytest.fixture
def scenario(make_broker, store_url):
    """The broker after the scenario ran and the writer wrote it: (broker, patient with a CIN)."""
    broker = make_broker(retry={"max_attempts": 2}, store_url=store_url)
    broker.lab.mode = "reject"
    x, y = _two_adults()
    assert read_ack(broker.receive(adt(x, "A01", control_id="ST-1"))).code == "AA"
    assert read_ack(broker.receive(oru_r01(y, control_id="ST-2", n_obx=3))).code == "AA"
    refused = broker.receive(b"this is not HL7")
    assert refused is not None
    assert read_ack(refused).code in ("AE", "AR")
    broker.run()
    assert broker.fhir.received_count == 2, "the FHIR subscriber got both messages"
    assert [m.answer for m in broker.lab.messages] == ["AR", "AR"], "two attempts refused"
    assert broker.write_store() > 0
    return broker, x


def _two_adults():
    adults = [p for p in patients(10, seed=907) if p.cin]
    return adults[0], adults[1]


def _deliveries(item):
    return {d["subscriber"]: d["state"] for d in item["deliveries"]}


def test_search_by_control_id_gives_each_subscribers_final_state(scenario):
    """ST-1 is delivered to the DMP and dead-lettered for the lab; ST-2 filtered for the lab."""
    broker, _ = scenario
    (first,) = search(broker.store, Search(control_id="ST-1")).items
    assert first["adapter"] == "chu-rabat-adt"
    assert first["event"] == "ADT^A01"
    assert first["ack_code"] == "AA"
    assert first["peer"] == "127.0.0.1:0"
    assert _deliveries(first) == {DMP: "delivered", LAB: "dead_lettered"}
    (second,) = search(broker.store, Search(control_id="ST-2")).items
    assert _deliveries(second) == {DMP: "delivered", LAB: "filtered"}
    lab = next(d for d in second["deliveries"] if d["subscriber"] == LAB)
    assert "ORU^R01" in lab["reason"]


def test_search_by_patient_identifier_state_and_reason(scenario):
    """The CIN finds the patient's message (with or without its kind); states and text filter."""
    broker, x = scenario
    by_cin = search(broker.store, Search(identifier=x.cin)).items
    assert [m["control_id"] for m in by_cin] == ["ST-1"]
    assert search(broker.store, Search(identifier=x.cin, identifier_kind="cin")).items
    assert not search(broker.store, Search(identifier=x.cin, identifier_kind="IPP")).items
    by_ipp = search(broker.store, Search(identifier=x.ipp, identifier_kind="IPP")).items
    assert [m["control_id"] for m in by_ipp] == ["ST-1"]
    dead = search(broker.store, Search(subscriber=LAB, state="dead_lettered")).items
    assert [m["control_id"] for m in dead] == ["ST-1"]
    assert not search(broker.store, Search(subscriber=DMP, state="dead_lettered")).items
    (rejected,) = search(broker.store, Search(state="rejected")).items
    assert rejected["ack_code"] in ("AE", "AR")
    assert rejected["reason"]
    assert search(broker.store, Search(text=rejected["reason"][:12].upper())).items[0] == rejected
    newest_first = [
        m["control_id"] for m in search(broker.store, Search(adapter="chu-rabat-adt")).items
    ]
    assert newest_first[-2:] == ["ST-2", "ST-1"]


def test_pages_follow_each_other_without_overlap(scenario):
    """A page of one, then the next by its cursor, then none: all three messages, newest first."""
    broker, _ = scenario
    seen, before = [], None
    while True:
        page = search(broker.store, Search(limit=1, before=before))
        seen += [m["id"] for m in page.items]
        if page.next is None:
            break
        before = page.next
    assert len(seen) == len(set(seen)) == 3


def test_trace_shows_every_attempt_with_the_receivers_reply(scenario):
    """The trace of ST-1: the raw HL7, the canonical Bundle, two AR attempts for the lab, one 200."""
    broker, x = scenario
    (item,) = search(broker.store, Search(control_id="ST-1")).items
    found = trace(broker.store, item["id"])
    assert found["raw"].startswith("MSH|")
    assert "ST-1" in found["raw"]
    assert found["canonical"]["resourceType"] == "Bundle"
    assert {(i["kind"], i["value"]) for i in found["identifiers"]} >= {
        ("CIN", x.cin),
        ("IPP", x.ipp),
    }
    per = {d["subscriber"]: d for d in found["deliveries"]}
    lab_attempts = per[LAB]["attempt_log"]
    assert [a["outcome"] for a in lab_attempts] == ["retrying", "failed"]
    assert [a["ack_code"] for a in lab_attempts] == ["AR", "AR"]
    assert all(len(a["digest"]) == 64 for a in lab_attempts)
    assert per[LAB]["attempts"] == 2
    assert per[LAB]["dead_letter"] == broker.dead_letters.find(LAB)[0]["id"]
    (dmp_attempt,) = per[DMP]["attempt_log"]
    assert (dmp_attempt["outcome"], dmp_attempt["http_status"]) == ("delivered", 200)


def test_a_replay_is_an_action_on_the_message_and_its_delivery(scenario):
    """Replaying the lab's dead letter: the action with who and why, then the lab's delivery."""
    broker, _ = scenario
    broker.lab.mode = "ack"
    letter = broker.dead_letters.find(LAB)[0]
    broker.operations().replay(LAB, letter["id"], who="ops@example.test", why="lab back up")
    broker.run()
    broker.write_store()
    found = trace(broker.store, letter["envelope_id"])
    assert [(a["action"], a["who"], a["why"]) for a in found["actions"]] == [
        ("replayed", "ops@example.test", "lab back up")
    ]
    lab = next(d for d in found["deliveries"] if d["subscriber"] == LAB)
    assert lab["state"] == "delivered"
    assert [a["outcome"] for a in lab["attempt_log"]] == ["retrying", "failed", "delivered"]


def _counts(engine):
    with engine.connect() as connection:
        return {
            t.name: connection.execute(sa.select(sa.func.count()).select_from(t)).scalar()
            for t in (messages, identifiers, deliveries, attempts, actions, audit)
        }


def _attempt_counts(engine):
    with engine.connect() as connection:
        rows = connection.execute(
            sa.select(deliveries.c.message_id, deliveries.c.subscriber, deliveries.c.attempts)
        )
        return {(r.message_id, r.subscriber): r.attempts for r in rows}


class _KilledAfterCommit(StoreWriter):
    """A writer killed between its commit and its XACK (the crash the design must survive)."""

    committed = 0

    def commit(self, batch):
        super().commit(batch)
        self.committed = batch.records
        raise RuntimeError("killed after the commit, before the XACK")


def test_a_batch_written_twice_adds_nothing(make_broker, tmp_path):
    """Killed after committing: the batch is read again and written again, with no row twice."""
    broker = make_broker(retry={"max_attempts": 2}, partitions=1)
    broker.lab.mode = "reject"
    x, y = _two_adults()
    broker.receive(adt(x, "A01", control_id="ID-1"))
    broker.receive(adt(y, "A01", control_id="ID-2"))
    broker.receive(b"garbage")
    broker.run()
    killed = _KilledAfterCommit(broker.client, broker.store, broker.settings)
    with pytest.raises(RuntimeError, match="killed"):
        killed.write_batch()
    once = _counts(broker.store)
    assert once["messages"] == 3
    assert once["attempts"] == 6  # two per message for the lab, one per ADT for the DMP
    assert once["audit"] == 3  # the registrations, one disclosure per ADT to the DMP
    pending = broker.client.xpending(keys.STORE, keys.STORE_GROUP)["pending"]
    assert pending > 0, "the killed writer acknowledged nothing"
    assert killed.committed > pending, "several records per entry (a drain's batch)"
    counted = _attempt_counts(broker.store)
    assert sorted(counted.values()) == [1, 1, 2, 2]
    assert broker.write_store() == killed.committed + 1  # its records, read again, and the refusal
    assert _counts(broker.store) == once
    assert _attempt_counts(broker.store) == counted, "each delivery's attempts counted once"
    assert broker.client.xlen(keys.STORE) == 0, "written records are deleted from the stream"
    assert broker.client.xlen(keys.REJECTED) == 1, "refusals stay for /api/refusals"


def test_a_subscribers_attempts_are_counted_once_whatever_the_batches(make_broker, store_url):
    """A delivery row counts its attempts: added batch by batch, the same after a batch written
    again, and counted from the table after a batch that held some attempts already there."""
    broker = make_broker(store_url=store_url)
    writer = StoreWriter(broker.client, broker.store, broker.settings)

    def commit(*tried):
        batch = Batch()
        for record_id, subscriber in tried:
            record = {"env": "m1", "sub": subscriber, "out": "retrying", "at": 1.0, "error": "503"}
            writer._attempt(batch, record_id, record)
        writer.commit(batch)
        with broker.store.connect() as connection:
            rows = connection.execute(sa.select(deliveries.c.subscriber, deliveries.c.attempts))
            held = dict(rows.all())
            rows = connection.execute(
                sa.select(attempts.c.subscriber, sa.func.count()).group_by(attempts.c.subscriber)
            )
            assert held == dict(rows.all())
        return held

    assert commit(("1-0", "a"), ("1-1", "a"), ("1-2", "b")) == {"a": 2, "b": 1}
    assert commit(("1-0", "a"), ("1-1", "a"), ("1-2", "b")) == {"a": 2, "b": 1}  # read again
    assert commit(("1-1", "a"), ("2-0", "a")) == {"a": 3, "b": 1}  # one of two already there
    assert commit(("3-0", "b")) == {"a": 3, "b": 2}


def test_retention_purges_each_kind_by_its_own_age(scenario):
    """Past the messages' retention only: messages and their rows go, attempts stay."""
    broker, _ = scenario
    before = _counts(broker.store)
    later = broker.settings.model_copy(
        update={
            "store_retention_messages_s": 60,
            "store_retention_attempts_s": 10**8,
            "store_retention_by_state_s": {},  # every state by the messages' age
        }
    )
    import time

    purged = purge(broker.store, later, now=time.time() + 3600, batch=2)
    assert purged == {"messages": 3, "attempts": 0, "actions": 0, "audit": 0}
    after = _counts(broker.store)
    assert (after["messages"], after["identifiers"], after["deliveries"]) == (0, 0, 0)
    assert after["attempts"] == before["attempts"]
    everything = broker.settings.model_copy(update={"store_retention_attempts_s": 60})
    assert purge(broker.store, everything, now=time.time() + 3600)["attempts"] == before["attempts"]


def test_a_message_that_failed_mapping_is_stored_failed_with_why(make_broker):
    """Journalled (AA) but not mappable (no PID): state failed, its reason, no delivery."""
    broker = make_broker()
    x, _ = _two_adults()
    text = "\r".join(
        s for s in adt(x, "A01", control_id="NOPID-1").split("\r") if not s.startswith("PID")
    )
    assert read_ack(broker.receive(text)).code == "AA"
    broker.run()
    broker.write_store()
    (item,) = search(broker.store, Search(state="failed")).items
    assert (item["control_id"], item["deliveries"]) == ("NOPID-1", [])
    assert item["reason"]
    assert trace(broker.store, item["id"])["raw"].startswith("MSH|")


def test_the_running_writer_lets_records_gather_and_still_stops_at_once(make_broker):
    """After a short batch the writer waits ``store_linger_s`` for more (one transaction per
    message at light load cost ~4.6 ms of CPU each); a stop ends that wait, nothing unwritten."""
    from broker.store import StoreWriter

    broker = make_broker(store_linger_s=3600)
    x, _ = _two_adults()
    broker.receive(adt(x, "A01", control_id="LG-1"))
    broker.run()
    writer = StoreWriter(broker.client, broker.store, broker.settings)
    wrote = threading.Event()
    original = writer.write_batch

    def write_batch(block_ms=None):
        written = original(block_ms=block_ms)
        if written:
            wrote.set()
        return written

    writer.write_batch = write_batch
    stop = threading.Event()
    thread = threading.Thread(target=writer.run, args=(stop.is_set,), kwargs={"block_ms": 50})
    thread.start()
    assert wrote.wait(30), "the running writer wrote nothing"
    (item,) = search(broker.store, Search(control_id="LG-1")).items
    assert item["deliveries"]
    stop.set()  # it is lingering now (an hour): the stop must end it
    thread.join(30)
    assert not thread.is_alive(), "the writer did not stop while letting records gather"


def test_the_store_keeps_the_envelope_as_redis_held_it(make_broker, store_url):
    """The row holds the very bytes of ``pl:env:ID`` (sealed for the message), not the Bundle
    serialised and sealed again; the trace reads the Bundle from them."""
    broker = make_broker(store_url=store_url)
    patient = next(p for p in patients(5, seed=908) if p.cin)
    assert read_ack(broker.receive(adt(patient, "A01", control_id="ENV-1"))).code == "AA"
    broker.run()
    (key,) = broker.client.scan_iter(keys.envelope("*"))
    held = broker.client.get(key)
    assert broker.write_store() > 0
    assert broker.client.get(key) is None, "delivered everywhere: Redis let it go"
    with broker.store.connect() as connection:
        row = connection.execute(sa.select(messages)).one()
    assert row.envelope == held
    assert row.canonical is None
    assert patient.family.encode() not in row.envelope, "sealed, as in Redis"
    found = trace(broker.store, row.id)
    names = [
        e["resource"]["name"][0]["family"]
        for e in found["canonical"]["entry"]
        if e["resource"]["resourceType"] == "Patient"
    ]
    assert names == [patient.family]
    # A row written before migration 0007 has its Bundle alone, sealed in ``canonical``.
    bundle = found["canonical"]
    before = sealing.seal_text(json.dumps(bundle), row.id, "canonical")
    with broker.store.begin() as connection:
        connection.execute(
            messages.update().where(messages.c.id == row.id).values(envelope=None, canonical=before)
        )
    assert trace(broker.store, row.id)["canonical"] == bundle
    assert stored_envelope(broker.store, row.id).bundle == bundle
