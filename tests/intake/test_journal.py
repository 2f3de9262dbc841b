"""The journal's dedupe records on a real Redis: bucketed hashes, the window, the upgrade, the size."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from typing import Any

import redis
import redis.asyncio

from broker import keys
from broker.envelope import new_id
from broker.intake.journal import AppendResult, Journal, content_digest, dedupe_digest

SOURCE = "chu-rabat-adt"


def _append(
    url: str,
    messages: Iterable[tuple[str, str, str]],
    *,
    window_s: int = 60,
    shard_digits: int | None = None,
) -> list[AppendResult]:
    """Append (adapter, envelope id, dedupe identity) messages in order; their results."""

    async def go() -> list[AppendResult]:
        client = redis.asyncio.Redis.from_url(url)
        options: dict[str, Any] = {} if shard_digits is None else {"shard_digits": shard_digits}
        journal = Journal(client, window_s, **options)
        try:
            results = []
            for source, envelope_id, identity in messages:
                fields = {"id": envelope_id, "source": source, "raw": b"MSH|..."}
                results.append(await journal.append(0, fields, dedupe=identity))
            return results
        finally:
            await client.aclose()

    return asyncio.run(go())


def _records(redis_client: redis.Redis) -> list[bytes]:
    """The names of the dedupe buckets' hashes (never the legacy string keys)."""
    return [
        name
        for name in redis_client.scan_iter(f"{keys.DEDUPE}*", count=1000)
        if redis_client.type(name) == b"hash"
    ]


def _identity(control_id: str) -> str:
    return dedupe_digest("HIS", "CHU-RABAT", control_id)


class TestRecords:
    def test_a_resend_names_the_envelope_it_repeats(self, redis_url, redis_client):
        """The record keeps the first envelope id; the resend is not journalled."""
        first, second = new_id(), new_id()
        results = _append(
            redis_url, [(SOURCE, first, _identity("R1")), (SOURCE, second, _identity("R1"))]
        )
        assert results[0].entry_id is not None
        assert not results[0].duplicate
        assert (results[1].duplicate, results[1].duplicate_of) == (True, first)
        assert results[1].legacy_reply is None
        assert redis_client.xlen(keys.inbound(0)) == 1
        assert int(redis_client.hget(keys.STATS, "duplicates")) == 1

    def test_envelope_ids_of_any_shape_come_back_as_written(self, redis_url):
        """new_id's hex is kept as bytes; any other id (or hex led by a zero byte) as text."""
        ids = ["env-1", "00ff", "ABCD", "abc", new_id()]
        originals = [(SOURCE, envelope_id, _identity(envelope_id)) for envelope_id in ids]
        resends = [(SOURCE, new_id(), _identity(envelope_id)) for envelope_id in ids]
        results = _append(redis_url, originals + resends)
        assert [r.duplicate_of for r in results[len(ids) :]] == ids

    def test_twenty_thousand_distinct_messages_are_all_journalled(self, redis_url, redis_client):
        """No false duplicate: every distinct control id is journalled and has its own record."""
        count = 20_000
        results = _append(
            redis_url, ((SOURCE, new_id(), _identity(f"D{n:08d}")) for n in range(count))
        )
        assert not [r for r in results if r.duplicate]
        assert redis_client.xlen(keys.inbound(0)) == count
        assert sum(int(redis_client.hlen(name)) for name in _records(redis_client)) == count

    def test_one_identity_on_two_adapters_is_two_messages(self, redis_url, redis_client):
        """The adapter is hashed into the record: hospital B's same MSH-3/4/10 is journalled."""
        identity = _identity("SHARED")
        results = _append(
            redis_url,
            [(SOURCE, new_id(), identity), ("chu-casa-adt", new_id(), identity)],
        )
        assert [r.duplicate for r in results] == [False, False]
        assert redis_client.xlen(keys.inbound(0)) == 2

    def test_without_an_identity_nothing_is_recorded(self, redis_url, redis_client):
        """``dedupe=None``: never a duplicate, no record written."""

        async def go() -> list[AppendResult]:
            client = redis.asyncio.Redis.from_url(redis_url)
            journal = Journal(client, 60)
            fields = {"id": new_id(), "source": SOURCE, "raw": b"x"}
            results = [await journal.append(0, fields, dedupe=None) for _ in range(2)]
            await client.aclose()
            return results

        assert [r.duplicate for r in asyncio.run(go())] == [False, False]
        assert _records(redis_client) == []


