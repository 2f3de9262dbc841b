"""The latency histogram kept in Redis (``broker.latency``): buckets, count and sum."""

from __future__ import annotations

import math

import pytest
import redis

from broker import keys
from broker.latency import BUCKETS, Histogram, observe, percentiles, read


def test_a_batch_is_one_increment_per_bucket_and_reads_back_cumulative(
    redis_client: redis.Redis,
) -> None:
    pipe = redis_client.pipeline(transaction=True)
    observe(pipe, "dmp", [0.003, 0.004, 0.2, 0.25, 75.0, -1.0])
    observe(pipe, "lab", [])
    # 3 buckets hit (le:0.005, le:0.25, +Inf), count and sum: 5 commands, not a few per message.
    assert len(pipe.command_stack) == 5
    pipe.execute()
    [histogram] = read(redis_client, ["dmp", "lab"]).values()
    cumulative = dict(histogram.buckets)
    assert cumulative[0.005] == 3  # 0.003, 0.004 and the clock-skewed -1 s counted as 0
    assert cumulative[0.1] == 3
    assert cumulative[0.25] == 5  # a bound is inclusive (le)
    assert cumulative[60.0] == 5
    assert cumulative[math.inf] == histogram.count == 6
    assert histogram.sum == pytest.approx(75.457)
    assert [b for b, _ in histogram.buckets] == [*BUCKETS, math.inf]
    assert redis_client.exists(keys.latency("lab")) == 0


def histogram(per_bucket: dict[float, int]) -> Histogram:
    """A histogram from how many observations fell in each bucket (by upper bound)."""
    running, cumulative = 0, []
    for bound in (*BUCKETS, math.inf):
        running += per_bucket.get(bound, 0)
        cumulative.append((bound, running))
    return Histogram(cumulative, running, 0.0)


class TestPercentiles:
    """p50/p95/p99 as Prometheus's ``histogram_quantile`` reads a histogram: linear in the
    bucket the rank falls in. The expected values are worked out by hand below."""

    def test_a_known_histogram(self) -> None:
        # 100 deliveries: 50 in (5 ms, 10 ms], 40 in (10, 25], 9 in (25, 50], 1 beyond 60 s.
        h = histogram({0.01: 50, 0.025: 40, 0.05: 9, math.inf: 1})
        found = percentiles(h)
        assert found is not None
        # p50: rank 50 is the last of the (5, 10] bucket's 50: its upper bound.
        assert found["p50"] == pytest.approx(0.01)
        # p95: rank 95 is the 5th of 9 in (25, 50]: 25 + 25 * 5/9 ms.
        assert found["p95"] == pytest.approx(0.025 + 0.025 * 5 / 9, abs=1e-6)
        # p99: rank 99 is the 9th of 9 in (25, 50]: 50 ms.
        assert found["p99"] == pytest.approx(0.05)
        assert found["count"] == 100

    def test_the_first_bucket_starts_at_zero(self) -> None:
        h = histogram({0.005: 4})
        assert h.quantile(0.5) == pytest.approx(0.0025)
        assert h.quantile(1.0) == pytest.approx(0.005)

    def test_beyond_the_last_bound_the_last_bound_is_all_that_is_known(self) -> None:
        h = histogram({0.1: 1, math.inf: 99})
        assert h.quantile(0.5) == 60.0
        assert h.quantile(0.01) == pytest.approx(0.1)

    def test_nothing_delivered_has_no_percentiles(self) -> None:
        assert percentiles(histogram({})) is None
        assert percentiles(None) is None
        assert histogram({}).quantile(0.5) is None

    @pytest.mark.parametrize("q", [0.0, -0.5, 1.5])
    def test_a_quantile_outside_0_1_is_refused(self, q: float) -> None:
        with pytest.raises(ValueError, match="between 0"):
            histogram({0.01: 1}).quantile(q)

    def test_from_redis_as_the_drains_write_it(self, redis_client: redis.Redis) -> None:
        """100 deliveries of 7 ms each: all in (5, 10], so p50 is half-way through it."""
        pipe = redis_client.pipeline(transaction=True)
        observe(pipe, "dmp", [0.007] * 100)
        pipe.execute()
        found = percentiles(read(redis_client, ["dmp"])["dmp"])
        assert found == {"p50": 0.0075, "p95": 0.00975, "p99": 0.00995, "count": 100}
