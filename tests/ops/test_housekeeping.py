"""Housekeeping (``broker.ops.housekeeping``) in process on a real Redis: no Celery, no beat.

The re-kick and the takeover of a dead drainer's stream, backpressure and the retention trim.

docs/reliability.md §2 bounds the extra delay a killed drainer costs by
``claim_idle_s + rekick_interval_s``. These tests prove the mechanism behind the bound without
measuring time: the dead drainer's lock lives at most ``claim_idle_s``; while it lives nobody
drains the stream; once it is gone the next re-kick queues the stream whatever stale kick flag is
left, and the next drainer reads the dead one's pending entries first; beat runs the re-kick
every ``rekick_interval_s`` (``tests/worker/test_celery_app.py``).
"""

from __future__ import annotations

import redis

from broker import keys
from broker.ack import read_ack
from broker.dispatch import DRAIN_APP_ACKS, DRAIN_INBOUND, DRAIN_OUTBOUND
from broker.streams import drainer_lock, ensure_group, read_batch
from broker.testing import wait_until
from passerelle_demo.synthetic import adt, patients

DMP = "dmp-national"
LAB = "lab-legacy"


def test_the_rekick_kicks_every_stream_with_work_and_no_live_drainer(make_broker):
    """Kicked: new entries, a dead drainer's pending ones; not: idle, live lock, waiting out a retry."""
    broker = make_broker(partitions=4)
    client = broker.client
    entry = {"env": "e", "pk": "p", "partition": "0"}

    def queue(stream: str, group: str, *, read: bool = False, ack: bool = False) -> None:
        ensure_group(client, stream, group)
        entry_id = client.xadd(stream, entry)
        if read:
            read_batch(client, stream, group, 10)
        if ack:
            client.xack(stream, group, entry_id)

    queue(keys.inbound(0), keys.PIPELINE_GROUP)  # journalled, not yet mapped
    queue(keys.inbound(1), keys.PIPELINE_GROUP, read=True)  # read by a drainer that died
    queue(keys.inbound(2), keys.PIPELINE_GROUP, read=True, ack=True)  # done
    queue(keys.outbound(DMP, 0), keys.DELIVER_GROUP)  # waiting
    queue(keys.outbound(DMP, 1), keys.DELIVER_GROUP, read=True)  # a dead drainer's
    queue(keys.outbound(DMP, 2), keys.DELIVER_GROUP, read=True)  # a live drainer's
    client.set(keys.lock(keys.outbound(DMP, 2)), b"token", px=60_000)
    queue(keys.outbound(DMP, 3), keys.DELIVER_GROUP, read=True)  # waiting out a retry
    client.set(keys.hold(DMP, 3), "9999999999")
    queue(keys.outbound(LAB, 0), keys.DELIVER_GROUP, read=True, ack=True)  # done
    # Kick flags a lost task left behind (they live KICK_FLAG_TTL_S): the re-kick must not wait.
    for stream in (keys.inbound(1), keys.outbound(DMP, 1)):
        client.set(keys.kick(stream), b"1", ex=60)

    kicked = broker.rekick()

    expected = {keys.inbound(0), keys.inbound(1), keys.outbound(DMP, 0), keys.outbound(DMP, 1)}
    assert set(broker.celery.kicked()) == expected
    assert kicked == len(broker.celery.kicked()) == 4
    assert {t.name for t in broker.celery.queued} == {DRAIN_INBOUND, DRAIN_OUTBOUND}


def test_the_rekick_kicks_an_enhanced_sources_unsent_application_acks(make_broker):
    """Application ACKs waiting for an enhanced-mode source are a stream with work too."""
    broker = make_broker(inbound={"ack_mode": "enhanced", "reply_to": "127.0.0.1:9"})
    stream = keys.app_acks("chu-rabat-adt")
    ensure_group(broker.client, stream, keys.DELIVER_GROUP)
    broker.client.xadd(stream, {"ack": b"MSH|", "envelope": "e"})
    broker.rekick()
    assert broker.celery.kicked(DRAIN_APP_ACKS) == [stream]


def test_a_dead_drainers_stream_waits_for_its_lock_then_its_pending_entry_goes_first(
    make_broker,
):
    """Killed mid-send: nobody drains before claim_idle_s; then re-kick, X-1 re-sent first, X-2 after."""
    broker = make_broker(partitions=1, claim_idle_s=3.0, deliver_inline=False)
    x = patients(1, seed=1251)[0]
    for control_id, event in (("X-1", "A01"), ("X-2", "A08")):
        assert read_ack(broker.receive(adt(x, event, control_id=control_id))).code == "AA"
    broker.run(DRAIN_INBOUND)
    broker.celery.clear()
    stream = keys.outbound(DMP, 0)

    # A drainer takes the lock and reads X-1, then dies: never released, never acknowledged.
    dead = drainer_lock(broker.client, stream, broker.settings.claim_idle_s)
    assert dead.__enter__() is not None
    (taken,) = read_batch(broker.client, stream, keys.DELIVER_GROUP, 1)
    assert 0 < broker.client.pttl(keys.lock(stream)) <= 3000, "the lock outlives claim_idle_s"

    assert broker.call(DRAIN_OUTBOUND, DMP, 0) == 0
    broker.rekick()
    assert stream not in broker.celery.kicked(), "kicked while the dead drainer's lock lives"
    assert broker.fhir.received_control_ids == []

    assert wait_until(lambda: not broker.client.exists(keys.lock(stream)), 10)
    broker.celery.clear()
    broker.client.set(keys.kick(stream), b"1", ex=60)  # the dead drainer's task's flag
    broker.rekick()
    assert stream in broker.celery.kicked(DRAIN_OUTBOUND)
    (pending,) = broker.client.xpending_range(stream, keys.DELIVER_GROUP, "-", "+", 10)
    assert pending["message_id"].decode() == taken[0]
    broker.run()

    assert broker.fhir_control_ids() == ["X-1", "X-2"]
    assert broker.client.xpending(stream, keys.DELIVER_GROUP)["pending"] == 0
    dead.__exit__(None, None, None)  # the dead drainer's release: its token no longer matches


