"""Stream helpers on a real Redis: pending entries first, one drainer, work detection."""

from __future__ import annotations

import time

from broker import keys
from broker.streams import (
    DONE,
    HANDOVER,
    LOST,
    MORE,
    drainer_lock,
    ensure_group,
    has_work,
    idle_with_work,
    read_batch,
)


class TestReadBatch:
    def test_unacknowledged_entries_come_back_first_in_order(self, redis_client):
        """A drainer that died leaves entries pending; the next one reads them before new ones."""
        ensure_group(redis_client, "s", "g")
        ids = [redis_client.xadd("s", {"n": str(i)}) for i in range(5)]
        first = read_batch(redis_client, "s", "g", 3)
        assert [e[0] for e in first] == [i.decode() for i in ids[:3]]
        again = read_batch(redis_client, "s", "g", 10)
        assert [e[0] for e in again] == [i.decode() for i in ids[:3]]
        redis_client.xack("s", "g", *[e[0] for e in again])
        rest = read_batch(redis_client, "s", "g", 10)
        assert [e[0] for e in rest] == [i.decode() for i in ids[3:]]

    def test_missing_group_is_created_from_the_start(self, redis_client):
        """Entries appended before the group existed are still read."""
        redis_client.xadd("late", {"n": "1"})
        assert len(read_batch(redis_client, "late", "g", 10)) == 1


class TestHasWork:
    def test_new_pending_and_done(self, redis_client):
        """Undelivered or pending entries are work; all acknowledged is none."""
        ensure_group(redis_client, "w", "g")
        assert not has_work(redis_client, "w", "g")
        redis_client.xadd("w", {"n": "1"})
        assert has_work(redis_client, "w", "g")
        entries = read_batch(redis_client, "w", "g", 10)
        assert has_work(redis_client, "w", "g")
        redis_client.xack("w", "g", entries[0][0])
        assert not has_work(redis_client, "w", "g")


class TestIdleWithWork:
    def test_only_streams_with_work_no_drainer_and_no_hold_are_named(self, redis_client):
        """One call answers for every stream as ``has_work``, a lock and a hold would."""
        for name in ("idle", "done", "locked", "held", "held-past", "pending", "no-group"):
            ensure_group(redis_client, name, "g")
        redis_client.delete("no-group")
        for name in ("idle", "locked", "held", "held-past", "pending", "no-group"):
            redis_client.xadd(name, {"n": "1"})
        redis_client.xadd("done", {"n": "1"})
        read_batch(redis_client, "done", "g", 10)
        redis_client.xack("done", "g", *[i for i, _ in redis_client.xrange("done")])
        read_batch(redis_client, "pending", "g", 10)  # read, never acknowledged
        redis_client.set(keys.lock("locked"), b"token")
        redis_client.set("hold:held", "2000.5")
        redis_client.set("hold:held-past", "999.5")
        streams = [
            ("idle", "g", None),
            ("done", "g", None),
            ("locked", "g", None),
            ("held", "g", "hold:held"),
            ("held-past", "g", "hold:held-past"),
            ("pending", "g", None),
            ("no-group", "g", None),  # entries, no group yet: work (XLEN)
            ("missing", "g", None),  # no stream at all
        ]
        assert idle_with_work(redis_client, streams, now=1000.0) == [0, 4, 5, 6]
        for index, (stream, group, _) in enumerate(streams):
            expected = has_work(redis_client, stream, group) and stream not in ("locked", "held")
            assert (index in [0, 4, 5, 6]) == expected, stream

    def test_nothing_to_look_at(self, redis_client):
        assert idle_with_work(redis_client, [], now=0.0) == []


class TestDrainerLock:
    def test_only_one_drainer_at_a_time(self, redis_client):
        """A second drainer of the same stream gets None while the first holds the lock."""
        with drainer_lock(redis_client, "x", 5) as first:
            assert first is not None
            with drainer_lock(redis_client, "x", 5) as second:
                assert second is None
        with drainer_lock(redis_client, "x", 5) as third:
            assert third is not None


