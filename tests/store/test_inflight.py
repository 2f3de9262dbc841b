"""Redis keeps only what is in flight: the writer drops what the store holds and no one needs.

Real Redis, the real drains (EagerBroker), the real writer, on SQLite and PostgreSQL. What is
asserted is what Redis holds (``pl:env:ID``, the journal, the queues) against the store's rows
and what the capture peers received.
"""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from broker import keys
from broker.ack import read_ack
from broker.delivery.replay import MessageNotFound
from broker.store import StoreWriter, trace
from broker.store.schema import messages
from broker.testing import raw_of
from passerelle_demo.synthetic import adt, oru_r01, patients

DMP = "dmp-national"
LAB = "lab-legacy"
WHO = {"who": "ops@example.test", "why": "the receiver lost its copy"}


def _adults(n: int) -> list:
    return [p for p in patients(20, seed=611) if p.cin][:n]


def _envelope_id(broker, control_id: str) -> str:
    for partition in range(broker.settings.partitions):
        for _, fields in broker.client.xrange(keys.outbound(DMP, partition)):
            found = fields[b"env"].decode()
            if broker.control_id(found) == control_id:
                return found
    msg = f"{control_id} was never queued for {DMP}"
    raise AssertionError(msg)


def _in_redis(broker, envelope_id: str) -> bool:
    return bool(broker.client.exists(keys.envelope(envelope_id)))


def _states(broker, envelope_id: str) -> dict[str, str]:
    found = trace(broker.store, envelope_id)
    assert found is not None, "the store has no record of the message"
    return {d["subscriber"]: d["state"] for d in found["deliveries"]}


def test_a_delivered_message_leaves_redis_once_the_store_holds_it(make_broker, store_url):
    """Delivered to both subscribers: in Redis until the writer's batch, then only in the store."""
    broker = make_broker(store_url=store_url)
    (x,) = _adults(1)
    assert read_ack(broker.receive(adt(x, "A01", control_id="IF-1"))).code == "AA"
    broker.run()
    envelope_id = _envelope_id(broker, "IF-1")
    assert _in_redis(broker, envelope_id), "dropped before the store had it"
    assert broker.write_store() > 0
    assert not _in_redis(broker, envelope_id)
    assert _states(broker, envelope_id) == {DMP: "delivered", LAB: "delivered"}
    found = trace(broker.store, envelope_id)
    assert found["canonical"]["resourceType"] == "Bundle"
    assert "IF-1" in found["raw"]
    assert broker.client.hlen(keys.STORED) == 1, "the journal mark of its partition moved"


def test_retrying_parked_and_dead_lettered_messages_keep_their_envelope(make_broker, store_url):
    """X's first message is refused for good by the DMP (held), its second parked behind it;
    Y's waits out a retry for the lab: their envelopes stay. Z's ORU, delivered to the DMP and
    not for the lab, goes."""
    retry = {"max_attempts": 3, "initial_delay_s": 60, "max_delay_s": 60, "on_exhausted": "hold"}
    broker = make_broker(store_url=store_url, retry=retry)
    x, y, z = _adults(3)
    broker.fhir.mode = "reject"
    broker.receive(adt(x, "A01", control_id="DL-1"))
    broker.receive(adt(x, "A08", control_id="PK-1"))
    broker.run()
    broker.fhir.mode = "ok"
    broker.lab.mode = "error"
    broker.receive(adt(y, "A01", control_id="RT-1"))
    broker.receive(oru_r01(z, control_id="OK-1"))
    broker.run()
    broker.write_store()
    ids = {cid: _stored_id(broker, cid) for cid in ("DL-1", "PK-1", "RT-1", "OK-1")}
    assert _states(broker, ids["DL-1"]) == {DMP: "dead_lettered", LAB: "delivered"}
    assert _states(broker, ids["PK-1"]) == {DMP: "parked", LAB: "delivered"}
    assert _states(broker, ids["RT-1"]) == {DMP: "delivered", LAB: "retrying"}
    assert _states(broker, ids["OK-1"]) == {DMP: "delivered", LAB: "filtered"}
    assert {cid: _in_redis(broker, i) for cid, i in ids.items()} == {
        "DL-1": True,
        "PK-1": True,
        "RT-1": True,
        "OK-1": False,
    }


