"""Rates, growth and the time to backpressure (``broker.ops.rates``), from samples on a real Redis.

The flows are computed from synthetic samples whose answer is worked out by hand here; the
recording is checked against what was put in Redis, and the counters it reads against what the
drains actually did (an in-process broker: no Celery, no beat).
"""

from __future__ import annotations

import json

import pytest
import redis

from broker import keys
from broker.ack import read_ack
from broker.dispatch import DRAIN_INBOUND
from broker.ops.rates import (
    KEPT,
    SAMPLE_INTERVAL_S,
    TTL_S,
    Sample,
    history,
    journal_flow,
    record,
    subscriber_flow,
)
from broker.ops.stats import parked
from broker.settings import Settings
from passerelle_demo.synthetic import adt, patients

DMP = "dmp-national"
LAB = "lab-legacy"
T0 = 1_800_000_000.0


def _falling_behind(
    *, offered: float, delivered: float, start: int = 1_000, every: float = 5.0, n: int = 13
) -> list[Sample]:
    """Samples ``every`` seconds: ``offered`` routed and ``delivered`` delivered per second."""
    return [
        Sample(
            at=T0 + i * every,
            counters={
                f"queued:{DMP}": int(offered * i * every),
                f"delivered:{DMP}": int(delivered * i * every),
            },
            backlog={DMP: start + int((offered - delivered) * i * every)},
        )
        for i in range(n)
    ]


class TestSubscriberFlow:
    def test_offered_sustained_growth_and_time_to_the_limit(self) -> None:
        """100/s routed, 80/s delivered over 60 s: growth +20/s; 2,200 waiting reach 10,000 in 390 s."""
        flow = subscriber_flow(_falling_behind(offered=100, delivered=80), DMP, max_backlog=10_000)
        assert flow.offered_per_s == pytest.approx(100)
        assert flow.sustained_per_s == pytest.approx(80)
        assert flow.growth_per_s == pytest.approx(20)
        assert flow.window_s == pytest.approx(60)
        assert flow.backlog == 1_000 + 20 * 60
        assert flow.seconds_to_backpressure == pytest.approx((10_000 - 2_200) / 20)

    def test_a_draining_backlog_has_negative_growth_and_no_time_to_the_limit(self) -> None:
        """Delivering faster than offered: the backlog shrinks and backpressure is not coming."""
        flow = subscriber_flow(
            _falling_behind(offered=50, delivered=70, start=5_000), DMP, max_backlog=10_000
        )
        assert flow.growth_per_s == pytest.approx(-20)
        assert flow.seconds_to_backpressure is None

    def test_a_backlog_past_the_limit_is_zero_seconds_away(self) -> None:
        """Over max_backlog, backpressure is already due: 0 s, even while draining."""
        samples = _falling_behind(offered=10, delivered=30, start=20_000)
        assert subscriber_flow(samples, DMP, max_backlog=10_000).seconds_to_backpressure == 0.0

    def test_growth_is_the_slope_over_the_window_not_the_last_step(self) -> None:
        """A noisy backlog (±100 every other sample) still gives its trend, +10/s; its first and
        last samples alone would say +13.6/s."""
        samples = [
            Sample(at=T0 + i * 5, backlog={DMP: 1_000 + 50 * i + (100 if i % 2 else -100)})
            for i in range(12)
        ]
        growth = subscriber_flow(samples, DMP, max_backlog=10**6).growth_per_s
        assert growth == pytest.approx(10, abs=1)

    def test_only_the_last_minute_counts(self) -> None:
        """A sample older than the window, with a burst before it, does not weigh in the rates."""
        recent = _falling_behind(offered=100, delivered=100)
        old = Sample(at=T0 - 100, counters={f"queued:{DMP}": -50_000, f"delivered:{DMP}": 0})
        flow = subscriber_flow([old, *recent], DMP, max_backlog=10**6)
        assert flow.offered_per_s == pytest.approx(100)
        assert flow.window_s == pytest.approx(60)

    @pytest.mark.parametrize(
        "samples",
        [
            pytest.param([], id="no-sample"),
            pytest.param([Sample(at=T0, backlog={DMP: 5})], id="one-sample"),
            pytest.param(
                [Sample(at=T0, counters={f"delivered:{DMP}": 100}), Sample(at=T0 + 10)],
                id="counter-went-back",
            ),
        ],
    )
    def test_unknown_rates_are_none(self, samples: list[Sample]) -> None:
        """Without two samples, or across a counter reset (a flushed Redis), no rate is made up."""
        flow = subscriber_flow(samples, DMP, max_backlog=10)
        assert flow.sustained_per_s is None
        assert flow.seconds_to_backpressure is None


class TestJournalFlow:
    def test_journalled_mapped_and_the_memory_mark(self) -> None:
        """Received 50/s, mapped 40/s (routed + filtered + failed); memory +1 MB/s toward 90 % of 1 GB."""
        mb = 1_000_000
        samples = [
            Sample(
                at=T0 + i * 5,
                counters={
                    "received": 250 * i,
                    "routed": 150 * i,
                    "filtered": 40 * i,
                    "failed": 10 * i,
                },
                journal=10 * 5 * i,
                memory_used=100 * mb + 5 * mb * i,
                memory_limit=1_000 * mb,
            )
            for i in range(13)
        ]
        flow = journal_flow(samples, max_memory_ratio=0.9)
        assert flow.offered_per_s == pytest.approx(50)
        assert flow.sustained_per_s == pytest.approx(40)
        assert flow.growth_per_s == pytest.approx(10)
        assert flow.backlog == 600
        assert flow.seconds_to_backpressure == pytest.approx((900 - 160) / 1)  # MB at 1 MB/s

    def test_without_a_memory_limit_there_is_no_mark(self) -> None:
        """maxmemory 0 (unlimited): the journal never turns backpressure on by itself."""
        samples = [Sample(at=T0 + i, journal=i, memory_used=10 * i) for i in range(3)]
        assert journal_flow(samples, max_memory_ratio=0.9).seconds_to_backpressure is None


