"""Tests of GET /api/queues and the statistics behind it (broker.ops.stats)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import redis
from fastapi.testclient import TestClient
from pydantic import SecretStr

from broker import keys
from broker.api import create_app
from broker.ops.rates import Sample
from broker.ops.stats import group_stats
from broker.settings import Settings

TOKEN = "synthetic-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(name="client")
def fixture_client(redis_client: redis.Redis, redis_url: str) -> Iterator[TestClient]:
    settings = Settings(
        redis_url=redis_url, api_token=SecretStr(TOKEN), partitions=2, max_backlog=1_000
    )
    with TestClient(create_app(settings)) as client:
        yield client


def _at(ms: int, seq: int = 0) -> str:
    return f"{ms}-{seq}"


class TestGroupStats:
    def test_missing_stream_is_all_zero(self, redis_client: redis.Redis) -> None:
        """A stream that does not exist has no depth and no age."""
        s = group_stats(redis_client, "pl:in:9", "pipeline")
        assert (s.length, s.depth, s.oldest_age_s) == (0, 0, None)

    def test_missing_group_counts_every_entry(self, redis_client: redis.Redis) -> None:
        """Without the group, every entry is undelivered and the oldest gives the age."""
        redis_client.xadd("s", {"a": 1}, id=_at(1_000_000))
        redis_client.xadd("s", {"a": 2}, id=_at(2_000_000))
        s = group_stats(redis_client, "s", "g", now=2_000.0)
        assert (s.lag, s.pending, s.depth) == (2, 0, 2)
        assert s.oldest_undelivered_age_s == pytest.approx(1_000.0)

    def test_lag_pending_and_ages(self, redis_client: redis.Redis) -> None:
        """Read-but-unacked entries are pending, unread ones lag; ages come from entry ids."""
        for i in range(5):
            redis_client.xadd("s", {"n": i}, id=_at(1_000_000 + i * 1_000))
        redis_client.xgroup_create("s", "g", id="0")
        redis_client.xreadgroup("g", "c", {"s": ">"}, count=3)
        redis_client.xack("s", "g", _at(1_000_000))
        s = group_stats(redis_client, "s", "g", now=1_010.0)
        assert (s.length, s.lag, s.pending, s.depth) == (5, 2, 2, 4)
        assert s.lag_exact
        assert s.oldest_pending_age_s == pytest.approx(9.0)
        assert s.oldest_undelivered_age_s == pytest.approx(7.0)
        assert s.oldest_age_s == pytest.approx(9.0)

    def test_lag_is_capped_and_says_so(self, redis_client: redis.Redis) -> None:
        """Past lag_cap the count stops and lag_exact is false."""
        redis_client.xgroup_create("s", "g", id="0", mkstream=True)
        for i in range(30):
            redis_client.xadd("s", {"n": i})
        s = group_stats(redis_client, "s", "g", lag_cap=10)
        assert s.lag == 10
        assert not s.lag_exact
        assert group_stats(redis_client, "s", "g", lag_cap=30).lag_exact


class TestQueuesRoute:
    def test_inbound_partitions_and_subscribers(
        self, client: TestClient, redis_client: redis.Redis
    ) -> None:
        """Each inbound partition and each subscriber is listed with depth, age and counters."""
        now_ms = int(time.time() * 1000)
        redis_client.xgroup_create(keys.inbound(1), keys.PIPELINE_GROUP, id="0", mkstream=True)
        redis_client.xadd(keys.inbound(1), {"raw": b"MSH"}, id=_at(now_ms - 60_000))
        out = keys.outbound("dmp", 0)
        redis_client.xgroup_create(out, keys.DELIVER_GROUP, id="0", mkstream=True)
        redis_client.xadd(out, {"env": "e1"}, id=_at(now_ms - 30_000))
        redis_client.xadd(out, {"env": "e2"}, id=_at(now_ms - 20_000))
        redis_client.xreadgroup(keys.DELIVER_GROUP, "drainer", {out: ">"}, count=1)
        redis_client.hset(keys.STATS, mapping={"delivered:dmp": 7, "failed:dmp": 1, "received": 9})
        redis_client.xadd(keys.dead("dmp"), {"envelope": "e0"})

        body = client.get("/api/queues", headers=AUTH).json()
        assert [p["partition"] for p in body["inbound"]] == [0, 1]
        assert body["inbound"][0]["depth"] == 0
        assert body["inbound"][1]["depth"] == 1
        assert body["inbound"][1]["oldest_age_s"] >= 59
        [dmp] = body["subscribers"]
        assert dmp["id"] == "dmp"
        assert (dmp["depth"], dmp["pending"], dmp["lag"]) == (2, 1, 1)
        assert dmp["oldest_age_s"] >= 29
        assert (dmp["delivered"], dmp["failed"], dmp["dead_letters"]) == (7, 1, 1)
        assert body["counters"]["received"] == 9

    def test_empty_broker(self, client: TestClient) -> None:
        """With nothing in Redis, every partition is empty and there is no subscriber."""
        body = client.get("/api/queues", headers=AUTH).json()
        assert all(p["depth"] == 0 for p in body["inbound"])
        assert body["subscribers"] == []
        assert (body["rejected"], body["quarantine"]) == (0, 0)


class TestFlow:
    def test_each_queue_shows_its_rates_growth_parked_and_time_to_backpressure(
        self, client: TestClient, redis_client: redis.Redis
    ) -> None:
        """Samples a minute and half a minute ago, then now: the journal took 20/s and mapped
        20/s; dmp was routed 10/s and delivered 8/s, its backlog 0 → 60 → 120 (+2/s) reaches
        max_backlog (1,000) in 440 s, which is the earliest mark; 2 messages parked for dmp."""
        now = time.time()
        for at, n, waiting in ((now - 60, 0, 0), (now - 30, 1, 60)):
            counters = {
                "received": 600 * n,
                "routed": 600 * n,
                "queued:dmp": 300 * n,
                "delivered:dmp": 240 * n,
            }
            sample = Sample(at=at, counters=counters, backlog={"dmp": waiting})
            redis_client.lpush(keys.RATES, sample.to_json())
        redis_client.hset(
            keys.STATS,
            mapping={"received": 1200, "routed": 1200, "queued:dmp": 600, "delivered:dmp": 480},
        )
        for _ in range(120):
            redis_client.xadd(keys.outbound("dmp", 0), {"env": "e"})
        redis_client.hset(keys.held("dmp"), "pk", "d1")
        redis_client.xadd(keys.parked("dmp", "pk"), {"env": "e"})
        redis_client.xadd(keys.parked("dmp", "pk"), {"env": "e"})

        body = client.get("/api/queues", headers=AUTH).json()

        [dmp] = body["subscribers"]
        assert (dmp["depth"], dmp["parked"]) == (120, 2)
        flow = dmp["flow"]
        assert flow["backlog"] == 120
        assert flow["parked"] == 2
        assert flow["offered_per_s"] == pytest.approx(10, rel=0.01)
        assert flow["sustained_per_s"] == pytest.approx(8, rel=0.01)
        assert flow["growth_per_s"] == pytest.approx(2, rel=0.01)
        assert flow["seconds_to_backpressure"] == pytest.approx(440, rel=0.01)
        pipeline = body["pipeline"]
        assert pipeline["offered_per_s"] == pytest.approx(20, rel=0.01)
        assert pipeline["sustained_per_s"] == pytest.approx(20, rel=0.01)
        assert pipeline["growth_per_s"] == 0
        assert body["backpressure"]["on"] is False
        assert body["backpressure"]["seconds_to"] == pytest.approx(440, rel=0.01)
        assert body["memory"]["used_bytes"] > 0

    def test_before_any_sample_the_backlog_is_there_and_the_rates_are_null(
        self, client: TestClient, redis_client: redis.Redis
    ) -> None:
        """Beat has not run yet: depths are read, no rate or estimate is made up."""
        redis_client.xadd(keys.outbound("dmp", 0), {"env": "e"})
        redis_client.set(keys.PRESSURE, "subscriber dmp has over 1 messages waiting")
        body = client.get("/api/queues", headers=AUTH).json()
        [dmp] = body["subscribers"]
        assert dmp["flow"]["backlog"] == 1
        assert dmp["flow"]["sustained_per_s"] is None
        assert dmp["flow"]["seconds_to_backpressure"] is None
        assert body["backpressure"] == {
            "on": True,
            "reason": "subscriber dmp has over 1 messages waiting",
            "seconds_to": None,
        }
