"""Tests of the probes, the metrics and the error handling."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
import redis
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from broker import keys
from broker.api import create_app
from broker.settings import Settings

TOKEN = "synthetic-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(name="client")
def fixture_client(redis_client: redis.Redis, redis_url: str) -> Iterator[TestClient]:
    settings = Settings(redis_url=redis_url, api_token=SecretStr(TOKEN), partitions=2)
    with TestClient(create_app(settings)) as client:
        yield client


def _dead_redis_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"redis://127.0.0.1:{port}/0"


class TestProbes:
    def test_healthz_is_ok(self, client: TestClient) -> None:
        """/healthz answers 200 while the process runs."""
        assert client.get("/healthz").json() == {"status": "ok"}

    def test_readyz_is_ready_with_redis(self, client: TestClient) -> None:
        """/readyz answers 200 when Redis answers PING."""
        reply = client.get("/readyz")
        assert reply.status_code == 200
        assert reply.json()["checks"] == {"redis": "ok"}

    def test_readyz_is_503_without_redis(self) -> None:
        """/readyz answers 503 and names the failed check when Redis is down; /healthz stays 200."""
        settings = Settings(redis_url=_dead_redis_url(), api_token=SecretStr(TOKEN))
        with TestClient(create_app(settings)) as client:
            reply = client.get("/readyz")
            assert reply.status_code == 503
            assert reply.json()["status"] == "unavailable"
            assert "ConnectionError" in reply.json()["checks"]["redis"]
            assert client.get("/healthz").status_code == 200

    def test_redis_down_on_a_route_is_503_without_trace(self) -> None:
        """A protected route with Redis down answers 503 with a sentence, never a traceback."""
        settings = Settings(redis_url=_dead_redis_url(), api_token=SecretStr(TOKEN))
        with TestClient(create_app(settings), raise_server_exceptions=False) as client:
            reply = client.get("/api/queues", headers=AUTH)
            assert reply.status_code == 503
            assert "Traceback" not in reply.text
            assert reply.json() == {"detail": "Redis is unavailable; try again later"}


class TestMetrics:
    def test_counters_and_streams_are_exposed(
        self, client: TestClient, redis_client: redis.Redis
    ) -> None:
        """pl:stats counters and per-stream group gauges appear in Prometheus text."""
        redis_client.hset(keys.STATS, mapping={"received": 5, "delivered:dmp": 3})
        redis_client.xgroup_create(keys.inbound(0), keys.PIPELINE_GROUP, id="0", mkstream=True)
        for _ in range(4):
            redis_client.xadd(keys.inbound(0), {"raw": b"x"})
        reply = client.get("/metrics", headers=AUTH)
        assert reply.status_code == 200
        assert reply.headers["content-type"].startswith("text/plain; version=0.0.4")
        series = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(reply.text)
            for s in family.samples
        }
        assert series[("passerelle_received_total", ())] == 5
        assert series[("passerelle_delivered_total", (("subscriber", "dmp"),))] == 3
        assert series[("passerelle_stream_length", (("stream", "pl:in:0"),))] == 4
        lag = ("passerelle_group_lag", (("group", "pipeline"), ("stream", "pl:in:0")))
        pending = ("passerelle_group_pending", (("group", "pipeline"), ("stream", "pl:in:0")))
        assert (series[lag], series[pending]) == (4, 0)
        assert "# TYPE passerelle_received_total counter" in reply.text

    def test_every_sample_line_is_well_formed(
        self, client: TestClient, redis_client: redis.Redis
    ) -> None:
        """Each non-comment line is `name{labels} number`."""
        redis_client.hset(keys.STATS, mapping={"received": 1, 'weird-name:sub"x': 2})
        redis_client.xadd(keys.outbound("dmp", 1), {"env": "e1"})
        for line in client.get("/metrics", headers=AUTH).text.splitlines():
            if line.startswith("#") or not line:
                continue
            name, _, value = line.rpartition(" ")
            float(value)
            assert name.split("{")[0].replace("_", "a").isalnum()
