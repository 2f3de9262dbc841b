"""Orders, scheduling, documents and vaccinations through the pipeline: routed, or refused."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from broker.adapters.spec import AdapterSpec, load_adapters
from broker.canonical import check
from broker.envelope import Envelope, MessageState
from broker.errors import CanonicalError
from broker.mapping import MappingSet
from broker.pipeline import process
from broker.settings import REPO_ROOT

GOLDEN = REPO_ROOT / "mappings" / "tests"

# One accepted golden case per family and version, with the resource it is about.
ACCEPTED = [
    pytest.param("orm_o01_v251", "ORM^O01", "ServiceRequest", id="orm-v2.5.1"),
    pytest.param("orm_o01_v23_cancel", "ORM^O01", "ServiceRequest", id="orm-v2.3"),
    pytest.param("oml_o21_v251", "OML^O21", "ServiceRequest", id="oml-v2.5.1"),
    pytest.param("siu_s12_v251", "SIU^S12", "Appointment", id="siu-s12-v2.5.1"),
    pytest.param("siu_s15_v23", "SIU^S15", "Appointment", id="siu-s15-v2.3"),
    pytest.param("mdm_t02_v251", "MDM^T02", "DocumentReference", id="mdm-v2.5.1"),
    pytest.param("mdm_t02_v26_pdf", "MDM^T02", "DocumentReference", id="mdm-ed-v2.6"),
    pytest.param("vxu_v04_v251", "VXU^V04", "Immunization", id="vxu-v2.5.1"),
    pytest.param("vxu_v04_v23", "VXU^V04", "Immunization", id="vxu-v2.3"),
    pytest.param("oml_o21_v27", "OML^O21", "ServiceRequest", id="oml-v2.7"),
    pytest.param("siu_s12_v28", "SIU^S12", "Appointment", id="siu-s12-v2.8"),
    pytest.param("mdm_t02_v27", "MDM^T02", "DocumentReference", id="mdm-v2.7"),
    pytest.param("vxu_v04_v28", "VXU^V04", "Immunization", id="vxu-v2.8"),
]


@pytest.fixture(scope="module")
def mappings() -> MappingSet:
    return MappingSet.load(REPO_ROOT / "mappings")


@pytest.fixture(scope="module")
def adapters() -> dict[str, AdapterSpec]:
    return {s.id: s for s in load_adapters(REPO_ROOT / "adapters")}


@pytest.fixture(scope="module")
def subscriber() -> AdapterSpec:
    return AdapterSpec(
        id="clinical-fhir",
        name="Clinical FHIR store",
        direction="outbound",
        transport="fhir-rest",
        insecure_http=True,
        url="http://127.0.0.1:9091/fhir",
        subscribe={"events": ["ORM^O01", "OML^O21", "SIU^*", "MDM^T02", "VXU^V04"]},
    )


def run(raw: bytes, mappings: MappingSet, adapters: dict[str, AdapterSpec], sub: AdapterSpec):
    return process(Envelope(source="chu-rabat-adt"), raw, mappings, adapters, [sub])


def _replace_segment(raw: bytes, name: str, new: str | None) -> bytes:
    segments = raw.decode("utf-8").split("\r")
    out = [new if s.startswith(name + "|") else s for s in segments]
    return "\r".join(s for s in out if s is not None).encode("utf-8")


class TestAccepted:
    @pytest.mark.parametrize(("case", "event", "resource_type"), ACCEPTED)
    def test_each_event_is_mapped_and_routed(
        self, mappings, adapters, subscriber, case, event, resource_type
    ):
        """Each new event maps to its resource, tied to the patient, and reaches its subscriber."""
        raw = (GOLDEN / f"{case}.hl7").read_bytes()
        envelope, destinations = run(raw, mappings, adapters, subscriber)
        assert envelope.state is MessageState.ROUTED, envelope.reason
        assert envelope.event == event
        assert [d.id for d in destinations] == ["clinical-fhir"]
        types = [e["resource"]["resourceType"] for e in envelope.bundle["entry"]]
        assert resource_type in types
        assert "Patient" in types

    @pytest.mark.parametrize(
        ("event", "version"),
        [
            ("ORM^O01", "2.3"),
            ("ORM^O01", "2.6"),
            ("OML^O21", "2.5"),
            ("SIU^S13", "2.4"),
            ("SIU^S14", "2.5.1"),
            ("MDM^T02", "2.3.1"),
            ("VXU^V04", "2.5.1"),
            ("VXU^V04", "2.8"),
        ],
    )
    def test_the_intake_accepts_the_new_events(self, mappings, event, version):
        """The HL7v2 intake's supports() says yes, so the edge journals them (no NoMappingError)."""
        assert mappings.supports(event, version, "chu-rabat-adt")

    @pytest.mark.parametrize(
        ("event", "version"), [("OML^O21", "2.4"), ("ORM^O01", "2.7")], ids=["oml-2.4", "orm-2.7"]
    )
    def test_structures_outside_their_versions_have_no_mapping(self, mappings, event, version):
        """OML^O21 of v2.4 has another structure and ORM is withdrawn in v2.7: refused at the edge."""
        assert not mappings.supports(event, version, "chu-rabat-adt")


