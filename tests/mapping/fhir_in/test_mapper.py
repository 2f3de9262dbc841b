"""FHIR input to the canonical message Bundle: references, ids, events, unmapped, refusals."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from broker.canonical import validate_bundle
from broker.errors import CanonicalError, NoMappingError
from broker.mapping import MapContext, MappingSet

CASES = Path(__file__).resolve().parents[3] / "mappings" / "tests"


def case(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((CASES / name).read_text(encoding="utf-8"))
    return data


def resources(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle["entry"]]


class TestReferences:
    def test_urn_uuid_references_of_a_transaction_point_at_the_new_entries(
        self, mappings: MappingSet, ctx: MapContext
    ) -> None:
        """Encounter and Observation refer to the Patient by its new urn:uuid, as fullUrl."""
        done = mappings.map_fhir(case("fhir_transaction.json"), ctx)
        header, patient, encounter, observation = resources(done.bundle)
        assert encounter["subject"] == {"reference": f"urn:uuid:{patient['id']}"}
        assert observation["subject"] == {"reference": f"urn:uuid:{patient['id']}"}
        assert observation["encounter"] == {"reference": f"urn:uuid:{encounter['id']}"}
        assert header["focus"] == [
            {"reference": f"urn:uuid:{r['id']}"} for r in resources(done.bundle)[1:]
        ]

    def test_relative_references_of_a_batch_point_at_the_new_entries(
        self, mappings: MappingSet, ctx: MapContext
    ) -> None:
        """``Patient/pat-2002`` inside a batch becomes the Patient entry's urn:uuid."""
        done = mappings.map_fhir(case("fhir_batch.json"), ctx)
        _, patient, condition, allergy = resources(done.bundle)
        assert condition["subject"]["reference"] == f"urn:uuid:{patient['id']}"
        assert allergy["patient"]["reference"] == f"urn:uuid:{patient['id']}"

    def test_a_reference_outside_the_input_becomes_a_logical_reference(
        self, mappings: MappingSet, ctx: MapContext
    ) -> None:
        """An Appointment's ``Practitioner/pr-77`` names a resource on the sender's server only:
        it becomes the type and the identifier that resource keeps its sender id under."""
        done = mappings.map_fhir(case("fhir_appointment.json"), ctx)
        appointment = resources(done.bundle)[1]
        assert appointment["participant"][1]["actor"] == {
            "type": "Practitioner",
            "identifier": {
                "system": "urn:passerelle:adapter:dmp-in:resource:Practitioner",
                "value": "pr-77",
            },
            "display": "Dr. Hassan TAZI",
        }
        data = case("fhir_condition.json")
        data["subject"] = {"reference": "Patient/pat-1001"}
        condition = resources(mappings.map_fhir(data, ctx).bundle)[1]
        assert condition["subject"] == {
            "type": "Patient",
            "identifier": {
                "system": "urn:passerelle:adapter:dmp-in:resource:Patient",
                "value": "pat-1001",
            },
        }

    def test_a_reference_with_the_target_identifier_keeps_that_identifier(
        self, mappings: MappingSet, ctx: MapContext
    ) -> None:
        """``Patient/pat-2002`` given with the patient's IPP: the IPP names it everywhere."""
        done = mappings.map_fhir(case("fhir_observation.json"), ctx)
        observation = resources(done.bundle)[1]
        assert observation["subject"] == {
            "type": "Patient",
            "identifier": {
                "system": "https://passerelle.ma/fhir/sid/ipp/chu-rabat",
                "value": "IPP0051188",
            },
            "display": "Youssef BENANI",
        }

    def test_absolute_references_on_the_senders_base_and_on_another_server(
        self, mappings: MappingSet, ctx: MapContext
    ) -> None:
        """On the base of the input's fullUrls: the sender's (an entry's urn:uuid, else a logical
        reference); on another server's base: kept, it is resolvable where it points."""
        data = case("fhir_collection.json")
        report = data["entry"][1]["resource"]
        report["result"] = [
            {"reference": "https://his.chu-rabat.ma/fhir/Observation/obs-na-1"},
            {"reference": "https://his.chu-rabat.ma/fhir/Observation/obs-ca-9"},
            {"reference": "https://labo.example.ma/fhir/Observation/obs-na-1"},
        ]
        done = mappings.map_fhir(data, ctx)
        report, sodium = resources(done.bundle)[2:4]
        assert report["result"] == [
            {"reference": f"urn:uuid:{sodium['id']}"},
            {
                "type": "Observation",
                "identifier": {
                    "system": "urn:passerelle:adapter:dmp-in:resource:Observation",
                    "value": "obs-ca-9",
                },
            },
            {"reference": "https://labo.example.ma/fhir/Observation/obs-na-1"},
        ]
        validate_bundle(done.bundle)

    def test_each_resource_keeps_the_senders_id_as_its_last_identifier(
        self, mappings: MappingSet, ctx: MapContext
    ) -> None:
        """``Patient/pat-1001`` keeps ``…:resource:Patient|pat-1001`` after its CIN and IPP; the
        CIN still names the patient; a resource without an id gets none."""
        done = mappings.map_fhir(case("fhir_patient.json"), ctx)
        patient = resources(done.bundle)[1]
        assert patient["identifier"][-1] == {
            "use": "secondary",
            "system": "urn:passerelle:adapter:dmp-in:resource:Patient",
            "value": "pat-1001",
        }
        assert patient["identifier"][0]["value"] == "BE123456"
        assert done.partition_key == "https://passerelle.ma/fhir/sid/cin|BE123456"
        condition = resources(mappings.map_fhir(case("fhir_condition.json"), ctx).bundle)[1]
        assert condition["identifier"] == [
            {
                "use": "secondary",
                "system": "urn:passerelle:adapter:dmp-in:resource:Condition",
                "value": "cond-4401",
            }
        ]
        transaction = resources(mappings.map_fhir(case("fhir_transaction.json"), ctx).bundle)
        assert not any(
            i["system"].startswith("urn:passerelle:adapter:")
            for r in transaction
            for i in r.get("identifier", [])
        )

    def test_a_reference_to_an_entry_left_out_is_removed_and_reported(
        self, mappings: MappingSet, ctx: MapContext
    ) -> None:
        """An Observation pointing at a Medication entry keeps its display, not a dangling ref."""
        bundle = {
            "resourceType": "Bundle",
            "type": "collection",
            "entry": [
                {
                    "fullUrl": "urn:uuid:11111111-1111-4111-8111-111111111111",
                    "resource": {"resourceType": "Medication", "id": "m1"},
                },
                {
                    "resource": {
                        "resourceType": "Observation",
                        "status": "final",
                        "code": {"text": "Traitement"},
                        "subject": {
                            "identifier": {
                                "system": "https://passerelle.ma/fhir/sid/cin",
                                "value": "BE123456",
                            }
                        },
                        "focus": [
                            {
                                "reference": "urn:uuid:11111111-1111-4111-8111-111111111111",
                                "display": "Metformine",
                            }
                        ],
                    }
                },
            ],
        }
        done = mappings.map_fhir(bundle, ctx)
        observation = resources(done.bundle)[1]
        assert observation["focus"] == [{"display": "Metformine"}]
        assert "Bundle.entry[1].resource.focus[0].reference" in done.unmapped
        assert "Bundle.entry[0].resource" in done.unmapped
        codes = {f.code for f in done.findings}
        assert codes == {"dangling-reference", "unsupported-resource"}


