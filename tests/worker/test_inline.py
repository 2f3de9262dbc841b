"""The journal drain task delivers what it fed in the same task (``broker.worker.inline``).

In process on a real Redis (``EagerBroker`` runs the task as a worker does; the tasks it queues
are recorded by ``StubCelery``). ``broker.call(DRAIN_INBOUND, 0)`` runs that one task, so what
reached the capture subscribers during it was delivered in line, and ``broker.celery.queued``
is every task it asked for.
"""

from __future__ import annotations

import pytest

from broker import keys
from broker.ack import read_ack
from broker.dispatch import DRAIN_INBOUND, DRAIN_OUTBOUND
from broker.testing import EagerBroker
from broker.worker import inline
from passerelle_demo.synthetic import adt, patients

DMP = "dmp-national"
LAB = "lab-legacy"


def receive(broker: EagerBroker, count: int, seed: int) -> list[str]:
    """Journal ``count`` ADT^A01 of different patients (each AA); return their control ids."""
    ids = []
    for i, patient in enumerate(patients(count, seed=seed)):
        control_id = f"M-{i}"
        assert read_ack(broker.receive(adt(patient, "A01", control_id=control_id))).code == "AA"
        ids.append(control_id)
    broker.celery.clear()  # the listener's kick of the journal drain: run by hand below
    return ids


def flags(broker: EagerBroker) -> list[str]:
    """The kick flags left set."""
    return sorted(k.decode() for k in broker.client.keys(keys.kick("*")))


def test_one_message_is_delivered_to_both_subscribers_in_the_journal_drains_task(make_broker):
    """No delivery task is queued: the journal drain's task delivered, and left no flag set."""
    broker = make_broker(partitions=1)
    receive(broker, 1, seed=1401)

    assert broker.call(DRAIN_INBOUND, 0) == 1

    assert broker.fhir_control_ids() == ["M-0"]
    assert broker.lab.control_ids() == ["M-0"]
    assert broker.celery.queued == []
    assert flags(broker) == [], "a kick flag set with no task queued and no drainer"
    for subscriber in (DMP, LAB):
        stream = keys.outbound(subscriber, 0)
        assert broker.client.xpending(stream, keys.DELIVER_GROUP)["pending"] == 0


def test_a_failing_receiver_gets_its_retry_scheduled_and_the_other_subscriber_its_message(
    make_broker,
):
    """A 503 in line holds the partition and schedules the retry, as the delivery task would."""
    broker = make_broker(partitions=1, retry={"initial_delay_s": 30, "max_delay_s": 30})
    receive(broker, 1, seed=1402)
    broker.fhir.fail_next(1, "error")

    broker.call(DRAIN_INBOUND, 0)

    assert broker.lab.control_ids() == ["M-0"]
    assert broker.fhir.status_counts() == {503: 1}
    (retry,) = broker.celery.queued
    assert (retry.name, retry.args) == (DRAIN_OUTBOUND, (DMP, 0))
    assert retry.countdown is not None
    assert retry.countdown > 1
    assert broker.client.exists(keys.hold(DMP, 0))
    assert flags(broker) == [], "the stopped drainer clears its flag; the retry is scheduled"

    broker.client.delete(keys.hold(DMP, 0))  # its time has come
    broker.run()
    assert broker.fhir_control_ids() == ["M-0"]


def test_a_journal_drain_of_many_messages_queues_its_delivery_drains(make_broker):
    """Past INLINE_MAX_MESSAGES the hop is amortised: other workers deliver, in parallel."""
    broker = make_broker(partitions=1)
    receive(broker, inline.INLINE_MAX_MESSAGES + 1, seed=1403)

    broker.call(DRAIN_INBOUND, 0)

    assert broker.fhir.received_control_ids == []
    assert sorted(broker.celery.kicked(DRAIN_OUTBOUND)) == [
        keys.outbound(DMP, 0),
        keys.outbound(LAB, 0),
    ]
    broker.run()
    assert len(broker.fhir_control_ids()) == inline.INLINE_MAX_MESSAGES + 1


def test_a_journal_drain_out_of_its_time_budget_queues_its_delivery_drains(make_broker):
    """It hands over with work left: nothing in line, its successor and the deliveries queued."""
    broker = make_broker(partitions=1, batch_size=1, drain_budget_s=1e-6)
    receive(broker, 2, seed=1404)

    assert broker.call(DRAIN_INBOUND, 0) == 1

    assert broker.fhir.received_control_ids == []
    assert sorted(broker.celery.kicked()) == sorted(
        [keys.inbound(0), keys.outbound(DMP, 0), keys.outbound(LAB, 0)]
    )
    broker.run()
    assert broker.fhir_control_ids() == ["M-0", "M-1"]


def test_past_the_inline_budget_the_delivery_drains_left_are_queued(make_broker, monkeypatch):
    """With no time left in line, each subscriber's drain is queued as before."""
    monkeypatch.setattr(inline, "INLINE_BUDGET_S", 0.0)
    broker = make_broker(partitions=1)
    receive(broker, 1, seed=1405)

    broker.call(DRAIN_INBOUND, 0)

    assert broker.fhir.received_control_ids == []
    assert sorted(broker.celery.kicked(DRAIN_OUTBOUND)) == [
        keys.outbound(DMP, 0),
        keys.outbound(LAB, 0),
    ]


def test_a_delivery_drain_raising_in_line_still_leaves_the_others_queued(make_broker, monkeypatch):
    """An error in the first drain run in line: the next subscriber's drain is queued."""
    broker = make_broker(partitions=1)
    receive(broker, 1, seed=1406)

    def crash(*args: object, **kwargs: object) -> int:
        raise RuntimeError("a bug in a drain")

    monkeypatch.setattr(inline, "drain_outbound", crash)
    with pytest.raises(RuntimeError):
        broker.call(DRAIN_INBOUND, 0)

    assert broker.celery.kicked(DRAIN_OUTBOUND) == [keys.outbound(LAB, 0)]


def test_the_first_delivery_in_line_takes_the_envelope_the_journal_drain_stored(
    make_broker, monkeypatch
):
    """One stored envelope is not opened again for the first subscriber; the second opens its own."""
    from broker import sealing

    opened: list[str] = []
    real_open = sealing.open

    def counting_open(stored: bytes, record_id: str, kind: str) -> bytes:
        if kind == "env":
            opened.append(record_id)
        return real_open(stored, record_id, kind)

    monkeypatch.setattr(sealing, "open", counting_open)
    broker = make_broker(partitions=1)
    receive(broker, 1, seed=1405)

    broker.call(DRAIN_INBOUND, 0)

    assert len(opened) == 1, "one subscriber took the pipeline's envelope, the other parsed it"
    assert broker.fhir_control_ids() == ["M-0"]
    assert broker.lab.control_ids() == ["M-0"]
