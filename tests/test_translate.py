"""Promises of translate(): the offline dry run behind ``passerelle translate``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from broker.errors import (
    BrokerError,
    CanonicalError,
    ConfigurationError,
    HL7v2ParseError,
    NoMappingError,
)
from broker.parsing.hl7v2 import parse
from broker.translate import translate

ROOT = Path(__file__).resolve().parents[1]
MAPPINGS = ROOT / "mappings"
SAMPLES = ROOT / "tests" / "samples" / "hl7v2"


def raw(name: str) -> bytes:
    return (SAMPLES / name).read_bytes()


def test_to_canonical_is_an_envelope() -> None:
    """to=canonical gives the Envelope JSON with event, version, control id, mappings and bundle."""
    envelope = json.loads(translate(raw("adt_a01_v23.hl7"), to="canonical", mappings_dir=MAPPINGS))
    assert (envelope["event"], envelope["version"], envelope["control_id"]) == (
        "ADT^A01",
        "2.3",
        "MSG00002",
    )
    assert envelope["mappings"][0]["id"] == "hl7v2-adt"
    assert envelope["partition_key"] == "https://passerelle.ma/fhir/sid/cin|BE123456"
    assert envelope["bundle"]["type"] == "message"


def test_to_fhir_is_the_bundle() -> None:
    """to=fhir gives the canonical message Bundle JSON, non-ASCII kept readable."""
    text = translate(raw("oru_r01_20obx.hl7"), to="fhir", mappings_dir=MAPPINGS)
    assert "العمراني" in text
    assert json.loads(text)["entry"][0]["resource"]["resourceType"] == "MessageHeader"


def test_to_hl7v2_renders_v251() -> None:
    """to=hl7v2 gives ER7 v2.5.1 with the inbound control id."""
    message = parse(translate(raw("adt_a01_latin1.hl7"), to="hl7v2", mappings_dir=MAPPINGS))
    assert (message.version, message.control_id) == ("2.5.1", "MSG00008")
    assert message.get("PID-5.1") == "AÏT BENHADDOU"


@pytest.mark.parametrize(
    ("name", "error"),
    [
        pytest.param("broken_no_msh.hl7", HL7v2ParseError, id="no-msh"),
        pytest.param("broken_encoding_chars.hl7", HL7v2ParseError, id="bad-encoding-chars"),
        pytest.param("broken_missing_msh10.hl7", HL7v2ParseError, id="no-msh10"),
        pytest.param("adt_a17_unsupported.hl7", NoMappingError, id="no-mapping"),
    ],
)
def test_bad_input_is_a_one_line_broker_error(name: str, error: type[BrokerError]) -> None:
    """Broken messages raise a BrokerError subclass with a one-line message."""
    with pytest.raises(error) as caught:
        translate(raw(name), to="fhir", mappings_dir=MAPPINGS)
    assert "\n" not in str(caught.value)


def test_bad_target() -> None:
    """An unknown --to is a ConfigurationError listing the choices."""
    with pytest.raises(ConfigurationError, match="canonical, fhir, hl7v2"):
        translate(raw("adt_a04.hl7"), to="xml", mappings_dir=MAPPINGS)


@pytest.mark.parametrize(
    ("payload", "error", "reason"),
    [
        pytest.param(
            b'{"resourceType": "Patient", "id": "p1"}',
            CanonicalError,
            "a patient needs an identifier",
            id="patient-without-identifier",
        ),
        pytest.param(
            b'\xef\xbb\xbf{"resourceType": "Bundle", "type": "transaction"}',
            NoMappingError,
            "no supported resource in the FHIR input",
            id="empty-bundle",
        ),
        pytest.param(
            b'{"resourceType": "Bundle", "type": "searchset"}',
            NoMappingError,
            "a Bundle of type searchset is not accepted",
            id="searchset",
        ),
    ],
)
def test_fhir_json_input_is_refused_with_its_reason(
    payload: bytes, error: type[Exception], reason: str
) -> None:
    """FHIR JSON input is detected and refused in one line naming why, not an HL7 parse error."""
    with pytest.raises(error, match=reason) as caught:
        translate(payload, to="fhir", mappings_dir=MAPPINGS)
    assert "\n" not in str(caught.value)


def test_dry_run_gives_trace_and_unmapped_fields() -> None:
    """dry_run returns the same output as translate, plus the trace and the unmapped fields."""
    from broker.translate import dry_run

    done = dry_run(raw("adt_a01_zsegments.hl7"), to="fhir", mappings_dir=MAPPINGS, trace=True)
    assert json.loads(done.output)["type"] == "message"
    assert any(step.target == "Patient.gender" for step in done.trace)
    assert "ZPI-1" in done.unmapped
    assert dry_run(raw("adt_a04.hl7"), to="fhir", mappings_dir=MAPPINGS).trace == ()
