"""The FHIR edge journals each message in the partition of its normalised patient identity.

Order is per journal partition: the drain maps a partition in order and queues each message to
the same partition of every subscriber. So the edge's key must give one partition per patient
and adapter however the sender spells it, which the normalised key the worker computes
(``Envelope.partition_key``) does; the raw identifier did not (two spellings of one system, or
a lone Observation, went to different partitions).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import pytest
import redis
from fastapi.testclient import TestClient
from pydantic import SecretStr

from broker import keys
from broker.api import create_app
from broker.errors import MessageError
from broker.mapping import MapContext, MappingSet
from broker.settings import REPO_ROOT, Settings
from broker.testing import StubCelery

TOKEN = "synthetic-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/fhir+json"}
SITE = "chu-rabat-fhir"
CASES = REPO_ROOT / "mappings" / "tests"
INPUTS = sorted(
    p
    for p in [*CASES.glob("fhir_*.json"), *CASES.glob("*/fhir_*.json")]
    if not p.name.endswith(".expected.json")
)
IPP = "https://passerelle.ma/fhir/sid/ipp/chu-rabat"

PATIENT: dict[str, Any] = {
    "resourceType": "Patient",
    "id": "p-1",
    "identifier": [
        {"system": "http://chu-rabat.ma/ipp", "value": "IPP0093310"},
        {"system": "http://chu-rabat.ma/cin", "value": "BH227104"},
    ],
    "name": [{"family": "BENJELLOUN", "given": ["Omar"]}, {"family": "بنجلون", "given": ["عمر"]}],
}
OBSERVATION: dict[str, Any] = {
    "resourceType": "Observation",
    "id": "o-1",
    "status": "final",
    "code": {"coding": [{"system": "http://chu-rabat.ma/labo/codes", "code": "HB"}]},
    "subject": {"identifier": {"system": "http://chu-rabat.ma/ipp", "value": "IPP0093310"}},
}


@pytest.fixture(scope="module", name="mappings")
def fixture_mappings() -> MappingSet:
    return MappingSet.load(REPO_ROOT / "mappings")


def _key(mappings: MappingSet, data: dict[str, Any], source: str = SITE) -> str:
    assert mappings.fhir is not None
    return mappings.fhir.patient_key(copy.deepcopy(data), source)


class TestPatientKey:
    @pytest.mark.parametrize("source", ["dmp-in", SITE])
    @pytest.mark.parametrize("path", INPUTS, ids=[p.stem for p in INPUTS])
    def test_it_is_the_partition_key_of_the_mapped_envelope(
        self, mappings: MappingSet, path: Path, source: str
    ) -> None:
        """For every golden FHIR input the mapping accepts, the edge key is the worker's key."""
        assert mappings.fhir is not None
        data = json.loads(path.read_text(encoding="utf-8"))
        ctx = MapContext("env-1", source, received_at=datetime(2026, 11, 28, tzinfo=UTC))
        try:
            mapped = mappings.fhir.map(copy.deepcopy(data), ctx).partition_key
        except MessageError:  # refused by the worker: the edge key only has to exist
            mapped = None
        key = _key(mappings, data, source) if mapped is not None else None
        assert key == mapped

    def test_two_spellings_of_one_identifier_system_give_one_key(
        self, mappings: MappingSet
    ) -> None:
        """The CIN by its synthetic OID and by its old URL: the national system, one key."""
        by_oid: dict[str, Any] = {
            "resourceType": "Patient",
            "identifier": [{"system": "urn:oid:2.16.504.1.1.1", "value": "BH227104"}],
        }
        by_url = copy.deepcopy(by_oid)
        by_url["identifier"][0]["system"] = "http://passerelle.ma/fhir/sid/cin"
        assert _key(mappings, by_oid, "dmp-in") == _key(mappings, by_url, "dmp-in")
        assert _key(mappings, by_oid, "dmp-in") == "https://passerelle.ma/fhir/sid/cin|BH227104"

    def test_a_lone_observation_goes_with_its_patient(self, mappings: MappingSet) -> None:
        """subject.identifier in the site's own system gives the Patient's normalised key."""
        assert _key(mappings, OBSERVATION) == _key(mappings, PATIENT) == f"{IPP}|IPP0093310"

    def test_input_the_worker_refuses_has_no_key(self, mappings: MappingSet) -> None:
        """No supported resource: the edge orders it on its own (the worker quarantines it)."""
        from broker.api.inbound import _patient_key

        coverage = {"resourceType": "Coverage", "status": "active"}
        assert _patient_key(mappings, SITE, coverage) is None


@pytest.fixture(scope="module", name="app_client")
def fixture_app_client(
    redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TestClient]:
    adapters: Path = tmp_path_factory.mktemp("adapters")
    (adapters / f"{SITE}.yaml").write_text(
        (REPO_ROOT / "adapters" / f"{SITE}.yaml").read_text(encoding="utf-8")
    )
    settings = Settings(redis_url=redis_url, api_token=SecretStr(TOKEN), adapters_dir=adapters)
    app = create_app(settings)

    app.state.inbound_celery = StubCelery()  # kicks recorded: nothing drains here
    with TestClient(app) as client:
        yield client


@pytest.fixture(name="client")
def fixture_client(app_client: TestClient, redis_client: redis.Redis) -> TestClient:
    return app_client


def _partitions(redis_client: redis.Redis) -> dict[str, int]:
    """Journalled resource id → partition."""
    found = {}
    for partition in range(8):
        for _, fields in cast(list[Any], redis_client.xrange(keys.inbound(partition))):
            found[json.loads(fields[b"raw"])["id"]] = partition
    return found


class TestEdge:
    def test_one_patients_resources_share_the_partition_of_the_normalised_key(
        self, client: TestClient, redis_client: redis.Redis
    ) -> None:
        """The Patient and two lone Observations about it land in one partition, the worker's."""
        second = {**OBSERVATION, "id": "o-2"}
        for resource in (PATIENT, OBSERVATION, second):
            reply = client.post(f"/inbound/{SITE}/fhir", content=json.dumps(resource), headers=AUTH)
            assert reply.status_code == 202, reply.text
        wanted = keys.partition_of(f"{IPP}|IPP0093310", 8)
        assert _partitions(redis_client) == {"p-1": wanted, "o-1": wanted, "o-2": wanted}

    def test_a_refused_resource_is_kept_with_its_reason(
        self, client: TestClient, redis_client: redis.Redis
    ) -> None:
        """422 for the sender; pl:rejected keeps the body and the first issue, not the value."""
        bad = {**PATIENT, "birthDate": "28/11/2026"}
        body = json.dumps(bad)
        reply = client.post(f"/inbound/{SITE}/fhir", content=body, headers=AUTH)
        assert reply.status_code == 422
        (entry,) = [f for _, f in cast(list[Any], redis_client.xrange(keys.REJECTED))]
        assert entry[b"source"] == SITE.encode()
        assert entry[b"raw"] == body.encode()
        assert entry[b"reason"].startswith(b"HTTP 422: Patient.birthDate")
        assert b"28/11/2026" not in entry[b"reason"]
