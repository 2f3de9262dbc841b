"""Stream helpers on a real Redis: pending entries first, one drainer, work detection."""

from __future__ import annotations

from broker.streams import drainer_lock, ensure_group, has_work, read_batch


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