class TestIdentity:
    def test_the_same_input_gives_the_same_ids(self, mappings: MappingSet, ctx: MapContext) -> None:
        """Replays are idempotent: ids depend on the adapter and the input, not on time."""
        first = mappings.map_fhir(case("fhir_transaction.json"), ctx).bundle
        later = replace(ctx, envelope_id="other")
        again = mappings.map_fhir(case("fhir_transaction.json"), later).bundle
        assert [r["id"] for r in resources(first)] == [r["id"] for r in resources(again)]

    def test_another_adapter_gives_other_ids(self, mappings: MappingSet, ctx: MapContext) -> None:
        """Two senders using the same resource ids never collide."""
        first = mappings.map_fhir(case("fhir_patient.json"), ctx).bundle
        other = mappings.map_fhir(case("fhir_patient.json"), replace(ctx, source="x")).bundle
        assert resources(first)[1]["id"] != resources(other)[1]["id"]

    def test_every_case_validates(self, mappings: MappingSet, ctx: MapContext) -> None:
        """Each accepted golden input gives a Bundle that validate_bundle accepts."""
        for path in sorted(CASES.glob("fhir_*.json")):
            if path.name.endswith(".expected.json") or "no_subject" in path.name:
                continue
            validate_bundle(mappings.map_fhir(json.loads(path.read_text()), ctx).bundle)


