"""The pipeline, ``passerelle translate`` and the golden runner map every message the same way.

All three call ``broker.mapping.map_message``; this proves they agree, on every golden case under
``mappings/tests/`` and every sample under ``tests/samples/``: the same Bundle, findings,
unmapped report and envelope facts for a message they accept, and the same refusal (a FAILED
envelope whose reason is the error translate and the golden runner raise) for one they refuse.
The oracle of each path is its own public output: the pipeline's routed envelope, translate's
canonical JSON and the golden runner's MapResult.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from broker.envelope import Envelope, MessageState
from broker.errors import MessageError
from broker.mapping import FHIR_JSON, HL7V2, MappingSet, MapResult
from broker.mapping.golden import CONTEXT, case_adapter, cases, golden_result
from broker.pipeline import process
from broker.translate import dry_run

ROOT = Path(__file__).resolve().parents[2]
MAPPINGS = ROOT / "mappings"
SAMPLES = sorted(
    p for p in (ROOT / "tests" / "samples").rglob("*") if p.suffix in (".hl7", ".json")
)
INPUTS = [
    *(
        pytest.param(c, case_adapter(c), id=f"golden/{c.relative_to(MAPPINGS / 'tests')}")
        for c in cases(MAPPINGS)
    ),
    *(
        pytest.param(s, case_adapter(s), id=f"sample/{s.relative_to(ROOT / 'tests' / 'samples')}")
        for s in SAMPLES
    ),
]


@pytest.fixture(scope="module", name="plain")
def fixture_plain() -> MappingSet:
    """The mappings as the workers load them."""
    return MappingSet.load(MAPPINGS)


@pytest.fixture(scope="module", name="full")
def fixture_full() -> MappingSet:
    """The mappings as a dry run loads them (full fhir.resources validation)."""
    return MappingSet.load(MAPPINGS, full_validation=True)


def _through_pipeline(raw: bytes, source: str, fhir: bool, mappings: MappingSet) -> Envelope:
    received = Envelope(
        id=CONTEXT.envelope_id,
        source=source,
        content_type=FHIR_JSON if fhir else HL7V2,
        received_at=CONTEXT.received_at,
    )
    envelope, _ = process(received, raw, mappings, {}, [])
    return envelope


def _through_translate(raw: bytes, source: str, mappings: MappingSet) -> dict[str, Any]:
    run = dry_run(
        raw,
        to="canonical",
        mappings_dir=mappings,
        source=source,
        received_at=CONTEXT.received_at,
    )
    return json.loads(run.output)


def _facts(document: dict[str, Any]) -> dict[str, Any]:
    """What every path must agree on, from an envelope's JSON form."""
    keys = (
        "bundle",
        "findings",
        "unmapped",
        "partition_key",
        "mappings",
        "event",
        "version",
        "control_id",
        "correlation_id",
        "sender",
    )
    return {key: document.get(key) for key in keys}


@pytest.mark.parametrize(("path", "source"), INPUTS)
def test_pipeline_translate_and_golden_agree(
    path: Path, source: str, plain: MappingSet, full: MappingSet
) -> None:
    """The three paths give the same canonical message, or the same refusal."""
    raw = path.read_bytes()
    fhir = path.suffix == ".json"
    envelope = _through_pipeline(raw, source, fhir, plain)
    golden: MapResult | MessageError
    try:
        golden = golden_result(plain, path)
    except MessageError as exc:
        golden = exc
    if isinstance(golden, MessageError):
        first_line = str(golden).splitlines()[0]
        assert envelope.state is MessageState.FAILED, f"the pipeline accepted it: {first_line}"
        assert (envelope.reason or "").startswith(first_line)
        with pytest.raises(type(golden)) as refused:
            _through_translate(raw, source, full)
        assert str(refused.value) == str(golden)
        return
    assert envelope.state is MessageState.FILTERED, envelope.reason
    translated = _through_translate(raw, source, full)
    piped = _facts(json.loads(envelope.model_dump_json()))
    assert _facts(translated) == piped
    golden_document = _facts(
        {
            "bundle": golden.bundle,
            "findings": [f.model_dump(mode="json") for f in golden.findings],
            "unmapped": list(golden.unmapped),
            "partition_key": golden.partition_key,
            "mappings": [m.model_dump(mode="json") for m in golden.mappings],
            "event": golden.event,
            "version": golden.version,
            "control_id": golden.control_id,
            "correlation_id": golden.correlation_id,
            "sender": golden.sender,
        }
    )
    assert golden_document == piped


def test_every_input_is_covered() -> None:
    """The agreement runs on every golden case and sample, HL7 v2 and FHIR."""
    assert len(cases(MAPPINGS)) >= 68
    assert any(p.suffix == ".json" for p in cases(MAPPINGS))
    assert len(SAMPLES) >= 30
