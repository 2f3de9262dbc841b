"""Deliveries checked by a real FHIR R4 server: a mixed feed leaves one Patient per person.

The subscriber ``dmp-national`` posts to the Medplum-based server of ``tests/fhir_server``
(``fhir_server`` fixtures in ``conftest.py``), not to the project's own capture. The feed mixes
synthetic messages written here (ADT A01/A04/A08/A03, ORU with several OBR and repeated OBX set
ids, ORM with several OBR under one ORC, SIU, MDM, VXU; some patients identified only by
``4019060^^^^EPI``, an identifier without assigning authority), the HL7 v2 samples of
``tests/samples/hl7v2`` and ``mappings/tests`` and the FHIR inputs of ``mappings/tests``, over MLLP
and HTTP. Then, on what the server stored:

- every delivery was answered 2xx (no dead letter; the server's OperationOutcome is printed);
- the Patients on the server are exactly the people of the feed (``PEOPLE``, a table written
  by hand from the messages, not computed by the product);
- re-delivering every envelope (the resend API) changes no resource count;
- every reference between stored resources resolves;
- FHIR.js, a validator independent of the product and of the server, accepts every resource.

The patients and all their numbers are synthetic (see tests/samples/SOURCES.md).
"""

from __future__ import annotations

import json
import subprocess
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from broker import keys
from broker.ack import read_ack
from broker.adapters.mllp import MllpClient
from broker.settings import REPO_ROOT
from broker.store.schema import messages
from broker.testing import stored_envelope_json, wait_for_port, wait_until
from passerelle_demo.loopback import LoopbackStack
from passerelle_demo.peers.mllp_capture import MllpCapture

pytestmark = pytest.mark.integration

SUBSCRIBER = "dmp-national"
FHIR_ADAPTER = "chu-rabat-fhir"
SAMPLES = REPO_ROOT / "tests" / "samples" / "hl7v2"
GOLDEN = REPO_ROOT / "mappings" / "tests"
SETTLE_S = 240

# The people of the feed and who each message is about, read from the messages by hand.
# A person is one human: the national CIN (MA/NNMAR) when the message has one, else the
# sender's own record number. The ADT^A40 samples merge record IPP0039001 into Fatima's; the
# merged record is not another person (it survives only as a link).
FATIMA = "Fatima EL AMRANI (CIN BE123456, IPP0042317)"
YOUSSEF_B = "Youssef BENJELLOUN (CIN JC987654, IPP0051902)"
NADIA = "Nadia OUAZZANI (CIN AB456789, IPP0060412)"
KARIM_O = "Karim OUAZZANI (CIN BK556677, IPP0063318)"
SALMA = "Salma TAZI (IPP0077120 at CHUIS)"
BENANI = "Youssef BENANI (CIN JB334455, IPP0051188)"
KHADIJA = "Khadija ALAOUI (CIN BH778899, IPP0060021)"
AMINE = "Amine EL IDRISSI (4019060^^^^EPI only)"
ZINEB = "Zineb BENNANI (4019061^^^^EPI, CIN CD112233)"
HAMZA = "Hamza OUALI (IPP0088001, CIN EE445566)"
MERYEM = "Meryem CHRAIBI (4019062^^^^EPI only)"
HOUDA = "Houda SEBBAR (4019070^^^^EPI only)"
KHADIJA_B = "Khadija BENJELLOUN (CIN BK274519, IPP0088231)"
KARIM_B = "Karim BENJELLOUN (CIN JC871204, IPP0051288)"
NADIA_2 = "Nadia OUAZZANI born 1990 (CIN AB771390, IPP0063218)"

