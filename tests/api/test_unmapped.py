"""Tests of GET /api/unmapped/{adapter}: the fields an adapter sends that no rule reads."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from fastapi.testclient import TestClient
from pydantic import SecretStr

from broker import keys
from broker.api import create_app
from broker.settings import Settings

TOKEN = "synthetic-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(name="client")
def fixture_client(redis_client: redis.Redis, redis_url: str) -> Iterator[TestClient]:
    settings = Settings(redis_url=redis_url, api_token=SecretStr(TOKEN))
    with TestClient(create_app(settings)) as client:
        yield client


def test_report_counts_fields_most_frequent_first(
    client: TestClient, redis_client: redis.Redis
) -> None:
    """The report gives the messages seen and each unread field's count, most frequent first."""
    redis_client.hset(
        keys.unmapped("chu-rabat-adt"), mapping={"__messages__": 10, "ZPI-1": 10, "IN1-2": 3}
    )
    reply = client.get("/api/unmapped/chu-rabat-adt", headers=AUTH)
    assert reply.status_code == 200
    assert reply.json() == {
        "adapter": "chu-rabat-adt",
        "messages": 10,
        "fields": {"ZPI-1": 10, "IN1-2": 3},
        "segments_dropped": 0,
        "dropped_segments": [],
    }
    assert list(reply.json()["fields"]) == ["ZPI-1", "IN1-2"]


def test_report_has_a_dropped_segments_section(
    client: TestClient, redis_client: redis.Redis
) -> None:
    """Dropped segment groups are counted apart from the fields, by location and failed rule."""
    obx = "PATIENT_RESULT/ORDER_OBSERVATION/OBSERVATION/OBX"
    redis_client.hset(
        keys.unmapped("chu-rabat-lab"),
        mapping={
            "__messages__": 4,
            "OBX-9": 4,
            f"dropped|{obx}|Observation.code": 1,
            f"dropped|{obx}|observation require[2]": 3,
        },
    )
    reply = client.get("/api/unmapped/chu-rabat-lab", headers=AUTH).json()
    assert reply["fields"] == {"OBX-9": 4}
    assert reply["segments_dropped"] == 4
    assert reply["dropped_segments"] == [
        {"location": obx, "rule": "observation require[2]", "count": 3},
        {"location": obx, "rule": "Observation.code", "count": 1},
    ]


def test_report_needs_the_token(client: TestClient) -> None:
    """Without the bearer token the report is refused."""
    assert client.get("/api/unmapped/chu-rabat-adt").status_code == 401