def _stored_id(broker, control_id: str) -> str:
    with broker.store.connect() as connection:
        return connection.execute(
            sa.select(messages.c.id).where(messages.c.control_id == control_id)
        ).scalar_one()


def test_a_resend_of_a_delivered_message_comes_from_the_store(make_broker, store_url):
    """Gone from Redis, resent to the DMP: the same envelope id and resource ids reach it again;
    then, delivered again, it leaves Redis again and nothing is left re-queued."""
    broker = make_broker(store_url=store_url)
    (x,) = _adults(1)
    broker.receive(adt(x, "A01", control_id="RS-1"))
    broker.run()
    envelope_id = _envelope_id(broker, "RS-1")
    broker.write_store()
    assert not _in_redis(broker, envelope_id)
    (first,) = broker.fhir.received
    broker.operations().resend(envelope_id, DMP, **WHO)
    broker.run()
    first_again, second = broker.fhir.received
    assert first_again == first
    assert _identifier(second) == _identifier(first) == envelope_id
    assert _resource_ids(second) == _resource_ids(first)
    assert _in_redis(broker, envelope_id), "a resend's envelope stays until the store has it"
    broker.write_store()
    assert _states(broker, envelope_id)[DMP] == "delivered"
    assert not _in_redis(broker, envelope_id)
    assert broker.client.hlen(keys.REOPENED) == 0


def _identifier(bundle: dict) -> str:
    return bundle["identifier"]["value"]


def _resource_ids(bundle: dict) -> list[str]:
    return sorted(
        f"{e['resource']['resourceType']}/{e['resource'].get('id')}" for e in bundle["entry"]
    )


def test_a_message_neither_in_redis_nor_in_the_store_is_a_clear_error(make_broker):
    """Resend of an unknown id: MessageNotFound, saying so, and nothing queued."""
    broker = make_broker()
    broker.write_store()
    with pytest.raises(MessageNotFound, match="no stored message 0123"):
        broker.operations().resend("0123" + "0" * 24, DMP, **WHO)
    assert broker.celery.take(()) is None


class _KilledAfterCommit(StoreWriter):
    """A writer killed between its commit and the MULTI that drops and acknowledges."""

    def finished(self, message_ids):
        raise RuntimeError("killed after the commit, before the MULTI")


def test_a_crash_between_commit_and_drop_loses_nothing(make_broker, store_url):
    """Killed after committing: the envelope is still in Redis and the records pending; the next
    writer stores nothing twice, then drops it."""
    broker = make_broker(store_url=store_url)
    (x,) = _adults(1)
    broker.receive(adt(x, "A01", control_id="CR-1"))
    broker.run()
    envelope_id = _envelope_id(broker, "CR-1")
    killed = _KilledAfterCommit(broker.client, broker.store, broker.settings)
    with pytest.raises(RuntimeError, match="killed"):
        killed.write_batch()
    assert _in_redis(broker, envelope_id)
    assert broker.client.xpending(keys.STORE, keys.STORE_GROUP)["pending"] > 0
    assert not broker.client.exists(keys.STORED), "the journal mark moved before the MULTI"
    broker.write_store()
    assert not _in_redis(broker, envelope_id)
    assert _states(broker, envelope_id) == {DMP: "delivered", LAB: "delivered"}
    with broker.store.connect() as connection:
        assert connection.execute(sa.select(sa.func.count()).select_from(messages)).scalar() == 1


class _ResentMeanwhile(StoreWriter):
    """A writer during whose batch an operator resends the message it is about to drop."""

    operations = None
    envelope_id = ""

    def finished(self, message_ids):
        done = super().finished(message_ids)
        self.operations.resend(self.envelope_id, DMP, **WHO)
        return done