SAMPLE_PEOPLE: dict[str, set[str]] = {
    **{
        name: {FATIMA}
        for name in (
            "adt_a01_birth_1013",
            "adt_a01_invalid_birthdate",
            "adt_a01_latin1",  # Fatima's identifiers under another name: her record, renamed
            "adt_a01_v23",
            "adt_a01_v251",
            "adt_a01_zsegments",
            "adt_a01_zpi",
            "adt_a01",
            "adt_a02_v23",
            "adt_a02_v251",
            "adt_a03_v23",
            "adt_a03_v251",
            "adt_a04",
            "adt_a08",
            "adt_a11_v251",
            "adt_a12_v251",
            "adt_a13_v251",
            "adt_a40_v23",
            "adt_a40_v251",
            "adt_v2x_a01_v231",
            "adt_v2x_a01_v24",
            "adt_v2x_a01_v25",
            "adt_v2x_a01_v26",
            "adt_v2x_a01_v27",
            "adt_v2x_a01_v28",
            "mdm_t02_v251",
            "mdm_t02_v27",
            "oml_o21_v251",
            "oml_o21_v27",
            "orm_o01_v251",
            "oru_r01_20obx",
            "oru_r01_orc_repeats_v251",
            "oru_r01_value_types_v251",
            "siu_s12_v251",
            "siu_s12_v28",
            "fhir_patient",
            "fhir_condition",
            "fhir_documentreference",
            "fhir_encounter",
            "fhir_servicerequest",
            "fhir_appointment",
            "fhir_message",
            "fhir_site_local_codes",
        )
    },
    "oru_r01_two_patients": {FATIMA, YOUSSEF_B},
    **{
        name: {YOUSSEF_B}
        for name in (
            "mdm_t02_v23",
            "orm_o01_v23_cancel",
            "oru_r01_v23",  # named Karim, but Youssef's CIN, IPP and birth date
            "siu_s13_v23",
            "siu_s15_v23",
            "vxu_v04_v23",
        )
    },
    "adt_a28_v251": {NADIA},
    "adt_a31_v251": {NADIA},
    **{
        name: {KARIM_O}
        for name in ("mdm_t02_v26_pdf", "oml_o21_v26_discontinue", "orm_o01_v26", "siu_s14_v26")
    },
    **{name: {SALMA} for name in ("oml_o21_v25", "vxu_v04_v251", "vxu_v04_v28")},
    **{
        name: {BENANI}
        for name in (
            "fhir_batch",
            "fhir_collection",
            "fhir_transaction",
            "fhir_observation",
            "fhir_diagnosticreport",
            "fhir_allergyintolerance",
        )
    },
    **{name: {KARIM_B} for name in ("adt_a05_v251", "adt_a06_v251", "adt_a07_v251")},
    "oru_r01_v28": {NADIA_2},
    "orm_o01_shared_placer": {HOUDA},
    "oru_r01_shared_ids": {HOUDA},
    "oru_r01_50obx_malformed": {KHADIJA_B},  # four OBX dropped, 46 results delivered
    "fhir_immunization": {KHADIJA},
    "fhir_unsupported_coverage": {KHADIJA},
}

# Samples left out of the feed, each with the reason.
NOT_SENT = {
    # Deliberately refused by the broker (the golden case expects an error, or it is broken).
    "broken_encoding_chars": "deliberately broken framing",
    "broken_missing_msh10": "deliberately broken: no MSH-10",
    "broken_no_msh": "deliberately broken: no MSH",
    "adt_a17_unsupported": "an event without a mapping (refused with AR)",
    "mdm_t02_v251_no_content": "golden refusal case (no document content)",
    "orm_o01_no_patient": "golden refusal case (no patient)",
    "fhir_servicerequest_no_subject": "golden refusal case (no subject)",
}


@dataclass(frozen=True)
class Message:
    """One input of the feed: what it is, how it travels and whom it is about."""

    name: str
    payload: bytes
    transport: str  # "mllp" or "fhir"
    people: frozenset[str]


def _v2(*segments: str) -> bytes:
    return ("\r".join(segments) + "\r").encode("utf-8")


def _msh(event: str, control: str, version: str = "2.5.1", app: str = "HIS") -> str:
    return f"MSH|^~\\&|{app}|CHUIS|PASSERELLE|MS|20261128090000||{event}|{control}|P|{version}"


PID_AMINE = (
    "PID|1||4019060^^^^EPI||EL IDRISSI^Amine^^^^^L~الإدريسي^أمين^^^^^L||19790514|M|||"
    "8 Avenue Hassan II^^Oujda^^60000^MA^H||0662001122^PRN^CP"
)
PID_ZINEB = (
    "PID|1||4019061^^^^EPI~CD112233^^^MA^NNMAR||BENNANI^Zineb^^^^^L~بناني^زينب^^^^^L||19880923|F|||"
    "21 Rue de Fès^^Meknès^^50000^MA^H||0663112233^PRN^CP"
)
PID_HAMZA = (
    "PID|1||IPP0088001^^^CHUIS^PI~EE445566^^^MA^NNMAR||OUALI^Hamza^^^^^L~والي^حمزة^^^^^L||19670101|M|||"
    "3 Derb Sidi Bouloukat^^Marrakech^^40000^MA^H"
)
PID_MERYEM = "PID|1||4019062^^^^EPI||CHRAIBI^Meryem^^^^^L~الشرايبي^مريم^^^^^L||20240105|F"
DOCTOR = "12345^BENNANI^Youssef^^^Dr^^^CHUIS"


def _pv1(kind: str, visit: str, discharge: str = "") -> str:
    fields = ["PV1", "1", kind, "MED^101^1^CHUIS", "", "", "", DOCTOR] + [""] * 11
    fields += [f"{visit}^^^CHUIS^VN"] + [""] * 24 + ["20261127101500", discharge]
    return "|".join(fields)


