"""Stream helpers on a real Redis: pending entries first, one drainer, work detection."""

from __future__ import annotations

from broker import keys
from broker.streams import (
    DONE,
    HANDOVER,
    LOST,
    MORE,
    drainer_lock,
    ensure_group,
    has_work,
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
