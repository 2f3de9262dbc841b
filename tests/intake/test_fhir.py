"""The FHIR intake journals each message in the partition of its normalised patient identity.

Order is per journal partition: the drain maps a partition in order and queues each message to
the same partition of every subscriber. So the edge's key must give one partition per patient
and adapter however the sender spells it, which the normalised key the worker computes
(``Envelope.partition_key``) does; the raw identifier did not (two spellings of one system, or
a lone Observation, went to different partitions).
"""

from __future__ import annotations

import asyncio
import copy
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import pytest
import redis
import redis.asyncio

from broker import keys
from broker.adapters.spec import AdapterSpec, load_adapters
from broker.dispatch import AsyncKicker
from broker.errors import MessageError
from broker.identity import unidentified_key
from broker.intake.fhir import FHIRIntake, partition_key
from broker.intake.journal import Journal
from broker.intake.outcome import Outcome, Verdict
from broker.mapping import MapContext, MappingSet
from broker.settings import REPO_ROOT
from broker.testing import StubCelery, raw_of

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


def _adapter(source: str) -> AdapterSpec:
    """An inbound FHIR adapter with no identifier_systems (as the mapping contexts here)."""
    return AdapterSpec(id=source, name=source, direction="inbound", transport="http", format="fhir")


def _key(mappings: MappingSet, data: dict[str, Any], source: str = SITE) -> str:
    return partition_key(copy.deepcopy(data), _adapter(source), mappings, "env-1")


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
            return
        assert _key(mappings, data, source) == mapped

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

    def test_input_the_worker_refuses_is_ordered_on_its_own(self, mappings: MappingSet) -> None:
        """No supported resource: the edge orders it on its own (the worker quarantines it)."""
        coverage = {"resourceType": "Coverage", "status": "active"}
        assert _key(mappings, coverage) == unidentified_key(SITE, "env-1")


@pytest.fixture(scope="module", name="site")
def fixture_site(tmp_path_factory: pytest.TempPathFactory) -> AdapterSpec:
    """The repository's chu-rabat-fhir registration, loaded as the API loads it."""
    adapters: Path = tmp_path_factory.mktemp("adapters")
    (adapters / f"{SITE}.yaml").write_text(
        (REPO_ROOT / "adapters" / f"{SITE}.yaml").read_text(encoding="utf-8")
    )
    (adapter,) = load_adapters(adapters)
    return adapter


def _receive(
    redis_url: str, adapter: AdapterSpec, mappings: MappingSet, bodies: list[bytes]
) -> list[Outcome]:
    """Hand each body to a FHIRIntake on the test Redis, in order; the kicks are recorded."""

    async def go() -> list[Outcome]:
        client = redis.asyncio.Redis.from_url(redis_url)
        try:
            journal = Journal(client, dedupe_window_s=60)
            kicker = AsyncKicker(StubCelery(), client)  # nothing drains here
            intake = FHIRIntake(adapter, journal, lambda: mappings, 8, kicker)
            return [await intake.receive(body, "http:127.0.0.1:1") for body in bodies]
        finally:
            await client.aclose()

    return asyncio.run(go())


def _partitions(redis_client: redis.Redis) -> dict[str, int]:
    """Journalled resource id → partition."""
    found = {}
    for partition in range(8):
        for _, fields in cast(list[Any], redis_client.xrange(keys.inbound(partition))):
            found[json.loads(raw_of(fields))["id"]] = partition
    return found


class TestEdge:
    def test_one_patients_resources_share_the_partition_of_the_normalised_key(
        self, redis_url: str, redis_client: redis.Redis, site: AdapterSpec, mappings: MappingSet
    ) -> None:
        """The Patient and two lone Observations about it land in one partition, the worker's."""
        second = {**OBSERVATION, "id": "o-2"}
        bodies = [json.dumps(r).encode() for r in (PATIENT, OBSERVATION, second)]
        outcomes = _receive(redis_url, site, mappings, bodies)
        assert [o.verdict for o in outcomes] == [Verdict.ACCEPTED] * 3
        wanted = keys.partition_of(f"{IPP}|IPP0093310", 8)
        assert _partitions(redis_client) == {"p-1": wanted, "o-1": wanted, "o-2": wanted}

    def test_a_refused_resource_is_kept_with_its_reason(
        self, redis_url: str, redis_client: redis.Redis, site: AdapterSpec, mappings: MappingSet
    ) -> None:
        """422 for the sender; pl:rejected keeps the body and the first issue, not the value."""
        bad = {**PATIENT, "birthDate": "28/11/2026"}
        body = json.dumps(bad).encode()
        (outcome,) = _receive(redis_url, site, mappings, [body])
        assert outcome.verdict is Verdict.REFUSED
        assert outcome.reply is not None
        assert json.loads(outcome.reply)["resourceType"] == "OperationOutcome"
        (entry,) = [f for _, f in cast(list[Any], redis_client.xrange(keys.REJECTED))]
        assert entry[b"source"] == SITE.encode()
        assert raw_of(entry) == body
        assert entry[b"reason"].startswith(b"HTTP 422: Patient.birthDate")
        assert b"28/11/2026" not in entry[b"reason"]

    def test_a_repost_is_answered_with_the_first_envelope_id_and_journalled_once(
        self, redis_url: str, redis_client: redis.Redis, site: AdapterSpec, mappings: MappingSet
    ) -> None:
        """The same resource, spaced differently: 202 naming the first envelope, one entry."""
        bodies = [json.dumps(PATIENT).encode(), json.dumps(PATIENT, indent=2).encode()]
        first, again = _receive(redis_url, site, mappings, bodies)
        assert (first.verdict, again.verdict) == (Verdict.ACCEPTED, Verdict.DUPLICATE)
        (entries,) = [
            e for p in range(8) if (e := cast(list[Any], redis_client.xrange(keys.inbound(p))))
        ]
        ((_, fields),) = entries
        assert again.reply == first.reply
        assert again.reply is not None
        diagnostics = json.loads(again.reply)["issue"][0]["diagnostics"]
        assert diagnostics.endswith(f"(envelope {fields[b'id'].decode()})")