def synthetic_feed() -> list[Message]:
    """Messages written for this test (synthetic people, CHU Ibn Sina as the sender)."""
    out: list[tuple[str, bytes, set[str]]] = []

    def adt(event: str, structure: str, control: str, pid: str, pv1: str) -> bytes:
        return _v2(
            _msh(f"ADT^{event}^{structure}", control), f"EVN|{event}|20261128090000", pid, pv1
        )

    out += [
        (
            "amine_a01",
            adt("A01", "ADT_A01", "RFS0001", PID_AMINE, _pv1("I", "V2026-7001")),
            {AMINE},
        ),
        (
            "amine_a08",
            adt("A08", "ADT_A01", "RFS0002", PID_AMINE, _pv1("I", "V2026-7001")),
            {AMINE},
        ),
        (
            "amine_oru",
            _v2(
                _msh("ORU^R01^ORU_R01", "RFS0003", app="LIS"),
                PID_AMINE,
                "OBR|1|ORD-9001^HIS|FIL5001^LABCHUIS|24323-8^Bilan métabolique^LN|||20261128080000"
                "||||||||||||||||||F",
                # Two OBX with set id 1 under one OBR: real feeds repeat set ids.
                "OBX|1|NM|2345-7^Glucose^LN||1.02|g/L^g/L^UCUM|0.70-1.10|N|||F|||20261128093000",
                "OBX|1|NM|2160-0^Créatinine^LN||9.1|mg/L^mg/L^UCUM|6.0-12.0|N|||F|||20261128093000",
                "OBR|2|ORD-9002^HIS|FIL5002^LABCHUIS|58410-2^Numération formule sanguine^LN|||"
                "20261128080000||||||||||||||||||F",
                "OBX|1|NM|718-7^Hémoglobine^LN||14.2|g/dL^g/dL^UCUM|13.0-17.0|N|||F",
                "OBX|2|NM|6690-2^Leucocytes^LN||7.1|10*3/uL^10*3/uL^UCUM|4.0-10.0|N|||F",
            ),
            {AMINE},
        ),
        (
            "amine_siu",
            _v2(
                _msh("SIU^S12^SIU_S12", "RFS0004", app="RDV"),
                "SCH|RDV-PL-99001^HIS|RDV-2026-9001^RDV||||NEW^Nouveau rendez-vous^HL70276|"
                "FOLLOWUP^Consultation de suivi^HL70276|Normal^Normal^HL70277|30|min|"
                "^^30^20261210093000^20261210100000||||||||||||||Booked",
                "TQ1|1||||||20261210093000|20261210100000",
                PID_AMINE,
                "PV1|1|O|MED^^^CHUIS",
                "RGS|1|A",
                "AIS|1|A|CS-MED^Consultation de médecine^99CHUIS|20261210093000|||30|min",
                f"AIP|1|A|{DOCTOR}|D^Médecin^99CHUIS",
            ),
            {AMINE},
        ),
        (
            "amine_a03",
            adt("A03", "ADT_A03", "RFS0005", PID_AMINE, _pv1("I", "V2026-7001", "20261130110000")),
            {AMINE},
        ),
        (
            "zineb_a04",
            adt("A04", "ADT_A01", "RFS0010", PID_ZINEB, _pv1("O", "V2026-7002")),
            {ZINEB},
        ),
        (
            "zineb_orm",
            _v2(
                _msh("ORM^O01^ORM_O01", "RFS0011"),
                PID_ZINEB,
                "PV1|1|O|MED^^^CHUIS||||||||||||||||V2026-7002^^^CHUIS^VN",
                # One ORC, three OBR sharing its placer number P1234 (seen in real feeds).
                f"ORC|NW|P1234^HIS|||SC||^^^20261128100000^^R||20261128094500|||{DOCTOR}",
                f"OBR|1|P1234^HIS||GLY^Glycémie^L||||||||||||{DOCTOR}",
                f"OBR|2|P1234^HIS||718-7^Hémoglobine^LN||||||||||||{DOCTOR}",
                f"OBR|3|P1234^HIS||2160-0^Créatinine^LN||||||||||||{DOCTOR}",
            ),
            {ZINEB},
        ),
        (
            "zineb_mdm",
            _v2(
                _msh("MDM^T02^MDM_T02", "RFS0012", app="DPI"),
                "EVN|T02|20261128160000",
                PID_ZINEB,
                "PV1|1|O|MED^^^CHUIS||||||||||||||||V2026-7002^^^CHUIS^VN",
                f"TXA|1|CN|TX|20261128150000|{DOCTOR}|20261128155000|||{DOCTOR}|||"
                "DOC-2026-7702^DPI|||||AU|U|AV",
                "OBX|1|TX|CN^Compte rendu de consultation^L||Consultation de médecine interne.||||||F",
                "OBX|2|TX|CN^Compte rendu de consultation^L||Bilan biologique demandé.||||||F",
            ),
            {ZINEB},
        ),
        (
            "zineb_a08",
            adt("A08", "ADT_A01", "RFS0013", PID_ZINEB, _pv1("O", "V2026-7002")),
            {ZINEB},
        ),
        (
            "hamza_a01",
            adt("A01", "ADT_A01", "RFS0020", PID_HAMZA, _pv1("I", "V2026-7003")),
            {HAMZA},
        ),
        (
            "hamza_oru",
            _v2(
                _msh("ORU^R01^ORU_R01", "RFS0021", app="LIS"),
                PID_HAMZA,
                "OBR|1|ORD-9101^HIS|FIL5101^LABCHUIS|24331-1^Bilan lipidique^LN|||20261128080000"
                "||||||||||||||||||F",
                "OBX|1|NM|2093-3^Cholestérol total^LN||2.10|g/L^g/L^UCUM|1.50-2.00|H|||F",
                "OBX|2|NM|2571-8^Triglycérides^LN||1.40|g/L^g/L^UCUM|0.50-1.50|N|||F",
                "OBX|3|NM|2085-9^Cholestérol HDL^LN||0.45|g/L^g/L^UCUM|0.40-0.60|N|||F",
            ),
            {HAMZA},
        ),
        (
            "hamza_vxu",
            _v2(
                _msh("VXU^V04^VXU_V04", "RFS0022", app="SIH"),
                PID_HAMZA,
                "ORC|RE||VAX-2026-7101^CHUIS",
                "RXA|0|1|20261128100000|20261128100000|141^Influenza, seasonal, injectable^CVX|0.5|"
                "mL^mL^UCUM||00^New immunization record^NIP001||||||FLU2611A|20270630|"
                "SKB^GlaxoSmithKline^MVX|||CP|A",
                "RXR|IM^Intramuscular^HL70162|LD^Left Deltoid^HL70163",
            ),
            {HAMZA},
        ),
        (
            "hamza_a03",
            adt("A03", "ADT_A03", "RFS0023", PID_HAMZA, _pv1("I", "V2026-7003", "20261129120000")),
            {HAMZA},
        ),
        (
            "meryem_a04",
            adt("A04", "ADT_A01", "RFS0030", PID_MERYEM, _pv1("O", "V2026-7004")),
            {MERYEM},
        ),
        (
            "meryem_vxu",
            _v2(
                _msh("VXU^V04^VXU_V04", "RFS0031", app="SIH"),
                PID_MERYEM,
                "ORC|RE||VAX-2026-7201^CHUIS",
                "RXA|0|1|20261128103000|20261128103000|08^Hep B, adolescent or pediatric^CVX|0.5|"
                "mL^mL^UCUM||00^New immunization record^NIP001||||||HB2611C|20270131|"
                "MSD^Merck and Co., Inc.^MVX|||CP|A",
                "ORC|RE||VAX-2026-7202^CHUIS",
                "RXA|0|1|20240106|20240106|19^BCG^CVX|999|||01^Historical information^NIP001"
                "|||||||||||CP|A",
            ),
            {MERYEM},
        ),
    ]
    return [Message(name, data, "mllp", frozenset(people)) for name, data, people in out]


