"""Golden files: each mappings/tests/<case>.hl7 maps exactly to <case>.expected.json.

Regenerate a case after an intended change with ``PASSERELLE_REGOLD=1 pytest tests/mapping/test_golden.py``
and review the diff before committing it.
"""

from __future__ import annotations

import difflib
import json
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from broker.canonical import validate_bundle
from broker.mapping import MapContext, MappingSet
from broker.parsing.hl7v2 import decode, parse

CASES = Path(__file__).resolve().parents[2] / "mappings" / "tests"
CTX = MapContext("golden", "golden", received_at=datetime(2024, 1, 1, tzinfo=UTC))


def golden_output(mappings: MappingSet, case: Path) -> str:
    result = mappings.map_hl7v2(parse(decode(case.read_bytes())), CTX)
    validate_bundle(result.bundle)
    document = {
        "bundle": result.bundle,
        "findings": [f.model_dump() for f in result.findings],
        "partition_key": result.partition_key,
    }
    return json.dumps(document, ensure_ascii=False, indent=2, sort_keys=True) + "\n"


@pytest.mark.parametrize("case", sorted(CASES.glob("*.hl7")), ids=lambda p: p.stem)
def test_golden(mappings: MappingSet, case: Path) -> None:
    """The mapped Bundle, findings and partition key equal the reviewed expected JSON."""
    expected_file = case.with_suffix(".expected.json")
    actual = golden_output(mappings, case)
    if os.environ.get("PASSERELLE_REGOLD") == "1":
        expected_file.write_text(actual, encoding="utf-8")
    expected = expected_file.read_text(encoding="utf-8")
    if actual != expected:
        diff = "".join(
            difflib.unified_diff(
                expected.splitlines(True), actual.splitlines(True), str(expected_file), "actual"
            )
        )
        pytest.fail(f"{case.name} no longer maps to its golden file:\n{diff}", pytrace=False)


def test_there_are_golden_cases() -> None:
    """The golden directory is not silently empty, and every case has its expected file."""
    cases = sorted(CASES.glob("*.hl7"))
    assert len(cases) >= 3
    assert all(c.with_suffix(".expected.json").exists() for c in cases)