class TestRefused:
    def test_an_order_with_no_pid_is_refused_with_that_reason(self, mappings, adapters, subscriber):
        """An ORM without PID is FAILED naming the missing patient, and delivered to nobody."""
        raw = (GOLDEN / "orm_o01_no_patient.hl7").read_bytes()
        envelope, destinations = run(raw, mappings, adapters, subscriber)
        assert envelope.state is MessageState.FAILED
        assert "no identified patient" in (envelope.reason or "")
        assert "PID" in (envelope.reason or "")
        assert destinations == []

    @pytest.mark.parametrize(
        "case",
        ["oml_o21_v251", "siu_s12_v251", "mdm_t02_v251", "vxu_v04_v251"],
    )
    def test_an_empty_pid_3_is_refused_for_every_family(self, mappings, adapters, subscriber, case):
        """PID-3 emptied: the message is refused with the reason, never emitted as invalid FHIR."""
        raw = (GOLDEN / f"{case}.hl7").read_bytes()
        pid = "PID|1||||EL AMRANI^Fatima^^^^^L||19620312|F"
        envelope, destinations = run(
            _replace_segment(raw, "PID", pid), mappings, adapters, subscriber
        )
        assert envelope.state is MessageState.FAILED
        assert "PID-3 is empty" in (envelope.reason or "")
        assert destinations == []

    def test_a_document_without_content_is_refused(self, mappings, adapters, subscriber):
        """An MDM^T02 whose OBX body is missing is refused: a DocumentReference needs content."""
        raw = (GOLDEN / "mdm_t02_v251_no_content.hl7").read_bytes()
        envelope, destinations = run(raw, mappings, adapters, subscriber)
        assert envelope.state is MessageState.FAILED
        assert "DocumentReference.content" in (envelope.reason or "")
        assert "required by FHIR R4" in (envelope.reason or "")
        assert destinations == []

    def test_an_order_without_obr_is_refused(self, mappings, adapters, subscriber):
        """An ORM whose ORC carries no OBR gives no ServiceRequest: refused, naming ORC/OBR."""
        raw = _replace_segment((GOLDEN / "orm_o01_v26.hl7").read_bytes(), "OBR", None)
        envelope, destinations = run(raw, mappings, adapters, subscriber)
        assert envelope.state is MessageState.FAILED
        assert "no ServiceRequest" in (envelope.reason or "")
        assert destinations == []


def _bundle(mappings: MappingSet, case: str) -> dict[str, Any]:
    from broker.mapping.golden import CONTEXT
    from broker.parsing.hl7v2 import decode, parse

    message = parse(decode((GOLDEN / f"{case}.hl7").read_bytes()))
    return copy.deepcopy(mappings.map_hl7v2(message, CONTEXT).bundle)


def _resources(bundle: dict[str, Any], resource_type: str) -> list[dict[str, Any]]:
    return [
        e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == resource_type
    ]


class TestCheck:
    """``check`` refuses each family's resource when it is not tied to the message's patient."""

    @pytest.mark.parametrize(
        ("case", "event", "resource_type", "element"),
        [
            pytest.param("orm_o01_v251", "ORM^O01", "ServiceRequest", "subject", id="orm"),
            pytest.param("mdm_t02_v251", "MDM^T02", "DocumentReference", "subject", id="mdm"),
            pytest.param("vxu_v04_v251", "VXU^V04", "Immunization", "patient", id="vxu"),
        ],
    )
    def test_a_resource_not_about_the_patient_is_refused(
        self, mappings, case, event, resource_type, element
    ):
        """The subject/patient reference must be the message's Patient."""
        bundle = _bundle(mappings, case)
        check(event, bundle)
        _resources(bundle, resource_type)[0][element] = {"reference": "urn:uuid:elsewhere"}
        with pytest.raises(CanonicalError, match=resource_type):
            check(event, bundle)

    def test_an_appointment_without_the_patient_is_refused(self, mappings):
        """An Appointment must list the patient among its participants."""
        bundle = _bundle(mappings, "siu_s12_v251")
        appointment = _resources(bundle, "Appointment")[0]
        appointment["participant"] = appointment["participant"][1:]
        with pytest.raises(CanonicalError, match="participants"):
            check("SIU^S12", bundle)

    def test_a_family_without_its_resource_is_refused(self, mappings):
        """A VXU whose Immunizations are gone is refused, naming RXA."""
        bundle = _bundle(mappings, "vxu_v04_v251")
        bundle["entry"] = [
            e for e in bundle["entry"] if e["resource"]["resourceType"] != "Immunization"
        ]
        with pytest.raises(CanonicalError, match="RXA"):
            check("VXU^V04", bundle)

    def test_other_events_only_need_the_patient(self, mappings):
        """ADT and ORU keep the patient-only check: no family resource is required."""
        bundle = _bundle(mappings, "orm_o01_v251")
        check("ADT^A08", bundle)