def sample_feed() -> list[Message]:
    """The HL7 v2 samples and FHIR inputs meant to be accepted, in a fixed order."""
    files = sorted(SAMPLES.glob("*.hl7")) + sorted(GOLDEN.glob("*.hl7"))
    files += sorted(GOLDEN.glob("chu-rabat-adt/*.hl7"))
    files += [f for f in sorted(GOLDEN.glob("*.json")) if not f.name.endswith(".expected.json")]
    files += [
        f
        for f in sorted(GOLDEN.glob("chu-rabat-fhir/*.json"))
        if not f.name.endswith(".expected.json")
    ]
    out = []
    for path in files:
        if path.stem in NOT_SENT:
            continue
        assert path.stem in SAMPLE_PEOPLE, f"{path}: add it to SAMPLE_PEOPLE or NOT_SENT"
        transport = "fhir" if path.suffix == ".json" else "mllp"
        out.append(
            Message(path.stem, path.read_bytes(), transport, frozenset(SAMPLE_PEOPLE[path.stem]))
        )
    return out


def the_feed() -> list[Message]:
    """Every input, interleaved as one hospital's day would be: samples, then this test's own."""
    return sample_feed() + synthetic_feed()


# -- The server itself (fast: no broker) ----------------------------------------------------

PATIENT_URN = "urn:uuid:5d7e2c10-4a3b-4f6e-9c1d-8e2f3a4b5c61"
ENCOUNTER_URN = "urn:uuid:6e8f3d21-5b4c-4a7f-8d2e-9f3a4b5c6d72"
IPP = "https://passerelle.ma/fhir/sid/ipp/chuis"


