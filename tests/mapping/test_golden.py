"""Golden files: each mappings/tests/<case>.hl7 or <case>.json maps exactly to its reviewed
<case>.expected.json (the one place the whole golden set runs).

A case passes when its output equals the expected file AND that file's SHA-256 is the one
recorded in mappings/tests/reviews.yaml. Regenerate after an intended change with
``passerelle mappings test --update`` (or ``PASSERELLE_REGOLD=1 pytest tests/mapping/test_golden.py``):
a changed expected file is then UNREVIEWED until ``passerelle mappings review`` records a review
(checklist: mappings/tests/README.md).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from broker.mapping import MappingSet
from broker.mapping.golden import Review, case_result, cases, layer_keys, load_reviews

ROOT = Path(__file__).resolve().parents[2] / "mappings"
CASES = ROOT / "tests"


@pytest.fixture(scope="module", name="reviews")
def fixture_reviews() -> dict[Path, dict[str, Review]]:
    return {ROOT: load_reviews(ROOT, layer_keys(ROOT, ROOT))}


@pytest.mark.parametrize(
    "case", cases(ROOT), ids=lambda p: str(p.relative_to(CASES).with_suffix(""))
)
def test_golden(mappings: MappingSet, reviews: dict[Path, dict[str, Review]], case: Path) -> None:
    """The mapped Bundle, findings and partition key equal the expected JSON, and it was reviewed."""
    update = os.environ.get("PASSERELLE_REGOLD") == "1"
    result = case_result(ROOT, mappings, case, reviews, update=update)
    if result.status == "failed":
        pytest.fail(
            f"{result.key} no longer maps to its golden file:\n{result.diff}", pytrace=False
        )
    if result.status == "unreviewed":
        pytest.fail(
            f"UNREVIEWED {result.key}: {result.why}. Its output equals its expected file, but "
            "nobody recorded reviewing that file: check it against mappings/tests/README.md, "
            f"then `passerelle mappings review {result.key} --by NAME --against WHAT`",
            pytrace=False,
        )


def test_there_are_golden_cases() -> None:
    """The golden directory is not silently empty, and every case has its expected file."""
    found = cases(ROOT)
    assert len([c for c in found if c.suffix == ".hl7"]) >= 3
    assert len([c for c in found if c.suffix == ".json"]) >= 10
    assert all(c.with_suffix(".expected.json").exists() for c in found)


def test_reviews_file_is_valid_and_names_only_existing_cases() -> None:
    """mappings/tests/reviews.yaml parses, every record is complete, none names a missing case."""
    load_reviews(ROOT, layer_keys(ROOT, ROOT))  # raises MappingSpecError with file:line
