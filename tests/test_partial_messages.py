"""Keep the good part of a flawed message (issue 8, item 7): malformed OBX are dropped, not the rest.

Through ``pipeline.process`` with in-memory registrations (tests/test_pipeline.py style). The
oracle is the sample's own text, split by hand here: which OBX are malformed is written down in
tests/samples/SOURCES.md, and the expected results are the LOINC codes of every other OBX.
"""

from __future__ import annotations

import pytest

from broker.adapters.spec import AdapterSpec
from broker.envelope import Envelope, MessageState
from broker.mapping import MappingSet
from broker.pipeline import dropped_tally, process
from broker.settings import REPO_ROOT

SAMPLE = REPO_ROOT / "tests" / "samples" / "hl7v2" / "oru_r01_50obx_malformed.hl7"

MALFORMED = {
    # (order number, OBX-1) → the structural location the finding must name
    (1, "16"): "PATIENT_RESULT(1)/ORDER_OBSERVATION(1)/OBSERVATION(16)/OBX",  # NM "3,72"
    (2, "13"): "PATIENT_RESULT(1)/ORDER_OBSERVATION(2)/OBSERVATION(13)/OBX",  # OBX-3 empty
    (3, "1"): "PATIENT_RESULT(1)/ORDER_OBSERVATION(3)/OBSERVATION(1)/OBX",  # fields shifted
    (4, "4"): "PATIENT_RESULT(1)/ORDER_OBSERVATION(4)/OBSERVATION(4)/OBX",  # units in OBX-5
}
"""The four malformed OBX of the sample (tests/samples/SOURCES.md)."""


def _sample(name: str) -> str:
    """A sample's text with its CR segment separators (``read_text`` would turn them into LF)."""
    return (SAMPLE.parent / name).read_bytes().decode("utf-8")


def _obx_by_order(text: str) -> list[tuple[int, list[list[str]]]]:
    """(order number, its OBX split into fields), read from the ER7 text without the broker."""
    orders: list[tuple[int, list[list[str]]]] = []
    for segment in text.split("\r"):
        fields = segment.split("|")
        if fields[0] == "OBR":
            orders.append((len(orders) + 1, []))
        elif fields[0] == "OBX":
            orders[-1][1].append(fields)
    return orders


def _expected_codes(text: str) -> list[str]:
    """OBX-3.1 of every OBX that is not one of the malformed four, in message order."""
    return [
        obx[3].split("^")[0]
        for order, segments in _obx_by_order(text)
        for obx in segments
        if (order, obx[1]) not in MALFORMED
    ]


def _inbound(on_invalid_segment: str | None = None) -> AdapterSpec:
    extra = {} if on_invalid_segment is None else {"on_invalid_segment": on_invalid_segment}
    return AdapterSpec(
        id="chuis-lab",
        name="CHU Ibn Sina - laboratoire",
        direction="inbound",
        transport="mllp",
        listen="127.0.0.1:2590",
        **extra,
    )


SUBSCRIBER = AdapterSpec(
    id="dmp-national",
    name="DMP",
    direction="outbound",
    transport="fhir-rest",
    insecure_http=True,
    url="http://127.0.0.1:9090/fhir",
    subscribe={"events": ["ORU^*"]},
)


@pytest.fixture(scope="module")
def mappings() -> MappingSet:
    return MappingSet.load(REPO_ROOT / "mappings")


def _process(text: str, mappings: MappingSet, on_invalid_segment: str | None = None):
    source = _inbound(on_invalid_segment)
    return process(
        Envelope(source=source.id), text.encode(), mappings, {source.id: source}, [SUBSCRIBER]
    )


def _resources(envelope: Envelope, kind: str) -> list[dict]:
    assert envelope.bundle is not None
    entries = envelope.bundle["entry"]
    return [e["resource"] for e in entries if e["resource"]["resourceType"] == kind]


