"""``passerelle translate`` on FHIR input: detection, the three outputs, trace and unmapped."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from broker.errors import FHIRParseError, HL7v2ParseError, NoMappingError
from broker.parsing.fhir import looks_like_json
from broker.translate import dry_run, translate

ROOT = Path(__file__).resolve().parents[3]
MAPPINGS = ROOT / "mappings"
CASES = MAPPINGS / "tests"


def raw(name: str) -> bytes:
    return (CASES / name).read_bytes()


class TestDetection:
    @pytest.mark.parametrize(
        ("payload", "is_json"),
        [
            pytest.param(b'{"resourceType": "Patient"}', True, id="resource"),
            pytest.param(b'\xef\xbb\xbf \r\n{"resourceType": "Bundle"}', True, id="bom-and-blanks"),
            pytest.param(b"[1]", True, id="array"),
            pytest.param(b"MSH|^~\\&|HIS", False, id="er7"),
            pytest.param(b"", False, id="empty"),
        ],
    )
    def test_json_or_er7(self, payload: bytes, is_json: bool) -> None:
        """JSON starts with { or [ after a BOM and blanks; ER7 starts with MSH."""
        assert looks_like_json(payload) is is_json

    def test_er7_still_goes_to_the_hl7_parser(self) -> None:
        """Text that is not JSON is read as HL7 v2, with its own errors."""
        with pytest.raises(HL7v2ParseError):
            translate(b"PID|1||X", to="fhir", mappings_dir=MAPPINGS)

    @pytest.mark.parametrize(
        ("payload", "reason"),
        [
            pytest.param(b"[1, 2]", "has no resourceType", id="array"),
            pytest.param(b'{"resourceType": ', "not valid JSON", id="truncated"),
        ],
    )
    def test_json_that_is_not_fhir_is_a_parse_error(self, payload: bytes, reason: str) -> None:
        """A one-line FHIRParseError, not an HL7 parse error."""
        with pytest.raises(FHIRParseError, match=reason):
            translate(payload, to="fhir", mappings_dir=MAPPINGS)


class TestOutputs:
    def test_fhir_prints_the_canonical_message_bundle(self) -> None:
        """--to fhir: the message Bundle, MessageHeader first."""
        bundle = json.loads(
            translate(raw("fhir_transaction.json"), to="fhir", mappings_dir=MAPPINGS)
        )
        assert bundle["type"] == "message"
        kinds = [e["resource"]["resourceType"] for e in bundle["entry"]]
        assert kinds == ["MessageHeader", "Patient", "Encounter", "Observation"]

    def test_canonical_prints_the_envelope(self) -> None:
        """--to canonical: the envelope with the FHIR content type, event and unmapped."""
        envelope = json.loads(
            translate(raw("fhir_batch.json"), to="canonical", mappings_dir=MAPPINGS)
        )
        assert envelope["content_type"] == "application/fhir+json"
        assert envelope["event"] == "Bundle"
        assert envelope["correlation_id"] == "Bundle/batch-0042"
        assert "Bundle.entry[3].request" in envelope["unmapped"]
        assert envelope["partition_key"] == "https://passerelle.ma/fhir/sid/cin|JB334455"

    def test_hl7v2_renders_an_event_with_an_outbound_mapping(self) -> None:
        """A message Bundle whose event is A01 renders as ADT^A01 through the outbound mapping."""
        er7 = translate(raw("fhir_message.json"), to="hl7v2", mappings_dir=MAPPINGS)
        segments = er7.split("\r")
        assert segments[0].split("|")[8] == "ADT^A01^ADT_A01"
        assert any(s.startswith("PID|") and "BE123456" in s for s in segments)

    def test_hl7v2_without_an_outbound_mapping_is_a_clear_error(self) -> None:
        """An Observation alone has no HL7 v2 rendering: NoMappingError naming the event."""
        with pytest.raises(
            NoMappingError, match="no outbound HL7 v2 mapping for event Observation"
        ):
            translate(raw("fhir_observation.json"), to="hl7v2", mappings_dir=MAPPINGS)

    def test_trace_and_unmapped(self) -> None:
        """--trace names the FHIR file and each rewrite; --unmapped the elements not kept."""
        done = dry_run(
            raw("chu-rabat-fhir/fhir_site_local_codes.json"),
            to="fhir",
            mappings_dir=MAPPINGS,
            source="chu-rabat-fhir",
            trace=True,
        )
        files = {Path(step.file).name for step in done.trace}
        assert {"r4.yaml", "chu-rabat-fhir.yaml", "chu-rabat-lab-to-loinc.csv"} <= files
        assert done.unmapped == (
            "Bundle.entry[0].request",
            "Bundle.entry[1].request",
            "Bundle.entry[2].request",
        )
