"""Golden files: each mappings/tests/<case>.hl7 or <case>.json maps exactly to <case>.expected.json.

Regenerate after an intended change with ``passerelle mappings test --update`` (or
``PASSERELLE_REGOLD=1 pytest tests/mapping/test_golden.py``) and review the diff.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from broker.mapping import MappingSet
from broker.mapping.golden import cases, golden_output

CASES = Path(__file__).resolve().parents[2] / "mappings" / "tests"


@pytest.mark.parametrize(
    "case", cases(CASES.parent), ids=lambda p: str(p.relative_to(CASES).with_suffix(""))
)
def test_golden(mappings: MappingSet, case: Path) -> None:
    """The mapped Bundle, findings and partition key equal the reviewed expected JSON."""
    import difflib

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
    found = cases(CASES.parent)
    assert len([c for c in found if c.suffix == ".hl7"]) >= 3
    assert len([c for c in found if c.suffix == ".json"]) >= 10
    assert all(c.with_suffix(".expected.json").exists() for c in found)