class TestDrop:
    """``on_invalid_segment: drop`` (the default): the good results go, each bad OBX is a finding."""

    def test_the_good_observations_are_in_the_bundle_and_the_bad_ones_are_not(self, mappings):
        """46 of 50 OBX become Observations (their LOINC codes, in order); the 4 malformed do not."""
        text = _sample(SAMPLE.name)
        envelope, destinations = _process(text, mappings)
        assert envelope.state is MessageState.ROUTED, envelope.reason
        assert [d.id for d in destinations] == ["dmp-national"]
        observations = _resources(envelope, "Observation")
        expected = _expected_codes(text)
        assert len(expected) == 46
        assert [o["code"]["coding"][0]["code"] for o in observations] == expected
        assert "14647-2" not in str(observations)  # the shifted cholesterol OBX
        assert "2276-4" not in str(observations)  # the ferritin with units in OBX-5

    def test_each_report_refers_only_to_the_kept_observations(self, mappings):
        """Every DiagnosticReport.result resolves to an Observation of the Bundle: 17+19+4+6."""
        envelope, _ = _process(_sample(SAMPLE.name), mappings)
        kept = {f"urn:uuid:{o['id']}" for o in _resources(envelope, "Observation")}
        reports = _resources(envelope, "DiagnosticReport")
        results = [[r["reference"] for r in report["result"]] for report in reports]
        assert [len(r) for r in results] == [17, 19, 4, 6]
        assert {ref for refs in results for ref in refs} == kept
        header = envelope.bundle["entry"][0]["resource"]
        assert len(header["focus"]) == 4

    def test_each_dropped_obx_is_a_finding_naming_its_location_not_its_value(self, mappings):
        """One segment-dropped finding per malformed OBX: where, which rule, why; never the value."""
        envelope, _ = _process(_sample(SAMPLE.name), mappings)
        dropped = [f for f in envelope.findings if f.code == "segment-dropped"]
        assert [f.location for f in dropped] == list(MALFORMED.values())
        assert [f.rule for f in dropped] == [
            "observation require[2]",  # OBX-5 of an NM is not a number
            "Observation.code",  # OBX-3 empty: FHIR's 1..1 Observation.code
            "observation require[1]",  # OBX-2 empty: the fields are shifted
            "observation require[2]",  # units in OBX-5
        ]
        assert all(f.severity == "error" for f in dropped)
        assert "OBX-3" in dropped[1].message
        assert "OBX-2" in dropped[2].message
        for value in ("3,72", "ug/L", "5.6", "Formule vérifiée"):
            assert all(value not in f.message for f in dropped), value

    def test_the_dropped_obx_and_its_nte_are_not_reported_as_unmapped(self, mappings):
        """A dropped OBX's fields (and its NTE) are reported as dropped, not as unread input."""
        envelope, _ = _process(_sample(SAMPLE.name), mappings)
        assert not any(u.startswith(("OBX", "OBSERVATION/")) for u in envelope.unmapped)
        assert dropped_tally(envelope) == [
            "dropped|PATIENT_RESULT/ORDER_OBSERVATION/OBSERVATION/OBX|observation require[2]",
            "dropped|PATIENT_RESULT/ORDER_OBSERVATION/OBSERVATION/OBX|Observation.code",
            "dropped|PATIENT_RESULT/ORDER_OBSERVATION/OBSERVATION/OBX|observation require[1]",
            "dropped|PATIENT_RESULT/ORDER_OBSERVATION/OBSERVATION/OBX|observation require[2]",
        ]