def test_a_resend_while_the_writer_decides_keeps_the_envelope(make_broker):
    """The store says delivered, but a resend came after the writer read it: the envelope stays
    and the resend is delivered; once its record is stored, the envelope goes."""
    broker = make_broker()
    (x,) = _adults(1)
    broker.receive(adt(x, "A01", control_id="RM-1"))
    broker.run()
    envelope_id = _envelope_id(broker, "RM-1")
    writer = _ResentMeanwhile(broker.client, broker.store, broker.settings)
    writer.operations, writer.envelope_id = broker.operations(), envelope_id
    writer.write_batch()
    assert _in_redis(broker, envelope_id), "dropped while a resend was queued"
    assert broker.client.hget(keys.REOPENED, envelope_id) == b"1"
    broker.run()
    assert [_identifier(b) for b in broker.fhir.received] == [envelope_id, envelope_id]
    assert not broker.dead_letters.find(DMP)
    broker.write_store()
    assert not _in_redis(broker, envelope_id)
    assert broker.client.hlen(keys.REOPENED) == 0


def test_trim_cuts_the_stored_journal_and_acknowledged_queues(make_broker):
    """With the writer's marks, housekeeping cuts what is done however recent: the journal up
    to the last stored entry (TR-1, not TR-2, mapped and delivered but not stored yet, nor TR-3,
    not mapped), the queues up to what is acknowledged."""
    broker = make_broker(partitions=1)
    x, y, z = _adults(3)
    broker.receive(adt(x, "A01", control_id="TR-1"))
    broker.run()
    broker.write_store()
    broker.receive(adt(y, "A01", control_id="TR-2"))
    broker.run()
    broker.receive(adt(z, "A01", control_id="TR-3"))
    client = broker.client

    def journal() -> list[str]:
        return [raw_of(f).split(b"|")[9].decode() for _, f in client.xrange(keys.inbound(0))]

    assert journal() == ["TR-1", "TR-2", "TR-3"]
    client.delete(keys.TRIMMED)
    broker.rekick()  # beat's task: runs the trim (and queues the drains; not run here)
    assert journal() == ["TR-2", "TR-3"]
    assert client.xlen(keys.outbound(DMP, 0)) == 0
    assert client.xlen(keys.outbound(LAB, 0)) == 0
    broker.write_store()
    client.delete(keys.TRIMMED)
    broker.rekick()
    assert journal() == ["TR-3"]


def test_without_a_writer_trim_keeps_entries_until_the_retention(make_broker):
    """No writer ever ran (no marks): done entries stay until they are older than the retention."""
    broker = make_broker(partitions=1)
    (x,) = _adults(1)
    broker.receive(adt(x, "A01", control_id="NW-1"))
    broker.run()
    envelope_id = _envelope_id(broker, "NW-1")
    broker.client.delete(keys.TRIMMED)
    broker.rekick()
    assert broker.client.xlen(keys.inbound(0)) == 1
    assert broker.client.xlen(keys.outbound(DMP, 0)) == 1
    assert broker.client.ttl(keys.envelope(envelope_id)) > 0, "the retention TTL is the bound"


def test_a_dead_letter_without_its_envelope_is_replayed_from_the_store(make_broker):
    """A dead letter whose record kept no envelope, gone from Redis too (past the retention):
    the replay rebuilds it from the store and the DMP gets the same envelope id."""
    broker = make_broker(retry={"on_exhausted": "skip"})
    (x,) = _adults(1)
    broker.fhir.mode = "reject"
    broker.receive(adt(x, "A01", control_id="DN-1"))
    broker.run()
    broker.write_store()
    (letter,) = broker.dead_letters.find(DMP)
    envelope_id = letter["envelope_id"]
    assert _in_redis(broker, envelope_id), "an open dead letter's envelope stays"
    letter["envelope"] = None
    broker.dead_letters.save(letter)
    broker.client.delete(keys.envelope(envelope_id))
    broker.fhir.mode = "ok"
    broker.operations().replay(DMP, letter["id"], **WHO)
    broker.run()
    assert [_identifier(b) for b in broker.fhir.received] == [envelope_id]
    broker.write_store()
    assert _states(broker, envelope_id)[DMP] == "delivered"
    assert not _in_redis(broker, envelope_id)
