"""The Prometheus exposition (``broker.ops.metrics``), read back with prometheus_client's parser."""

from __future__ import annotations

import math
import time

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from broker import keys
from broker.ops.metrics import prometheus_text
from broker.ops.rates import Sample
from broker.settings import Settings

DMP = "dmp"
LAB = "lab"

Series = dict[tuple[str, frozenset[tuple[str, str]]], float]


def _parse(text: str) -> tuple[Series, dict[str, str]]:
    """Every sample by (name, labels), and every family's type, as Prometheus would read them."""
    series: Series = {}
    types = {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        for sample in family.samples:
            series[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return series, types


def _labels(**labels: str) -> frozenset[tuple[str, str]]:
    return frozenset(labels.items())


def test_the_series_scrapers_already_read_keep_their_names_labels_and_values(
    redis_client: redis.Redis,
) -> None:
    """Counters, stream lengths and group gauges as the hand-written exposition wrote them."""
    redis_client.hset(keys.STATS, mapping={"received": 5, "routed": 4, f"delivered:{DMP}": 3})
    redis_client.xgroup_create(keys.inbound(0), keys.PIPELINE_GROUP, id="0", mkstream=True)
    for _ in range(4):
        redis_client.xadd(keys.inbound(0), {"raw": b"x"})
    redis_client.xadd(keys.outbound(DMP, 1), {"env": "e1"})
    redis_client.xadd(keys.dead(DMP), {"id": "d"})

    series, types = _parse(prometheus_text(redis_client, Settings(partitions=2)))

    assert types["passerelle_received"] == types["passerelle_delivered"] == "counter"
    expected = {
        ("passerelle_received_total", _labels()): 5,
        ("passerelle_routed_total", _labels()): 4,
        ("passerelle_delivered_total", _labels(subscriber=DMP)): 3,
        ("passerelle_stream_length", _labels(stream="pl:in:0")): 4,
        ("passerelle_stream_length", _labels(stream="pl:in:1")): 0,
        ("passerelle_stream_length", _labels(stream="pl:out:dmp:1")): 1,
        ("passerelle_stream_length", _labels(stream="pl:rejected")): 0,
        ("passerelle_stream_length", _labels(stream="pl:quarantine")): 0,
        ("passerelle_stream_length", _labels(stream="pl:dead:dmp")): 1,
        ("passerelle_group_lag", _labels(stream="pl:in:0", group="pipeline")): 4,
        ("passerelle_group_pending", _labels(stream="pl:in:0", group="pipeline")): 0,
        ("passerelle_group_depth", _labels(stream="pl:in:0", group="pipeline")): 4,
        ("passerelle_group_lag", _labels(stream="pl:out:dmp:1", group="deliver")): 1,
        ("passerelle_group_depth", _labels(stream="pl:out:dmp:1", group="deliver")): 1,
        ("passerelle_group_oldest_age_seconds", _labels(stream="pl:in:1", group="pipeline")): 0,
    }
    assert {key: series.get(key) for key in expected} == expected
    assert (
        series[("passerelle_group_oldest_age_seconds", _labels(stream="pl:in:0", group="pipeline"))]
        >= 0
    )


def test_a_counter_name_that_is_not_a_metric_name_is_cleaned_and_its_label_escaped(
    redis_client: redis.Redis,
) -> None:
    """`weird-name:sub"x` becomes passerelle_weird_name_total{subscriber="sub\\"x"}."""
    redis_client.hset(keys.STATS, mapping={'weird-name:sub"x': 2})
    series, _ = _parse(prometheus_text(redis_client, Settings(partitions=1)))
    assert series[("passerelle_weird_name_total", _labels(subscriber='sub"x'))] == 2


def test_backlogs_rates_growth_and_time_to_backpressure(redis_client: redis.Redis) -> None:
    """Two samples a minute and half a minute ago, then the live state: DMP routed 10/s, delivered
    8/s, its backlog 0 → 60 → 120 (+2/s) reaches 1,000 in 440 s; LAB idle: +Inf; 3 parked."""
    now = time.time()
    for at, queued, delivered, waiting in ((now - 60, 0, 0, 0), (now - 30, 300, 240, 60)):
        sample = Sample(
            at=at,
            counters={f"queued:{DMP}": queued, f"delivered:{DMP}": delivered, "received": queued},
            backlog={DMP: waiting, LAB: 0},
        )
        redis_client.lpush(keys.RATES, sample.to_json())
    redis_client.hset(
        keys.STATS, mapping={f"queued:{DMP}": 600, f"delivered:{DMP}": 480, "received": 600}
    )
    for _ in range(120):
        redis_client.xadd(keys.outbound(DMP, 0), {"env": "e"})
    redis_client.xgroup_create(keys.outbound(LAB, 0), keys.DELIVER_GROUP, id="$", mkstream=True)
    redis_client.hset(keys.held(DMP), "pk", "d1")
    for _ in range(3):
        redis_client.xadd(keys.parked(DMP, "pk"), {"env": "e"})

    text = prometheus_text(redis_client, Settings(partitions=1, max_backlog=1_000), now=now)
    series, types = _parse(text)

    dmp, lab = _labels(subscriber=DMP), _labels(subscriber=LAB)
    assert types["passerelle_subscriber_backlog"] == "gauge"
    assert series[("passerelle_subscriber_backlog", dmp)] == 120
    assert series[("passerelle_subscriber_parked", dmp)] == 3
    assert series[("passerelle_subscriber_offered_per_second", dmp)] == pytest.approx(10)
    assert series[("passerelle_subscriber_sustained_per_second", dmp)] == pytest.approx(8)
    assert series[("passerelle_subscriber_backlog_growth_per_second", dmp)] == pytest.approx(2)
    assert series[("passerelle_subscriber_seconds_to_backpressure", dmp)] == pytest.approx(440)
    assert series[("passerelle_subscriber_seconds_to_backpressure", lab)] == math.inf
    assert series[("passerelle_pipeline_offered_per_second", _labels())] == pytest.approx(10)
    assert series[("passerelle_backpressure", _labels())] == 0
    assert series[("passerelle_redis_memory_used_bytes", _labels())] > 0


def test_no_rate_is_made_up_before_beat_kept_a_sample(redis_client: redis.Redis) -> None:
    """With only the live reading, backlogs are there and rates are left out (not 0, not NaN)."""
    redis_client.xadd(keys.outbound(DMP, 0), {"env": "e"})
    series, _ = _parse(prometheus_text(redis_client, Settings(partitions=1)))
    names = {name for name, _ in series}
    assert series[("passerelle_subscriber_backlog", _labels(subscriber=DMP))] == 1
    assert "passerelle_subscriber_sustained_per_second" not in names
    assert "passerelle_subscriber_seconds_to_backpressure" not in names


def test_backpressure_on_is_one(redis_client: redis.Redis) -> None:
    """pl:pressure set: passerelle_backpressure is 1."""
    redis_client.set(keys.PRESSURE, "subscriber dmp has over 10 messages waiting")
    series, _ = _parse(prometheus_text(redis_client, Settings(partitions=1)))
    assert series[("passerelle_backpressure", _labels())] == 1


def test_a_subscriber_counts_zero_before_its_first_retry_or_dead_letter(
    redis_client: redis.Redis,
) -> None:
    """A queue is enough for its per-subscriber counters to exist: increase() sees the first."""
    redis_client.hset(keys.STATS, mapping={f"delivered:{DMP}": 2})
    redis_client.xadd(keys.outbound(DMP, 0), {"env": "e"})
    series, _ = _parse(prometheus_text(redis_client, Settings(partitions=1)))
    dmp = _labels(subscriber=DMP)
    assert series[("passerelle_delivered_total", dmp)] == 2
    assert series[("passerelle_retried_total", dmp)] == 0
    assert series[("passerelle_dead_lettered_total", dmp)] == 0
    assert series[("passerelle_subscriber_dead_letters_open", dmp)] == 0
    assert ("passerelle_retried_total", _labels(subscriber=LAB)) not in series
