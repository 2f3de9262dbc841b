"""Issue 10 item 7: FHIR Bundles are bounded in entries, refused before validation (413)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient
from pydantic import SecretStr
from structlog.testing import capture_logs

from broker.api import create_app
from broker.settings import Settings
from broker.testing import StubCelery

TOKEN = "synthetic-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/fhir+json"}


@pytest.fixture(name="api")
def fixture_api(redis_url: str, redis_client: redis.Redis, tmp_path: Path) -> Iterator[TestClient]:
    (tmp_path / "fhir.yaml").write_text(
        "id: hosp-fhir\nname: F\ndirection: inbound\ntransport: http\nformat: fhir\n"
    )
    settings = Settings(
        redis_url=redis_url,
        api_token=SecretStr(TOKEN),
        adapters_dir=tmp_path,
        fhir_max_entries=50,
        max_message_bytes=64 * 1024 * 1024,
    )
    app = create_app(settings)
    app.state.inbound_celery = StubCelery()
    with TestClient(app) as client:
        yield client


class TestFhirBounds:
    def test_a_100000_entry_bundle_is_refused_and_the_api_answers_after(
        self, api: TestClient
    ) -> None:
        entries = [{"resource": {"resourceType": "Patient"}}] * 100_000
        bundle = {"resourceType": "Bundle", "type": "collection", "entry": entries}
        reply = api.post("/inbound/hosp-fhir/fhir", content=json.dumps(bundle), headers=AUTH)
        assert reply.status_code == 413
        (issue,) = reply.json()["issue"]
        assert (issue["code"], issue["expression"]) == ("too-costly", ["Bundle.entry"])
        assert "100000 entries, over the limit of 50" in issue["diagnostics"]
        patient = {"resourceType": "Patient", "id": "p1", "birthDate": "1980-02-03"}
        reply = api.post("/inbound/hosp-fhir/fhir", content=json.dumps(patient), headers=AUTH)
        assert reply.status_code == 202

    def test_a_bundle_within_the_limit_is_validated_as_usual(self, api: TestClient) -> None:
        entries = [{"resource": {"resourceType": "Patient", "id": f"p{i}"}} for i in range(50)]
        bundle = {"resourceType": "Bundle", "type": "collection", "entry": entries}
        reply = api.post("/inbound/hosp-fhir/fhir", content=json.dumps(bundle), headers=AUTH)
        assert reply.status_code == 202


def test_an_unhandled_route_error_is_one_event_without_its_message(
    redis_url: str, redis_client: redis.Redis
) -> None:
    """500 to the client; the log has the class, the path and the frames, never the message."""
    app = create_app(Settings(redis_url=redis_url, api_token=SecretStr(TOKEN)))

    @app.get("/boom")
    async def boom() -> None:
        raise ValueError("PID|||1||ZAHRA^FATIMA")

    with capture_logs() as logs, TestClient(app, raise_server_exceptions=False) as client:
        reply = client.get("/boom")
    assert reply.status_code == 500
    assert "ZAHRA" not in reply.text
    (event,) = [e for e in logs if e["event"] == "api.internal_error"]
    assert (event["error"], event["path"]) == ("ValueError", "/boom")
    assert "ZAHRA" not in repr(logs)