def _transaction(ipp: str, *, observation_status: str | None = "final") -> dict[str, Any]:
    """Patient (conditional update), Encounter (conditional create), Observation (create)."""
    observation: dict[str, Any] = {
        "resourceType": "Observation",
        "code": {"coding": [{"system": "http://loinc.org", "code": "2345-7"}]},
        "subject": {"reference": PATIENT_URN},
        "encounter": {"reference": ENCOUNTER_URN},
        "valueQuantity": {
            "value": 1.02,
            "unit": "g/L",
            "system": "http://unitsofmeasure.org",
            "code": "g/L",
        },
    }
    if observation_status:
        observation["status"] = observation_status
    visit = {"system": "https://passerelle.ma/fhir/sid/visit/chuis", "value": f"V-{ipp}"}
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": PATIENT_URN,
                "resource": {
                    "resourceType": "Patient",
                    "identifier": [{"system": IPP, "value": ipp}],
                    "name": [{"family": "EL IDRISSI", "given": ["Amine"]}],
                },
                "request": {"method": "PUT", "url": f"Patient?identifier={IPP}|{ipp}"},
            },
            {
                "fullUrl": ENCOUNTER_URN,
                "resource": {
                    "resourceType": "Encounter",
                    "identifier": [visit],
                    "status": "in-progress",
                    "class": {
                        "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                        "code": "IMP",
                    },
                    "subject": {"reference": PATIENT_URN},
                },
                "request": {
                    "method": "POST",
                    "url": "Encounter",
                    "ifNoneExist": f"identifier={visit['system']}|{visit['value']}",
                },
            },
            {
                "fullUrl": "urn:uuid:7f904e32-6c5d-4b80-9e3f-a04b5c6d7e83",
                "resource": observation,
                "request": {"method": "POST", "url": "Observation"},
            },
        ],
    }


def _search(server: httpx.Client, kind: str, query: str) -> list[dict[str, Any]]:
    reply = server.get(f"/{kind}?{query}")
    assert reply.status_code == 200, reply.text
    return [e["resource"] for e in reply.json().get("entry", [])]


@pytest.fixture
def server(fhir_server: Any) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=fhir_server.base_url, timeout=30) as client:
        yield client


class TestTheRealServer:
    def test_it_takes_a_transaction_and_resolves_its_references(self, server: httpx.Client) -> None:
        """201 per new entry, urn:uuid references rewritten, found again by identifier."""
        reply = server.post("", json=_transaction("SMOKE-1"))
        assert reply.status_code == 200, reply.text
        assert [e["response"]["status"] for e in reply.json()["entry"]] == ["201", "201", "201"]
        (patient,) = _search(server, "Patient", f"identifier={IPP}|SMOKE-1")
        (observation,) = _search(server, "Observation", f"subject=Patient/{patient['id']}")
        assert observation["subject"]["reference"] == f"Patient/{patient['id']}"
        assert observation["encounter"]["reference"].startswith("Encounter/")

    def test_the_same_transaction_again_updates_and_creates_nothing(
        self, server: httpx.Client
    ) -> None:
        """Conditional update and If-None-Exist find what the first one wrote (200, not 201)."""
        assert server.post("", json=_transaction("SMOKE-2")).status_code == 200
        reply = server.post("", json=_transaction("SMOKE-2"))
        assert reply.status_code == 200, reply.text
        assert [e["response"]["status"] for e in reply.json()["entry"]][:2] == ["200", "200"]
        assert len(_search(server, "Patient", f"identifier={IPP}|SMOKE-2")) == 1

    def test_it_refuses_two_entries_with_the_same_conditional_url(
        self, server: httpx.Client
    ) -> None:
        """400 with an OperationOutcome naming the entry, and nothing of the bundle is kept."""
        bundle = _transaction("SMOKE-3")
        second = json.loads(json.dumps(bundle["entry"][0]))
        second["fullUrl"] = "urn:uuid:8a015f43-7d6e-4c91-8f40-b15c6d7e8f94"
        bundle["entry"].append(second)
        reply = server.post("", json=bundle)
        assert reply.status_code == 400, reply.text
        outcome = reply.json()
        assert outcome["resourceType"] == "OperationOutcome"
        assert outcome["issue"][0]["expression"] == ["Bundle.entry[3].request"]
        assert _search(server, "Patient", f"identifier={IPP}|SMOKE-3") == []

    def test_a_failed_transaction_keeps_none_of_its_entries(self, server: httpx.Client) -> None:
        """An invalid last entry (Observation without status) undoes the Patient before it."""
        reply = server.post("", json=_transaction("SMOKE-4", observation_status=None))
        assert reply.status_code == 400, reply.text
        assert "Observation.status" in reply.text
        assert _search(server, "Patient", f"identifier={IPP}|SMOKE-4") == []

    def test_it_takes_a_transaction_of_twenty_conditional_updates(
        self, server: httpx.Client
    ) -> None:
        """No size cap below what FHIR allows: an ORU with twenty results is one transaction."""
        bundle = _transaction("SMOKE-6")
        for n in range(20):
            system = "https://passerelle.ma/fhir/sid/lab-result/chuis"
            observation = json.loads(json.dumps(bundle["entry"][2]["resource"]))
            observation["identifier"] = [{"system": system, "value": f"SMOKE-6-{n}"}]
            bundle["entry"].append(
                {
                    "fullUrl": f"urn:uuid:9b126a54-8e7f-4da2-9051-c26d7e8f{n:04d}",
                    "resource": observation,
                    "request": {
                        "method": "PUT",
                        "url": f"Observation?identifier={system}|SMOKE-6-{n}",
                    },
                }
            )
        reply = server.post("", json=bundle)
        assert reply.status_code == 200, reply.text
        assert len(reply.json()["entry"]) == 23

    def test_it_refuses_update_as_create_with_a_client_id(self, server: httpx.Client) -> None:
        """PUT Patient/<id> of a Patient that does not exist: 405 (FHIR R4 §3.1.0.4), alone or
        in a transaction."""
        patient = {"resourceType": "Patient", "id": "smoke-5"}
        reply = server.put("/Patient/smoke-5", json=patient)
        assert reply.status_code == 405, reply.text
        assert reply.json()["resourceType"] == "OperationOutcome"
        bundle = _transaction("SMOKE-5")
        bundle["entry"][0]["request"]["url"] = "Patient/smoke-5"
        bundle["entry"][0]["resource"]["id"] = "smoke-5"
        reply = server.post("", json=bundle)
        assert reply.status_code == 405, reply.text
        assert "Bundle.entry[0]" in reply.json()["issue"][0]["details"]["text"]


