"""FHIR input through broker.pipeline.process: mapped, routed by event, failures with a reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.adapters.spec import AdapterSpec
from broker.envelope import Envelope, MessageState
from broker.mapping import MappingSet
from broker.pipeline import process

CASES = Path(__file__).resolve().parents[3] / "mappings" / "tests"


def subscriber(events: list[str]) -> AdapterSpec:
    return AdapterSpec.model_validate(
        {
            "id": "dmp-fhir",
            "name": "DMP",
            "direction": "outbound",
            "transport": "fhir-rest",
            "insecure_http": True,
            "url": "http://127.0.0.1:1/fhir",
            "subscribe": {"events": events},
        }
    )


def run(name: str, mappings: MappingSet, events: list[str]) -> tuple[Envelope, list[AdapterSpec]]:
    envelope = Envelope(source="dmp-in", content_type="application/fhir+json")
    return process(envelope, (CASES / name).read_bytes(), mappings, {}, [subscriber(events)])


class TestFHIRInput:
    def test_a_transaction_is_mapped_and_routed_by_its_event(self, mappings: MappingSet) -> None:
        """The envelope carries the Bundle, event, partition key, mappings and unmapped."""
        envelope, destinations = run("fhir_transaction.json", mappings, ["Bundle"])
        assert envelope.state is MessageState.ROUTED
        assert [d.id for d in destinations] == ["dmp-fhir"]
        assert envelope.event == "Bundle"
        assert envelope.version == "4.0.1"
        assert envelope.partition_key == "https://passerelle.ma/fhir/sid/cin|JB334455"
        assert [m.id for m in envelope.mappings] == ["fhir-r4"]
        assert envelope.unmapped == (
            "Bundle.entry[0].request",
            "Bundle.entry[1].request",
            "Bundle.entry[2].request",
        )
        assert envelope.bundle is not None
        assert envelope.bundle["type"] == "message"

    def test_a_subscriber_of_other_events_filters_it(self, mappings: MappingSet) -> None:
        """Routing is by event as for HL7 input: an ADT subscriber does not get an Observation."""
        envelope, destinations = run("fhir_observation.json", mappings, ["ADT^*"])
        assert envelope.state is MessageState.FILTERED
        assert destinations == []

    @pytest.mark.parametrize(
        ("name", "reason"),
        [
            pytest.param(
                "fhir_servicerequest_no_subject.json", "an order needs a patient", id="require"
            ),
            pytest.param("fhir_patient.expected.json", "has no resourceType", id="not-a-resource"),
        ],
    )
    def test_a_refused_message_fails_with_its_reason(
        self, mappings: MappingSet, name: str, reason: str
    ) -> None:
        """MessageError → FAILED with the one-line reason, nothing routed."""
        envelope, destinations = run(name, mappings, ["*"])
        assert envelope.state is MessageState.FAILED
        assert reason in (envelope.reason or "")
        assert "\n" not in (envelope.reason or "")
        assert destinations == []