class TestQuarantine:
    """What still quarantines the whole message, whatever the setting."""

    def test_the_quarantine_setting_quarantines_the_whole_message(self, mappings):
        """``on_invalid_segment: quarantine``: FAILED, nothing routed, the reason names the OBX."""
        envelope, destinations = _process(_sample(SAMPLE.name), mappings, "quarantine")
        assert envelope.state is MessageState.FAILED
        assert destinations == []
        assert envelope.bundle is None
        reason = envelope.reason or ""
        assert MALFORMED[(1, "16")] in reason
        assert "(and 3 more)" in reason
        assert "on_invalid_segment: quarantine" in reason
        assert "3,72" not in reason
        assert len([f for f in envelope.findings if f.code == "segment-dropped"]) == 4

    def test_the_quarantine_setting_lets_a_clean_message_through(self, mappings):
        """With nothing malformed the setting changes nothing: the 20-OBX sample is routed whole."""
        text = _sample("oru_r01_20obx.hl7")
        envelope, destinations = _process(text, mappings, "quarantine")
        assert envelope.state is MessageState.ROUTED, envelope.reason
        assert [d.id for d in destinations] == ["dmp-national"]
        assert len(_resources(envelope, "Observation")) == 20

    def test_an_order_with_none_of_its_results_usable_quarantines_a_one_order_message(
        self, mappings
    ):
        """Every OBX malformed: the report has no result, no clinical content is left: FAILED."""
        text = _sample("oru_r01_20obx.hl7")
        segments = text.split("\r")
        # OBX-2 (the value type) emptied in every OBX, as when a sender shifts the fields.
        broken = [
            "|".join([*f[:2], "", *f[3:]]) if (f := s.split("|"))[0] == "OBX" else s
            for s in segments
        ]
        envelope, destinations = _process("\r".join(broken), mappings)
        assert envelope.state is MessageState.FAILED
        assert destinations == []
        assert "no clinical content" in (envelope.reason or "")

    def test_an_order_with_none_of_its_results_usable_is_dropped_as_a_group(self, mappings):
        """In a four-order message, the lipid order whose 5 OBX are all bad leaves as a whole."""
        text = _sample(SAMPLE.name)
        lipids = ("14646-4", "39469-2", "14927-8", "9830-1")
        for code in lipids:
            text = text.replace(f"|NM|{code}^", f"||NM^{code}^")  # shift: OBX-2 empty
        envelope, _ = _process(text, mappings)
        assert envelope.state is MessageState.ROUTED, envelope.reason
        reports = _resources(envelope, "DiagnosticReport")
        assert [r["code"]["coding"][0]["code"] for r in reports] == [
            "58410-2",
            "24323-8",
            "BILCOMP",
        ]
        orders = _resources(envelope, "ServiceRequest")
        assert "57698-3" not in str(orders)
        group = [f for f in envelope.findings if f.rule == "DiagnosticReport.result"]
        assert [f.location for f in group] == ["PATIENT_RESULT(1)/ORDER_OBSERVATION(3)/ORC"]
        assert len(_resources(envelope, "Observation")) == 42

    def test_a_missing_patient_identity_quarantines_the_whole_message(self, mappings):
        """PID-3 empty: never a droppable part; the whole message is FAILED."""
        text = _sample(SAMPLE.name)
        pid = next(s for s in text.split("\r") if s.startswith("PID"))
        fields = pid.split("|")
        fields[3] = ""
        envelope, destinations = _process(text.replace(pid, "|".join(fields)), mappings)
        assert envelope.state is MessageState.FAILED
        assert destinations == []
        assert "PID-3" in (envelope.reason or "")

    def test_a_second_patient_without_identity_quarantines_the_whole_message(self, mappings):
        """Two PATIENT_RESULT groups, the second with PID-3 empty: FAILED, not half delivered."""
        text = _sample("oru_r01_two_patients.hl7")
        pids = [s for s in text.split("\r") if s.startswith("PID")]
        fields = pids[1].split("|")
        fields[3] = ""
        envelope, destinations = _process(text.replace(pids[1], "|".join(fields)), mappings)
        assert envelope.state is MessageState.FAILED
        assert destinations == []
        assert "patient 2 of 2" in (envelope.reason or "")

    def test_a_malformed_message_header_quarantines_the_whole_message(self, mappings):
        """MSH-9's trigger event unreadable: the header is never a droppable part."""
        text = _sample(SAMPLE.name).replace("ORU^R01^ORU_R01", "ORU^R 01^ORU_R01")
        envelope, destinations = _process(text, mappings)
        assert envelope.state is MessageState.FAILED
        assert destinations == []