class TestFinish:
    """A drainer given its group owns the kick flag; ``finish`` decides atomically."""

    def _lock(self, client, stream="f"):
        ensure_group(client, stream, "g")
        return drainer_lock(client, stream, 5, group="g")

    def test_the_flag_is_set_while_draining_so_arrivals_queue_no_task(self, redis_client):
        """Taking the lock sets the flag: a kick's SET NX then finds it and queues nothing."""
        with self._lock(redis_client) as lock:
            assert lock is not None
            assert redis_client.exists(keys.kick("f"))
            assert not redis_client.set(keys.kick("f"), b"1", nx=True)

    def test_no_work_left_releases_the_lock_and_clears_the_flag(self, redis_client):
        """DONE: the next arrival's kick finds the flag cleared and queues a task."""
        with self._lock(redis_client) as lock:
            assert lock.finish(keep=True) == DONE
            assert not redis_client.exists(keys.lock("f"))
            assert not redis_client.exists(keys.kick("f"))

    def test_an_arrival_before_finish_keeps_the_drainer_going(self, redis_client):
        """MORE: an entry appended after the last read (its kick queued nothing) is this
        drainer's; it keeps the lock and the flag and reads it."""
        with self._lock(redis_client) as lock:
            assert read_batch(redis_client, "f", "g", 10, pending=False) == []
            redis_client.xadd("f", {"n": "1"})
            assert lock.finish(keep=True) == MORE
            assert redis_client.get(keys.lock("f")) == lock.token
            assert redis_client.exists(keys.kick("f"))
            (entry,) = read_batch(redis_client, "f", "g", 10, pending=False)
            redis_client.xack("f", "g", entry[0])
            assert lock.finish(keep=True) == DONE

    def test_work_left_when_the_budget_is_spent_is_handed_over_with_the_flag_set(
        self, redis_client
    ):
        """HANDOVER: the lock is released, the flag stays set (the caller queues the task)."""
        with self._lock(redis_client) as lock:
            redis_client.xadd("f", {"n": "1"})
            assert lock.finish(keep=False) == HANDOVER
            assert not redis_client.exists(keys.lock("f"))
            assert redis_client.exists(keys.kick("f"))

    def test_pending_entries_are_work_and_are_counted_when_the_lock_is_taken(self, redis_client):
        """An entry read and never acknowledged (a dead drainer's) is reported and is work."""
        ensure_group(redis_client, "p", "g")
        redis_client.xadd("p", {"n": "1"})
        read_batch(redis_client, "p", "g", 10)
        with drainer_lock(redis_client, "p", 5, group="g") as lock:
            assert lock.pending == 1
            assert lock.finish(keep=True) == MORE

    def test_a_drainer_that_lost_its_lock_changes_nothing(self, redis_client):
        """LOST: another drainer took the stream over; its lock and flag are left alone."""
        with self._lock(redis_client) as lock:
            redis_client.set(keys.lock("f"), b"other")
            assert lock.finish(keep=True) == LOST
        assert redis_client.get(keys.lock("f")) == b"other"
        assert redis_client.exists(keys.kick("f"))

    def test_leaving_without_finish_releases_the_lock_and_clears_the_flag(self, redis_client):
        """An error, or a retry's back-off: the next arrival must queue a task again."""
        try:
            with self._lock(redis_client) as lock:
                assert lock is not None
                raise RuntimeError("a drain failed")
        except RuntimeError:
            pass
        assert not redis_client.exists(keys.lock("f"))
        assert not redis_client.exists(keys.kick("f"))