class TestRecord:
    def test_a_sample_holds_counters_backlogs_and_parked(self, redis_client: redis.Redis) -> None:
        """The kept sample reads the journal, each subscriber's depth and its parked messages."""
        settings = Settings(partitions=2)
        redis_client.hset(keys.STATS, mapping={"received": 7, f"delivered:{DMP}": 3})
        for _ in range(3):
            redis_client.xadd(keys.inbound(1), {"raw": b"MSH"})
        redis_client.xgroup_create(keys.outbound(DMP, 0), keys.DELIVER_GROUP, id="0", mkstream=True)
        for _ in range(2):
            redis_client.xadd(keys.outbound(DMP, 0), {"env": "e"})
        redis_client.xreadgroup(keys.DELIVER_GROUP, "drainer", {keys.outbound(DMP, 0): ">"}, 1)
        redis_client.hset(keys.held(DMP), mapping={"pk-1": "d1", "pk-2": "d2"})
        for patient, count in (("pk-1", 2), ("pk-2", 3)):
            for _ in range(count):
                redis_client.xadd(keys.parked(DMP, patient), {"env": "e"})

        kept = record(redis_client, registered=[DMP, LAB], settings=settings, now=T0)

        assert kept is not None
        [stored] = history(redis_client)
        assert stored == kept
        assert stored.counters == {"received": 7, f"delivered:{DMP}": 3}
        assert stored.journal == 3
        assert stored.backlog == {DMP: 2, LAB: 0}, "one pending and one unread wait for DMP"
        assert stored.parked == {DMP: 5, LAB: 0}
        assert stored.memory_used > 0

    def test_one_sample_per_interval_capped_and_expiring(self, redis_client: redis.Redis) -> None:
        """A second call within the interval keeps nothing; the list never passes KEPT; it expires."""
        settings = Settings(partitions=1)
        assert record(redis_client, registered=[], settings=settings, now=T0) is not None
        assert record(redis_client, registered=[], settings=settings, now=T0 + 1) is None
        for i in range(1, KEPT + 10):
            record(redis_client, registered=[], settings=settings, now=T0 + i * SAMPLE_INTERVAL_S)
        kept = history(redis_client)
        assert len(kept) == KEPT
        assert [s.at for s in kept] == sorted(s.at for s in kept), "oldest first"
        assert kept[-1].at == T0 + (KEPT + 9) * SAMPLE_INTERVAL_S
        assert 0 < redis_client.ttl(keys.RATES) <= TTL_S

    def test_an_unreadable_entry_is_skipped(self, redis_client: redis.Redis) -> None:
        """A foreign or damaged entry in pl:rates neither breaks the reader nor the recorder."""
        redis_client.lpush(keys.RATES, Sample(at=T0).to_json(), b"not json", json.dumps({"x": 1}))
        assert [s.at for s in history(redis_client)] == [T0]
        assert record(redis_client, registered=[], settings=Settings(), now=T0 + 1) is not None

    def test_parked_is_zero_without_held_patients(self, redis_client: redis.Redis) -> None:
        """No dead letter holds a patient: nothing is parked (and no keyspace scan finds any)."""
        assert parked(redis_client, DMP) == 0

    @pytest.mark.parametrize(
        ("dead_letter_open", "expected"),
        [
            pytest.param(True, 2, id="open: its message is a dead letter, not parked"),
            pytest.param(False, 3, id="replaying: its message waits with the others"),
        ],
    )
    def test_an_open_dead_letter_heading_its_patient_is_not_parked(
        self, redis_client: redis.Redis, dead_letter_open: bool, expected: int
    ) -> None:
        """The message of the open dead letter holding a patient heads the parked stream: it is
        counted among the open dead letters, only the messages behind it are parked."""
        redis_client.hset(keys.held(DMP), "pk-1", "d1")
        for _ in range(3):
            redis_client.xadd(keys.parked(DMP, "pk-1"), {"env": "e"})
        if dead_letter_open:
            redis_client.sadd(keys.dead_open(DMP), "d1")
        assert parked(redis_client, DMP) == expected


def test_the_drains_count_what_they_route_and_deliver_and_beat_samples_it(make_broker):
    """queued:SUB counts per subscriber what the journal drain routed, delivered:SUB what reached it;
    the re-kick keeps a sample of both."""
    broker = make_broker(partitions=2, deliver_inline=False)
    for i, patient in enumerate(patients(3, seed=1313)):
        assert read_ack(broker.receive(adt(patient, "A01", control_id=f"Q-{i}"))).code == "AA"
    broker.run(DRAIN_INBOUND)
    stats = {k.decode(): int(v) for k, v in broker.client.hgetall(keys.STATS).items()}
    assert stats[f"queued:{DMP}"] == stats[f"queued:{LAB}"] == 3
    assert f"delivered:{DMP}" not in stats
    broker.rekick()
    [sample] = history(broker.client)
    assert sample.backlog == {DMP: 3, LAB: 3}
    assert sample.counters[f"queued:{DMP}"] == 3
    broker.run()
    stats = {k.decode(): int(v) for k, v in broker.client.hgetall(keys.STATS).items()}
    assert stats[f"delivered:{DMP}"] == stats[f"queued:{DMP}"] == 3