class TestWindow:
    def test_window_zero_means_no_dedupe(self, redis_url, redis_client):
        """PASSERELLE_DEDUPE_WINDOW_S=0: the same message twice is journalled twice."""
        identity = _identity("W0")
        results = _append(
            redis_url, [(SOURCE, new_id(), identity), (SOURCE, new_id(), identity)], window_s=0
        )
        assert [r.duplicate for r in results] == [False, False]
        assert redis_client.keys(f"{keys.DEDUPE}*") == []

    def test_every_bucket_expires_with_its_last_record(self, redis_url, redis_client):
        """Each bucket's TTL is at most the window plus one bucket (6 h of 24 h); none lasts."""
        _append(
            redis_url, ((SOURCE, new_id(), _identity(f"T{n}")) for n in range(200)), window_s=86_400
        )
        names = _records(redis_client)
        assert names
        ttls = {int(redis_client.ttl(name)) for name in names}
        assert all(0 < ttl <= 86_400 + 21_600 for ttl in ttls), ttls

    def test_a_resend_after_the_window_and_a_bucket_is_a_new_message(self, redis_url, redis_client):
        """A 1 s window (1 s buckets): a resend at once is a duplicate; two seconds on, new."""
        identity = _identity("LATE")
        (first,) = _append(redis_url, [(SOURCE, new_id(), identity)], window_s=1)
        recorded = int(redis_client.time()[0])
        assert not first.duplicate
        (again,) = _append(redis_url, [(SOURCE, new_id(), identity)], window_s=1)
        assert again.duplicate
        # Redis's clock decides: the record is found until window + one bucket have passed.
        while int(redis_client.time()[0]) < recorded + 2:
            time.sleep(0.05)
        (late,) = _append(redis_url, [(SOURCE, new_id(), identity)], window_s=1)
        assert not late.duplicate
        assert redis_client.xlen(keys.inbound(0)) == 2
        assert all(int(redis_client.ttl(name)) > 0 for name in _records(redis_client))


class TestUpgrade:
    def test_a_record_of_the_version_before_still_answers_a_resend(self, redis_url, redis_client):
        """``pl:dedupe:SRC:HASH`` (the reply kept per message) is read for one window after upgrade."""
        identity = content_digest({"resourceType": "Patient", "id": "p-1"})
        stored = b'{"resourceType": "OperationOutcome", "issue": []}'
        redis_client.set(keys.legacy_dedupe(SOURCE, identity), stored, ex=60)
        (result,) = _append(redis_url, [(SOURCE, new_id(), identity)])
        assert (result.duplicate, result.duplicate_of, result.legacy_reply) == (True, None, stored)
        assert redis_client.xlen(keys.inbound(0)) == 0
        assert _records(redis_client) == []


class TestSize:
    def test_records_keep_the_compact_encoding_and_cost_under_40_bytes(
        self, redis_url, redis_client
    ):
        """3,000 records in 16 hashes (~190 each, as full as 570 msg/s fills the 65,536 of a 6 h
        bucket): listpack (ziplist in 6.2), and MEMORY USAGE under 40 B a record (the string key
        per message it replaces cost ~300 B; docs/performance.md has the figures)."""
        count = 3_000
        _append(
            redis_url,
            ((SOURCE, new_id(), _identity(f"S{n:06d}")) for n in range(count)),
            window_s=86_400,
            shard_digits=1,
        )
        names = _records(redis_client)
        assert {redis_client.object("encoding", name) for name in names} <= {
            b"listpack",
            b"ziplist",
        }
        usage = sum(int(redis_client.memory_usage(name, samples=0)) for name in names)
        assert usage / count < 40, usage / count
