"""Standby: a worker done with a journal drain takes the next partitions without a Celery task.

On a real Redis with ``EagerBroker`` (the listener's intake, the drains, the capture
subscribers; ``StubCelery`` records every task queued instead of publishing it). The waiter runs
``broker.standby.stand_by`` in a thread, as a pool process does after its drain task; tests that
need a waiter that is registered but not waiting (one that died, or lapsed) write its entry in
``pl:standby`` themselves.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from broker import keys, standby
from broker.ack import read_ack
from broker.dispatch import DRAIN_INBOUND, DRAIN_OUTBOUND, QUEUE, Kicker
from broker.testing import EagerBroker
from passerelle_demo.synthetic import adt, patients


def receive(broker: EagerBroker, seed: int, control_id: str) -> None:
    """One ADT^A01 of a new patient, answered AA."""
    (patient,) = patients(1, seed=seed)
    assert read_ack(broker.receive(adt(patient, "A01", control_id=control_id))).code == "AA"


def wait_for(condition, what: str, timeout: float = 10.0) -> None:
    """Poll ``condition`` until it holds (an event in another thread), or fail saying ``what``."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


@contextmanager
def waiter(broker: EagerBroker, budget_s: float = 2.0, most: int = 1) -> Iterator[list[Any]]:
    """A worker standing by in a thread; yields what it ran (a journal partition's number, or
    ``(subscriber, partition)`` for a delivery drain), joins it on exit."""
    drained: list[Any] = []

    def run(task: str, args: list[Any]) -> int:
        drained.append(args[0] if task == DRAIN_INBOUND else tuple(args))
        return broker.call(task, *args)

    thread = threading.Thread(
        target=standby.stand_by,
        kwargs={
            "client": broker.client,
            "run": run,
            "kicker": Kicker(broker.celery, broker.client, standby.hand),
            "budget_s": budget_s,
            "most_waiters": most,
        },
    )
    thread.start()
    try:
        yield drained
    finally:
        thread.join()


def live_entry(broker: EagerBroker, member: str, seconds: float) -> None:
    """Register ``member`` in ``pl:standby`` as live for ``seconds`` (negative: lapsed)."""
    broker.client.zadd(keys.STANDBY, {member: time.time() + seconds})


def test_a_message_for_an_idle_partition_goes_to_the_waiting_worker_not_to_celery(make_broker):
    broker = make_broker(partitions=1)
    # A budget that outlasts a loaded host's receive: a 2 s one once ran out between the
    # hand-over and the waiter's pop in CI, and the partition went back to Celery.
    with waiter(broker, budget_s=6.0) as drained:
        wait_for(lambda: broker.client.zcard(keys.STANDBY) == 1, "the waiter to register")

        receive(broker, seed=1501, control_id="S-1")
        assert broker.celery.queued == [], "the listener queued a task a waiter could take"

        wait_for(lambda: broker.lab.control_ids() == ["S-1"], "the waiter's delivery")
        assert broker.fhir_control_ids() == ["S-1"]
        assert drained == [0]

        receive(broker, seed=1502, control_id="S-2")  # it waits again after its drain
        wait_for(lambda: broker.lab.control_ids() == ["S-1", "S-2"], "the second delivery")
        assert broker.celery.queued == []
    assert drained == [0, 0]
    assert broker.client.zcard(keys.STANDBY) == 0, "a waiter that left is still registered"
    assert broker.client.llen(keys.WAKE) == 0
    assert broker.client.keys(keys.kick("*")) == [], "a kick flag left set with nothing owed"


def test_without_a_waiter_the_listener_queues_the_drain_task(make_broker):
    broker = make_broker(partitions=1)
    receive(broker, seed=1503, control_id="S-3")
    assert broker.celery.kicked(DRAIN_INBOUND) == [keys.inbound(0)]
    assert broker.client.llen(keys.WAKE) == 0


def test_a_lapsed_waiter_is_handed_nothing(make_broker):
    """A worker killed while waiting stops counting once its entry lapses."""
    broker = make_broker(partitions=1)
    live_entry(broker, "dead-worker:1", seconds=-1)
    receive(broker, seed=1504, control_id="S-4")
    assert broker.celery.kicked(DRAIN_INBOUND) == [keys.inbound(0)]
    assert broker.client.llen(keys.WAKE) == 0


def test_the_sweep_queues_what_was_handed_to_a_waiter_that_died(make_broker):
    broker = make_broker(partitions=1)
    live_entry(broker, "doomed-worker:1", seconds=600)
    receive(broker, seed=1505, control_id="S-5")
    assert broker.celery.queued == []
    assert broker.client.lrange(keys.WAKE, 0, -1) == [b"0"]

    broker.client.zrem(keys.STANDBY, "doomed-worker:1")  # it died before taking it
    assert standby.sweep(broker.client, broker.kicker) == 1

    assert broker.celery.kicked(DRAIN_INBOUND) == [keys.inbound(0)]
    assert broker.client.llen(keys.WAKE) == 0
    broker.run()
    assert broker.lab.control_ids() == ["S-5"]


def test_the_sweep_leaves_to_the_live_waiters_what_they_can_take(make_broker):
    """Two partitions handed over, one live waiter: the oldest goes back to Celery."""
    broker = make_broker(partitions=2)
    live_entry(broker, "waiter:1", seconds=600)
    broker.client.rpush(keys.WAKE, 0, 1)

    assert standby.sweep(broker.client, broker.kicker) == 1

    assert broker.celery.kicked(DRAIN_INBOUND) == [keys.inbound(0)]
    assert broker.client.lrange(keys.WAKE, 0, -1) == [b"1"]