def test_backpressure_is_set_by_the_check_and_expires_by_itself(make_broker):
    """A backlog over max_backlog sets pl:pressure naming it, with a TTL of three re-kick periods."""
    broker = make_broker(max_backlog=1, rekick_interval_s=2.0, partitions=1)
    stream = keys.outbound(DMP, 0)
    ensure_group(broker.client, stream, keys.DELIVER_GROUP)
    for _ in range(2):
        broker.client.xadd(stream, {"env": "e", "pk": "p", "partition": "0"})
    broker.rekick()
    assert DMP in broker.client.get(keys.PRESSURE).decode()
    assert 0 < broker.client.ttl(keys.PRESSURE) <= 6, "a stopped beat would leave it for ever"
    broker.client.delete(stream)
    broker.rekick()
    assert not broker.client.exists(keys.PRESSURE), "the next check under the limit lifts it"


def test_an_undelivered_entry_past_the_retention_ends_as_a_dead_letter(make_broker):
    """A queue entry older than the retention that no subscriber confirmed is a dead letter, not dropped."""
    broker = make_broker(partitions=1)
    stream = keys.outbound(DMP, 0)
    ensure_group(broker.client, stream, keys.DELIVER_GROUP)
    broker.client.xadd(stream, {"env": "gone", "pk": "p", "partition": "0"}, id="1-0")  # 1970
    broker.rekick()  # kicks the stream, then runs the retention trim
    broker.run()
    assert broker.dead_letters.find(DMP), "dropped without a trace"


def test_the_retention_trim_cuts_finished_entries_and_keeps_unfinished_ones(make_broker):
    """Past the retention, an acknowledged entry is cut; one read and not acknowledged (a drain in
    progress or a dead drainer's), and one not read yet, are kept, whatever their age."""
    broker = make_broker(partitions=1)
    client = broker.client
    done, pending, unread = keys.outbound(DMP, 0), keys.outbound(LAB, 0), keys.inbound(0)
    for stream, group in ((done, keys.DELIVER_GROUP), (pending, keys.DELIVER_GROUP)):
        ensure_group(client, stream, group)
        client.xadd(stream, {"env": "old"}, id="1-0")  # 1970, far past the retention
        client.xadd(stream, {"env": "new"}, id="2-0")
        read_batch(client, stream, group, 10)
    client.xack(done, keys.DELIVER_GROUP, "1-0", "2-0")
    ensure_group(client, unread, keys.PIPELINE_GROUP)
    client.xadd(unread, {"raw": "old"}, id="1-0")
    client.delete(keys.TRIMMED)
    broker.rekick()  # runs the retention trim (no drain runs here)
    assert client.xlen(done) == 0
    assert [i for i, _ in client.xrange(pending)] == [b"1-0", b"2-0"]
    assert [i for i, _ in client.xrange(unread)] == [b"1-0"]


def test_dead_letters_recorded_before_the_open_index_are_indexed_once(
    redis_client: redis.Redis,
) -> None:
    """An upgrade: records without pl:dlopen:SUB; housekeeping builds it once, from the status."""
    from broker.delivery.dead_letter import DeadLetterStore
    from broker.ops.housekeeping import index_dead_letters

    store = DeadLetterStore(redis_client)
    pipe = redis_client.pipeline(transaction=True)
    ids = [
        store.add(
            pipe,
            subscriber="dmp",
            envelope_id=f"e{n}",
            envelope_json=b'{"id": "e"}',
            partition=0,
            patient="",
            entry_id=f"{n}-0",
            reason="synthetic",
            attempts=[],
            hold=False,
        )
        for n in range(3)
    ]
    pipe.execute()
    record = store.get("dmp", ids[0])
    assert record is not None
    record["status"] = "discarded"
    store.save(record)
    assert store.open_count("dmp") == 2
    redis_client.delete(keys.dead_open("dmp"))  # as a version without the index left it
    assert store.open_count("dmp") == 0
    assert index_dead_letters(redis_client) == 1
    assert redis_client.smembers(keys.dead_open("dmp")) == {ids[1].encode(), ids[2].encode()}
    redis_client.delete(keys.dead_open("dmp"))
    assert index_dead_letters(redis_client) == 0  # once per Redis
    assert store.open_count("dmp") == 0