# -- What the broker did --------------------------------------------------------------------


def _streams(stack: LoopbackStack) -> list[tuple[bytes, str]]:
    found = [(key, "pipeline") for key in stack.redis.scan_iter("pl:in:*")]
    found += [(key, "deliver") for key in stack.redis.scan_iter(f"pl:out:{SUBSCRIBER}:*")]
    return found


def settled(stack: LoopbackStack) -> bool:
    """Every journal and delivery stream read to its end and nothing pending."""
    for key, group in _streams(stack):
        last = stack.redis.xinfo_stream(key)["last-generated-id"]
        groups = {g["name"].decode(): g for g in stack.redis.xinfo_groups(key)}
        state = groups.get(group)
        if state is None or state["pending"] or state["last-delivered-id"] != last:
            return False
    return True


def dead_letters(api: httpx.Client) -> list[dict[str, Any]]:
    """Every dead letter of the FHIR subscriber, whatever its status (summaries)."""
    reply = api.get(f"/api/dead-letters/{SUBSCRIBER}", params={"status": "all", "limit": 1000})
    assert reply.status_code == 200, reply.text
    items: list[dict[str, Any]] = reply.json()
    return items


def describe_dead_letters(api: httpx.Client, letters: list[dict[str, Any]]) -> str:
    """Each dead letter with its event and the server's answer, for a diagnosable failure."""
    lines = []
    for letter in letters:
        # Without a reason: the metadata (event, control id, adapter), never the envelope.
        full = api.get(f"/api/dead-letters/{SUBSCRIBER}/{letter['id']}").json()
        attempts = full.get("attempts") or []
        last = attempts[-1] if attempts else {}
        lines.append(
            f"- {full.get('event')} {full.get('control_id')} from {full.get('adapter')}: "
            f"{full.get('reason')}\n    {last.get('reply') or last.get('error')}"
        )
    return "\n".join(lines)


# -- What the server holds ------------------------------------------------------------------


def stored(server: httpx.Client) -> dict[str, list[dict[str, Any]]]:
    """Every resource on the server, by type: each type the server supports, page after page."""
    capability = server.get("/metadata").json()
    types = [r["type"] for r in capability["rest"][0]["resource"]]
    out: dict[str, list[dict[str, Any]]] = {}
    for kind in types:
        url: str | None = f"{server.base_url}/{kind}?_count=500"
        while url:
            page = server.get(url)
            assert page.status_code == 200, page.text
            bundle = page.json()
            for entry in bundle.get("entry", []):
                out.setdefault(kind, []).append(entry["resource"])
            url = next(
                (link["url"] for link in bundle.get("link", []) if link["relation"] == "next"), None
            )
    return out


def counts(resources: dict[str, list[dict[str, Any]]]) -> dict[str, int]:
    return {kind: len(items) for kind, items in sorted(resources.items())}