class TestEventsAndKeys:
    @pytest.mark.parametrize(
        ("name", "event"),
        [
            pytest.param("fhir_observation.json", "Observation", id="resource"),
            pytest.param("fhir_collection.json", "Bundle", id="collection"),
            pytest.param("fhir_message.json", "ADT^A01", id="message-keeps-its-event"),
        ],
    )
    def test_event(self, mappings: MappingSet, ctx: MapContext, name: str, event: str) -> None:
        """The event is the resource type, ``Bundle``, or a message Bundle's own event.

        A table 0003 trigger gets the message code the HL7 v2 mappings give it (``ADT^A01``),
        so one subscription serves HL7 v2 and FHIR input; the header keeps the trigger.
        """
        done = mappings.map_fhir(case(name), ctx)
        assert done.event == event
        assert resources(done.bundle)[0]["eventCoding"]["code"] == event.split("^")[-1]

    def test_an_event_outside_table_0003_is_kept_as_sent(
        self, mappings: MappingSet, ctx: MapContext
    ) -> None:
        """Only a table 0003 eventCoding is qualified; a FHIR message-events code stays as is."""
        data = case("fhir_message.json")
        data["entry"][0]["resource"]["eventCoding"] = {
            "system": "http://example.org/fhir/message-events",
            "code": "A01",
        }
        assert mappings.map_fhir(data, ctx).event == "A01"

    def test_a_message_bundle_keeps_its_header_event_and_reports_the_rest(
        self, mappings: MappingSet, ctx: MapContext
    ) -> None:
        """destination, sender and source.endpoint are not kept: reported, not dropped silently."""
        done = mappings.map_fhir(case("fhir_message.json"), ctx)
        header = resources(done.bundle)[0]
        assert header["eventCoding"]["system"] == "http://terminology.hl7.org/CodeSystem/v2-0003"
        assert header["source"] == {
            "endpoint": "urn:passerelle:adapter:dmp-in",
            "name": "HIS",
            "software": "HIS-CHU",
            "version": "7.2",
        }
        assert set(done.unmapped) == {
            "Bundle.timestamp",
            "Bundle.entry[0].resource.destination",
            "Bundle.entry[0].resource.sender",
            "Bundle.entry[0].resource.source.endpoint",
        }

    @pytest.mark.parametrize(
        ("name", "key"),
        [
            pytest.param(
                "fhir_patient.json", "https://passerelle.ma/fhir/sid/cin|BE123456", id="patient"
            ),
            pytest.param(
                "fhir_observation.json",
                "https://passerelle.ma/fhir/sid/ipp/chu-rabat|IPP0051188",
                id="subject-identifier",
            ),
        ],
    )
    def test_partition_key(
        self, mappings: MappingSet, ctx: MapContext, name: str, key: str
    ) -> None:
        """The patient's identifier, from the Patient or from the reference to it."""
        assert mappings.map_fhir(case(name), ctx).partition_key == key

    def test_a_patient_known_only_by_reference_is_keyed_by_its_sender_id(
        self, mappings: MappingSet, ctx: MapContext
    ) -> None:
        """``Patient/123`` means something on the sender's server only: keyed by the sender id.
        That Patient itself, sent with no identifier of its own, is refused: a server id alone
        does not identify a person on the network (as an empty PID-3 does not)."""
        data = case("fhir_condition.json")
        data["subject"] = {"reference": "Patient/123"}
        key = mappings.map_fhir(data, ctx).partition_key
        assert key == "urn:passerelle:adapter:dmp-in:resource:Patient|123"
        patient = {"resourceType": "Patient", "id": "123", "gender": "female"}
        with pytest.raises(CanonicalError, match="a patient needs an identifier"):
            mappings.map_fhir(patient, ctx)
        fhir = mappings.fhir
        assert fhir is not None
        assert fhir.patient_key(data, "dmp-in") == key


class TestRefusals:
    def test_a_lone_unsupported_resource_is_refused(
        self, mappings: MappingSet, ctx: MapContext
    ) -> None:
        """Nothing supported remains: NoMappingError naming the type and the supported ones."""
        with pytest.raises(NoMappingError, match="found Coverage; supported: AllergyIntolerance"):
            mappings.map_fhir({"resourceType": "Coverage", "id": "c1", "status": "active"}, ctx)

    def test_an_order_without_patient_is_refused_with_the_reason(
        self, mappings: MappingSet, ctx: MapContext
    ) -> None:
        """The require: rule's reason is the error, never invalid FHIR emitted."""
        with pytest.raises(CanonicalError, match="an order needs a patient"):
            mappings.map_fhir(case("fhir_servicerequest_no_subject.json"), ctx)

    def test_a_message_bundle_without_header_first_is_refused(
        self, mappings: MappingSet, ctx: MapContext
    ) -> None:
        """FHIR R4: a message Bundle starts with its MessageHeader."""
        bundle = {
            "resourceType": "Bundle",
            "type": "message",
            "entry": [{"resource": case("fhir_patient.json")}],
        }
        with pytest.raises(CanonicalError, match="must start with its MessageHeader"):
            mappings.map_fhir(bundle, ctx)

    def test_a_searchset_is_refused(self, mappings: MappingSet, ctx: MapContext) -> None:
        """Only transaction, batch, message and collection Bundles are input."""
        with pytest.raises(NoMappingError, match="searchset is not accepted"):
            mappings.map_fhir({"resourceType": "Bundle", "type": "searchset"}, ctx)
