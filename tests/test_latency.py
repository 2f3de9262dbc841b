"""The latency histogram kept in Redis (``broker.latency``): buckets, count and sum."""

from __future__ import annotations

import math

import pytest
import redis

from broker import keys
from broker.latency import BUCKETS, observe, read


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