def test_a_worker_does_not_wait_while_celery_has_tasks_queued(make_broker):
    """Standby never keeps the pool from a queued retry or delivery drain."""
    broker = make_broker(partitions=1)
    broker.client.rpush(QUEUE, b"a task waiting for a pool process")
    try:
        with waiter(broker, budget_s=30) as drained:
            pass  # returns at once: the join does not wait out the budget
        assert drained == []
        assert broker.client.zcard(keys.STANDBY) == 0
    finally:
        broker.client.delete(QUEUE)


def test_no_more_workers_wait_than_allowed(make_broker):
    broker = make_broker(partitions=1)
    live_entry(broker, "other-waiter:1", seconds=600)
    with waiter(broker, budget_s=30, most=1) as drained:
        pass
    assert drained == []
    assert broker.client.zrange(keys.STANDBY, 0, -1) == [b"other-waiter:1"]


def test_a_journal_drain_hands_its_second_subscribers_delivery_to_a_waiter(make_broker):
    """Two subscribers fed: one delivery runs in the drain's task, the other in a waiting worker,
    side by side; no Celery task for either."""
    broker = make_broker(partitions=1)
    receive(broker, seed=1506, control_id="S-6")  # no waiter yet: a drain task is queued
    with waiter(broker) as drained:
        wait_for(lambda: broker.client.zcard(keys.STANDBY) == 1, "the waiter to register")
        ran = broker.run()
        assert [task.name for task in ran] == [DRAIN_INBOUND]
        wait_for(lambda: broker.lab.control_ids() == ["S-6"], "the MLLP delivery")
        wait_for(lambda: broker.fhir_control_ids() == ["S-6"], "the FHIR delivery")
    subscribers = {spec.id for spec in broker.subscribers}
    assert len(drained) == 1, drained
    (subscriber, partition) = drained[0]
    assert subscriber in subscribers
    assert partition == 0
    assert broker.celery.queued == []
    assert broker.client.hget(keys.STATS, "standby_delivery") == b"1"
    assert broker.client.keys(keys.kick("*")) == [], "a kick flag left set with nothing owed"


def test_without_a_waiter_both_deliveries_run_in_the_drains_task(make_broker):
    broker = make_broker(partitions=1)
    receive(broker, seed=1507, control_id="S-7")
    assert [task.name for task in broker.run()] == [DRAIN_INBOUND]
    assert broker.lab.control_ids() == ["S-7"]
    assert broker.fhir_control_ids() == ["S-7"]
    assert broker.client.hget(keys.STATS, "standby_delivery") is None


def test_the_sweep_queues_a_delivery_drain_handed_to_a_waiter_that_died(make_broker):
    broker = make_broker(partitions=2)
    subscriber = broker.subscribers[0].id
    live_entry(broker, "doomed-worker:2", seconds=600)
    assert standby.hand(broker.client, DRAIN_OUTBOUND, [subscriber, 1])
    assert broker.client.lrange(keys.WAKE, 0, -1) == [f"o:{subscriber}:1".encode()]
    assert not standby.hand(broker.client, DRAIN_OUTBOUND, [subscriber, 0]), (
        "handed more drains than there are live waiters"
    )

    broker.client.zrem(keys.STANDBY, "doomed-worker:2")
    assert standby.sweep(broker.client, broker.kicker) == 1

    assert broker.celery.kicked(DRAIN_OUTBOUND) == [keys.outbound(subscriber, 1)]
    assert broker.client.llen(keys.WAKE) == 0


def test_wake_items_name_their_drain_both_ways():
    for task, args in ((DRAIN_INBOUND, [7]), (DRAIN_OUTBOUND, ["dmp-national", 3])):
        item = standby.wake_item(task, args)
        assert item is not None
        assert standby.wake_task(item.encode()) == (task, args)
    assert standby.wake_item("passerelle.rekick", []) is None


def test_a_waiter_alone_delivers_in_line_without_trying_to_hand_over(make_broker):
    """At light load the worker that drains is the only one standing by: handing the second
    subscriber's delivery over would fail for every message, so it is not even tried (the
    hand-over script is never loaded) and both deliveries run in line."""
    broker = make_broker(partitions=1)
    broker.client.script_flush()
    with waiter(broker) as drained:
        wait_for(lambda: broker.client.zcard(keys.STANDBY) == 1, "the waiter to register")
        receive(broker, seed=1508, control_id="S-8")
        wait_for(lambda: broker.lab.control_ids() == ["S-8"], "the MLLP delivery")
        wait_for(lambda: broker.fhir_control_ids() == ["S-8"], "the FHIR delivery")
    assert drained == [0]
    assert broker.celery.queued == []
    assert broker.client.script_exists(standby._HAND_SCRIPT.sha) == [False], (
        "a hand-over was tried with no other waiter"
    )
    assert broker.client.hget(keys.STATS, "standby_delivery") is None


def test_a_waiter_with_another_waiting_hands_the_second_delivery_over(make_broker):
    """A second waiter live when the first popped its partition: the delivery goes to it."""
    broker = make_broker(partitions=1)
    with waiter(broker, most=2) as first:
        wait_for(lambda: broker.client.zcard(keys.STANDBY) == 1, "the first waiter")
        with waiter(broker, most=2) as second:
            wait_for(lambda: broker.client.zcard(keys.STANDBY) == 2, "the second waiter")
            receive(broker, seed=1509, control_id="S-9")
            wait_for(lambda: broker.lab.control_ids() == ["S-9"], "the MLLP delivery")
            wait_for(lambda: broker.fhir_control_ids() == ["S-9"], "the FHIR delivery")
    ran = [*first, *second]
    assert len(ran) == 2, ran  # the journal drain, and one delivery drain
    assert 0 in ran, ran
    assert broker.client.hget(keys.STATS, "standby_delivery") == b"1"
    assert broker.celery.queued == []