class TestAcquire:
    """What the lock's script does besides locking: the first read, the retry hold."""

    def test_the_first_batch_comes_with_the_lock_pending_entries_first(self, redis_client):
        """As read_batch: a dead drainer's unacknowledged entries, then (next read) new ones."""
        ensure_group(redis_client, "a", "g")
        old = redis_client.xadd("a", {"n": "1"}).decode()
        read_batch(redis_client, "a", "g", 10)  # read, never acknowledged: pending
        redis_client.xadd("a", {"n": "2"})
        with drainer_lock(redis_client, "a", 5, group="g", first_read=10) as lock:
            assert lock.pending == 1
            assert lock.take_first() == [(old, {b"n": b"1"})]
            assert lock.take_first() is None, "the first batch is handed over once"
            (new,) = read_batch(redis_client, "a", "g", 10, pending=False)
            assert new[1] == {b"n": b"2"}

    def test_with_nothing_pending_the_first_batch_is_the_new_entries(self, redis_client):
        redis_client.xadd("b", {"n": "1"})  # no group yet: the script creates it
        with drainer_lock(redis_client, "b", 5, group="g", first_read=10) as lock:
            assert [fields for _, fields in lock.take_first()] == [{b"n": b"1"}]

    def test_an_empty_stream_gives_an_empty_first_batch(self, redis_client):
        with drainer_lock(redis_client, "c", 5, group="g", first_read=10) as lock:
            assert lock.take_first() == []
            assert lock.finish(keep=True) == DONE

    def test_a_partition_waiting_out_a_retry_is_not_drained_and_its_flag_is_cleared(
        self, redis_client
    ):
        """The scheduled retry drains it; arrivals meanwhile kick again (the flag is clear)."""
        redis_client.set(keys.kick("d"), b"1")
        redis_client.set("hold:d", str(time.time() + 60))
        with drainer_lock(redis_client, "d", 5, group="g", hold="hold:d", hold_slack_s=0.5) as lock:
            assert lock is None
        assert not redis_client.exists(keys.lock("d"))
        assert not redis_client.exists(keys.kick("d"))

    def test_a_hold_whose_time_has_come_does_not_stop_the_drain(self, redis_client):
        redis_client.set("hold:e", str(time.time() + 0.2))  # within the slack
        with drainer_lock(redis_client, "e", 5, group="g", hold="hold:e", hold_slack_s=0.5) as lock:
            assert lock is not None

    def test_a_delivery_drains_first_batch_comes_with_its_envelopes_and_holds(self, redis_client):
        """What the drain would read next (its envelopes, its held patients), in the same script."""
        redis_client.set(keys.envelope("e1"), b"{envelope 1}")  # e2's has gone
        redis_client.hset("held:s", "patient-b", "dead-1")
        for env, pk in (("e1", "patient-a"), ("e2", "patient-b"), ("e3", "")):
            redis_client.xadd("f", {"env": env, "pk": pk})
        look_up = (keys.envelope(""), "held:s")
        with drainer_lock(redis_client, "f", 5, group="g", first_read=10, look_up=look_up) as lock:
            assert len(lock.take_first()) == 3
            envelopes, held = lock.take_looked_up()
            assert envelopes == [b"{envelope 1}", None, None]
            assert held == {"patient-b"}
            assert lock.take_looked_up() is None, "handed over once, with the first batch"

    def test_without_a_look_up_nothing_is_looked_up(self, redis_client):
        redis_client.xadd("g", {"env": "e1", "pk": "p"})
        with drainer_lock(redis_client, "g", 5, group="g", first_read=10) as lock:
            assert lock.take_looked_up() is None


class TestFinishInTheCommit:
    """``finish_in`` queues the finish on the batch's MULTI: same outcomes, one round trip."""

    def test_the_commit_and_the_finish_are_one_transaction(self, redis_client):
        ensure_group(redis_client, "m", "g")
        redis_client.xadd("m", {"n": "1"})
        with drainer_lock(redis_client, "m", 5, group="g", first_read=10) as lock:
            ((entry_id, _),) = lock.take_first()
            pipe = redis_client.pipeline(transaction=True)
            pipe.xack("m", "g", entry_id)
            lock.finish_in(pipe, keep=True)
            replies = pipe.execute()
            assert lock.finished_with(replies[-1]) == DONE
            assert lock.finished
        assert not redis_client.exists(keys.lock("m"))
        assert not redis_client.exists(keys.kick("m"))

    def test_an_arrival_before_the_commit_keeps_the_drainer_going(self, redis_client):
        ensure_group(redis_client, "n", "g")
        redis_client.xadd("n", {"n": "1"})
        with drainer_lock(redis_client, "n", 5, group="g", first_read=10) as lock:
            ((entry_id, _),) = lock.take_first()
            redis_client.xadd("n", {"n": "2"})
            pipe = redis_client.pipeline(transaction=True)
            pipe.xack("n", "g", entry_id)
            lock.finish_in(pipe, keep=True)
            assert lock.finished_with(pipe.execute()[-1]) == MORE
            assert not lock.finished