def references(value: Any) -> Iterator[str]:
    """Every ``Reference.reference`` in a resource (FHIR R4 §2.3.0, datatype Reference)."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "reference" and isinstance(item, str):
                yield item
            else:
                yield from references(item)
    elif isinstance(value, list):
        for item in value:
            yield from references(item)


def unresolved(resources: dict[str, list[dict[str, Any]]]) -> list[str]:
    """References that name no stored resource (contained ``#id`` must be contained)."""
    known = {f"{kind}/{r['id']}" for kind, items in resources.items() for r in items}
    missing = []
    for kind, items in resources.items():
        for resource in items:
            contained = {f"#{c.get('id')}" for c in resource.get("contained", [])}
            for ref in references(resource):
                target = ref.split("/_history/")[0]
                if (ref.startswith("#") and ref in contained) or target in known:
                    continue
                missing.append(f"{kind}/{resource['id']} -> {ref}")
    return missing


def identifiers(patient: dict[str, Any]) -> list[str]:
    return [
        f"{i.get('system', '(no system)')}|{i.get('value')}" for i in patient.get("identifier", [])
    ]


# -- The run --------------------------------------------------------------------------------


@dataclass
class Run:
    """The stack, the server and what happened, shared by the tests of this module."""

    stack: LoopbackStack
    api: httpx.Client
    server: httpx.Client
    server_logs: Callable[[], str]
    feed: list[Message]
    answers: dict[str, str]
    first: dict[str, list[dict[str, Any]]]
    letters: list[dict[str, Any]]


class _ServerPeer:
    """Puts the real server where LoopbackStack expects its FHIR capture (start/stop are ours)."""

    def __init__(self, port: int) -> None:
        self.port = port

    def start_in_thread(self) -> int:
        return self.port

    def stop(self) -> None:
        """The server outlives the stack; its fixture stops it."""


def send(stack: LoopbackStack, api: httpx.Client, feed: list[Message]) -> dict[str, str]:
    """Send the feed in order: MLLP on one connection, FHIR over HTTP; return each answer."""
    answers = {}
    with MllpClient("127.0.0.1", stack.inbound_port, timeout=30) as client:
        for message in feed:
            if message.transport == "mllp":
                answers[message.name] = read_ack(client.send(message.payload), "latin-1").code
            else:
                reply = api.post(
                    f"/inbound/{FHIR_ADAPTER}/fhir",
                    content=message.payload,
                    headers={"Content-Type": "application/fhir+json"},
                )
                answers[message.name] = f"HTTP {reply.status_code}"
    return answers


@pytest.fixture(scope="module")
def run(
    tmp_path_factory: pytest.TempPathFactory, start_fhir_server: Callable[..., Any]
) -> Iterator[Run]:
    """Start a fresh real server and the broker, send the whole feed, wait until it settles."""
    fhir = start_fhir_server()
    data_dir = tmp_path_factory.mktemp("real-fhir-stack")
    registration = (REPO_ROOT / "adapters" / f"{FHIR_ADAPTER}.yaml").read_text(encoding="utf-8")
    (data_dir / "adapters").mkdir()
    (data_dir / "adapters" / f"{FHIR_ADAPTER}.yaml").write_text(registration, encoding="utf-8")
    with LoopbackStack(
        data_dir,
        peers=(_ServerPeer(fhir.port), MllpCapture()),
        # Every event to the FHIR server; the MLLP lab subscribes to nothing the feed carries.
        events={SUBSCRIBER: ["*"], "lab-legacy": ["NONE^NONE"]},
        # Each refused message is a dead letter, and the patient's next ones are still tried
        # (skip), so one run reports every refusal; a 5xx is retried three times at most.
        retry={
            "initial_delay_s": 0.2,
            "max_delay_s": 1.0,
            "max_attempts": 3,
            "on_exhausted": "skip",
        },
        workers=2,
        rekick_interval_s=1.0,
        # A 50-result ORU is one transaction of about 60 conditional entries that the server
        # validates one by one: seconds on a busy 2-core machine. The wait is generous so that a
        # slow answer is not a refusal; a refusal is still one.
        claim_idle_s=90.0,
        delivery_timeout_s=60.0,
    ) as stack:
        assert stack.settings is not None
        assert wait_for_port("127.0.0.1", stack.settings.http_port, 30), stack.logs()
        with (
            stack.api_client() as api,
            httpx.Client(base_url=fhir.base_url, timeout=30) as server,
        ):
            feed = the_feed()
            answers = send(stack, api, feed)
            assert wait_until(lambda: settled(stack), SETTLE_S, 0.5), stack.logs()
            yield Run(
                stack, api, server, fhir.logs, feed, answers, stored(server), dead_letters(api)
            )


def test_every_message_of_the_feed_is_taken_at_the_edge(run: Run) -> None:
    """Every sample meant to be accepted gets AA (MLLP) or 202 (FHIR over HTTP)."""
    refused = {
        name: answer for name, answer in run.answers.items() if answer not in ("AA", "HTTP 202")
    }
    assert not refused, f"refused at the edge: {refused}"


def test_every_delivery_is_accepted_by_the_real_server(run: Run) -> None:
    """No dead letter: each transaction got 2xx from the server (its refusals are printed)."""
    assert not run.letters, (
        f"{len(run.letters)} of the feed's deliveries were refused by the FHIR server:\n"
        + describe_dead_letters(run.api, run.letters)
    )


def test_each_person_of_the_feed_is_one_patient_on_the_server(run: Run) -> None:
    """N messages about K people leave exactly K Patient resources."""
    people = set().union(*(m.people for m in run.feed))
    patients = run.first.get("Patient", [])
    listing = "\n".join(
        f"  Patient/{p['id']}: {', '.join(identifiers(p))}"
        for p in sorted(patients, key=identifiers)
    )
    assert len(patients) == len(people), (
        f"{len(run.feed)} messages about {len(people)} people left {len(patients)} Patients:\n"
        f"{listing}"
    )


def test_every_reference_between_stored_resources_resolves(run: Run) -> None:
    """A Reference.reference names a resource the server holds (or a contained one)."""
    missing = unresolved(run.first)
    by_target = Counter(m.split(" -> ")[1].split("/")[0] for m in missing)
    assert not missing, (
        f"{len(missing)} references do not resolve (by target: {dict(by_target)}):\n"
        + "\n".join(missing[:60])
    )


def test_an_independent_validator_accepts_every_stored_resource(run: Run, tmp_path: Path) -> None:
    """FHIR.js (npm ``fhir``), neither the product's models nor the server, finds no error."""
    every = [r for items in run.first.values() for r in items]
    assert every, "the server holds nothing"
    path = tmp_path / "resources.json"
    path.write_text(json.dumps(every), encoding="utf-8")
    result = subprocess.run(
        ["node", str(REPO_ROOT / "tests" / "fhir_server" / "validate.mjs"), str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    failures = json.loads(result.stdout)
    by_message: dict[str, list[str]] = defaultdict(list)
    for failure in failures:
        for error in failure["errors"]:
            by_message[f"{error['location']}: {error['message']}"].append(failure["resource"])
    assert not failures, (
        f"{len(failures)} of {len(every)} stored resources are invalid:\n"
        + "\n".join(
            f"  {text} ({len(where)}x, e.g. {where[0]})"
            for text, where in sorted(by_message.items())
        )
    )


def test_redelivering_every_envelope_creates_no_new_resource(run: Run) -> None:
    """The resend API sends every delivered envelope again; no resource count changes.

    Runs last in this module: it changes what the server holds.
    """
    envelopes = {}
    for key in run.stack.redis.scan_iter(keys.envelope("*")):
        envelope_id = key.decode().removeprefix(keys.envelope(""))
        envelope = json.loads(stored_envelope_json(run.stack.redis, envelope_id) or b"{}")
        if envelope.get("bundle") is not None:
            envelopes[envelope["id"]] = datetime.fromisoformat(envelope["received_at"]).timestamp()
    # Those the store's writer dropped from Redis (delivered to every subscriber) are resent
    # from the store.
    query = sa.select(messages.c.id, messages.c.received_at).where(messages.c.state == "routed")
    with run.stack.store.connect() as connection:
        for row in connection.execute(query):
            envelopes.setdefault(row.id, row.received_at)
    envelopes = [{"id": i} for i, _ in sorted(envelopes.items(), key=lambda item: item[1])]
    assert envelopes, "no envelope to re-deliver"
    for envelope in envelopes:
        reply = run.api.post(
            f"/api/messages/{envelope['id']}/resend",
            json={"to": SUBSCRIBER, "why": "real FHIR server test: re-delivery must be idempotent"},
        )
        assert reply.status_code == 202, reply.text
    assert wait_until(lambda: settled(run.stack), SETTLE_S, 0.5), run.stack.logs()
    after = stored(run.server)
    before_counts, after_counts = counts(run.first), counts(after)
    refused_before = {letter["envelope_id"] for letter in run.letters}
    letters_now = dead_letters(run.api)
    seen = {letter["id"] for letter in run.letters}
    # A message the server took the first time must be taken again: the same transaction.
    newly_refused = [
        letter
        for letter in letters_now
        if letter["id"] not in seen and letter["envelope_id"] not in refused_before
    ]
    assert after_counts == before_counts, (
        f"re-delivering {len(envelopes)} envelopes changed the server's counts "
        f"({len(letters_now) - len(seen)} re-deliveries refused):\n"
        + "\n".join(
            f"  {kind}: {before_counts.get(kind, 0)} -> {after_counts.get(kind, 0)}"
            for kind in sorted(set(before_counts) | set(after_counts))
            if before_counts.get(kind, 0) != after_counts.get(kind, 0)
        )
    )
    assert not newly_refused, (
        "re-delivering what the server accepted the first time was refused:\n"
        + describe_dead_letters(run.api, newly_refused)
    )
