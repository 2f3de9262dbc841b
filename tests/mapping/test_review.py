"""Golden cases are reviewed content (issue 12): the review records of mappings/tests/reviews.yaml,
on tmp copies of mappings/ holding two cases. The oracle for a record's hash is hashlib over the
expected file's bytes, and the file is read back with yaml.safe_load."""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable
from datetime import date
from pathlib import Path

import pytest
import yaml

from broker.errors import MappingSpecError
from broker.mapping import MappingSet
from broker.mapping.golden import CaseResult, ReviewError, review_cases, run_cases

TODAY = date(2026, 12, 2)
AGAINST = ["the input's meaning", "v2-to-FHIR IG PID[Patient]"]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


MAPPINGS: list[MappingSet] = []


@pytest.fixture(autouse=True)
def _shared_mappings(mappings: MappingSet) -> None:
    """The tmp roots hold a copy of mappings/: map with the session's load of it (faster)."""
    MAPPINGS[:] = [mappings]


def _run(root: Path | list[Path], *, update: bool = False) -> list[CaseResult]:
    return run_cases(root, MAPPINGS[0], update=update)


def _status(root: Path | list[Path]) -> dict[str, str]:
    return {r.key: r.status for r in _run(root)}


def _review(root: Path | list[Path], *keys: str, by: str = "Test Reviewer") -> None:
    review_cases(root, keys, by=by, against=AGAINST, today=TODAY, mappings=MAPPINGS[0])


def test_an_unreviewed_case_equal_to_its_expected_file_does_not_pass(
    golden_root: Callable[..., Path],
) -> None:
    """Without a review record, a case whose output equals its expected file is unreviewed."""
    root = golden_root("adt_a01")
    [result] = _run(root)
    assert (result.status, result.diff, result.passed) == ("unreviewed", "", False)
    assert "no review record" in result.why


def test_a_review_records_the_expected_files_sha256_and_the_case_passes(
    golden_root: Callable[..., Path],
) -> None:
    """`review` writes {sha256 of the expected bytes, reviewed, by, against}; then it passes."""
    root = golden_root("adt_a01", "chu-rabat-adt/adt_a01_zpi")
    _review(root, "chu-rabat-adt/adt_a01_zpi")
    records = yaml.safe_load((root / "tests" / "reviews.yaml").read_text(encoding="utf-8"))
    assert records == {
        "chu-rabat-adt/adt_a01_zpi": {
            "sha256": _sha(root / "tests" / "chu-rabat-adt" / "adt_a01_zpi.expected.json"),
            "reviewed": TODAY,
            "by": "Test Reviewer",
            "against": AGAINST,
        }
    }
    assert _status(root) == {"adt_a01": "unreviewed", "chu-rabat-adt/adt_a01_zpi": "passed"}


def test_regenerating_a_changed_output_makes_the_case_unreviewed(
    golden_root: Callable[..., Path],
) -> None:
    """After `--update` rewrites an expected file with new content, its old review no longer counts."""
    root = golden_root("adt_a01")
    _review(root, "adt_a01")
    case = root / "tests" / "adt_a01.hl7"
    case.write_bytes(case.read_bytes().replace(b"EL AMRANI", b"EL AMRANY"))
    assert _status(root) == {"adt_a01": "failed"}
    [result] = _run(root, update=True)
    assert result.status == "unreviewed"
    assert "changed since its review of 2026-12-02 by Test Reviewer" in result.why
    _review(root, "adt_a01", by="Second Reviewer")
    assert _status(root) == {"adt_a01": "passed"}


def test_regenerating_an_unchanged_output_keeps_the_review(
    golden_root: Callable[..., Path],
) -> None:
    """`--update` that writes the same bytes leaves the case reviewed (its hash is unchanged)."""
    root = golden_root("adt_a01")
    _review(root, "adt_a01")
    assert [r.status for r in _run(root, update=True)] == ["passed"]


def test_a_record_whose_hash_is_not_the_expected_files_is_unreviewed(
    golden_root: Callable[..., Path],
) -> None:
    """A record holding another file's hash (an expected file edited by hand) does not pass."""
    root = golden_root("adt_a01")
    (root / "tests" / "reviews.yaml").write_text(
        f"adt_a01:\n  sha256: {'ab' * 32}\n  reviewed: 2026-11-30\n  by: Someone\n"
        "  against: [the input's meaning]\n",
        encoding="utf-8",
    )
    [result] = _run(root)
    assert result.status == "unreviewed"
    assert "reviewed sha256 abababababab" in result.why


@pytest.mark.parametrize(
    ("record", "line", "key", "reason"),
    [
        pytest.param(
            "  against: []\n", 5, "adt_a01.against", "at least 1 item", id="empty-against"
        ),
        pytest.param("", 2, "adt_a01.against", "Field required", id="missing-against"),
        pytest.param("  against: ['  ']\n", 5, "adt_a01.against[0]", "pattern", id="blank-against"),
        pytest.param(
            "  against: [x]\n  reviewer: y\n",
            6,
            "adt_a01.reviewer",
            "unknown key",
            id="unknown-key",
        ),
    ],
)
def test_an_incomplete_record_is_an_error_naming_file_and_line(
    golden_root: Callable[..., Path], record: str, line: int, key: str, reason: str
) -> None:
    """A record without a non-empty `against` list (or with an unknown key) is refused with file:line."""
    root = golden_root("adt_a01")
    reviews = root / "tests" / "reviews.yaml"
    reviews.write_text(
        f"adt_a01:\n  sha256: {_sha(root / 'tests' / 'adt_a01.expected.json')}\n"
        f"  reviewed: 2026-12-02\n  by: Someone\n{record}",
        encoding="utf-8",
    )
    with pytest.raises(MappingSpecError) as caught:
        _run(root)
    assert (caught.value.file, caught.value.line, caught.value.key) == (str(reviews), line, key)
    assert reason in caught.value.reason


def test_a_record_for_a_case_that_does_not_exist_is_an_error(
    golden_root: Callable[..., Path],
) -> None:
    """A stale record (case renamed or removed) is reported with its line, not ignored."""
    root = golden_root("adt_a01")
    reviews = root / "tests" / "reviews.yaml"
    reviews.write_text(
        "# reviews\n\nadt_a99:\n  sha256: " + "a" * 64 + "\n  reviewed: 2026-12-01\n"
        "  by: Someone\n  against: [x]\n",
        encoding="utf-8",
    )
    with pytest.raises(MappingSpecError) as caught:
        _run(root)
    assert (caught.value.line, caught.value.key) == (3, "adt_a99")
    assert caught.value.reason.startswith("no golden case adt_a99.hl7 or adt_a99.json")


def test_a_reviews_file_with_a_syntax_error_names_its_line(
    golden_root: Callable[..., Path],
) -> None:
    """Broken YAML in reviews.yaml is a file:line error, not a traceback."""
    root = golden_root("adt_a01")
    (root / "tests" / "reviews.yaml").write_text("adt_a01:\n  against: [a\n", encoding="utf-8")
    with pytest.raises(MappingSpecError, match=r"reviews\.yaml:3: YAML syntax error"):
        _run(root)


def test_reviewing_a_failing_case_is_refused_and_writes_nothing(
    golden_root: Callable[..., Path],
) -> None:
    """A case whose output differs from its expected file cannot be reviewed as it is."""
    root = golden_root("adt_a01", "fhir_patient")
    expected = root / "tests" / "fhir_patient.expected.json"
    expected.write_text(expected.read_text(encoding="utf-8").replace("female", "male"), "utf-8")
    with pytest.raises(ReviewError, match="fhir_patient: its output differs"):
        _review(root, "adt_a01", "fhir_patient")
    assert not (root / "tests" / "reviews.yaml").exists()


@pytest.mark.parametrize(
    ("by", "against"), [("", AGAINST), ("  ", AGAINST), ("Someone", []), ("Someone", [""])]
)
def test_a_review_needs_a_reviewer_and_what_it_was_checked_against(
    golden_root: Callable[..., Path], by: str, against: list[str]
) -> None:
    """Empty --by or no non-empty --against is refused."""
    root = golden_root("adt_a01")
    with pytest.raises(ReviewError):
        review_cases(root, ["adt_a01"], by=by, against=against, today=TODAY, mappings=MAPPINGS[0])
    assert not (root / "tests" / "reviews.yaml").exists()


def test_a_review_replaces_its_record_and_keeps_the_others_and_comments(
    golden_root: Callable[..., Path],
) -> None:
    """Recording a review edits one block of reviews.yaml; comments and other records stay."""
    root = golden_root("adt_a01", "fhir_patient")
    reviews = root / "tests" / "reviews.yaml"
    other = (
        "# Reviewed golden cases: see mappings/tests/README.md\n\n"
        "adt_a01:\n  sha256: " + "a" * 64 + "\n  reviewed: 2026-01-01\n  by: Old\n"
        "  against: [old]\n\n# FHIR cases\nfhir_patient:\n  sha256: " + "b" * 64 + "\n"
        "  reviewed: 2026-01-01\n  by: Other\n  against: [the FHIR input]\n  note: kept\n"
    )
    reviews.write_text(other, encoding="utf-8")
    _review(root, "adt_a01")
    text = reviews.read_text(encoding="utf-8")
    assert text.startswith("# Reviewed golden cases: see mappings/tests/README.md\n\nadt_a01:\n")
    assert "\n# FHIR cases\nfhir_patient:\n" in text
    records = yaml.safe_load(text)
    assert records["adt_a01"]["by"] == "Test Reviewer"
    assert records["adt_a01"]["sha256"] == _sha(root / "tests" / "adt_a01.expected.json")
    assert records["fhir_patient"] == {
        "sha256": "b" * 64,
        "reviewed": date(2026, 1, 1),
        "by": "Other",
        "against": ["the FHIR input"],
        "note": "kept",
    }


def test_each_mapping_layer_has_its_own_reviews_file(
    golden_root: Callable[..., Path], tmp_path: Path
) -> None:
    """A site layer's case is reviewed in the site's tests/reviews.yaml, the base's in the base's."""
    base = golden_root("adt_a01")
    site = tmp_path / "site"
    (site / "tests").mkdir(parents=True)
    shutil.copyfile(base / "tests" / "adt_a01.hl7", site / "tests" / "site_a01.hl7")
    shutil.copyfile(
        base / "tests" / "adt_a01.expected.json", site / "tests" / "site_a01.expected.json"
    )
    layers = [base, site]
    _review(layers, "site_a01")
    assert set(yaml.safe_load((site / "tests" / "reviews.yaml").read_text("utf-8"))) == {"site_a01"}
    assert not (base / "tests" / "reviews.yaml").exists()
    assert _status(layers) == {"adt_a01": "unreviewed", "site_a01": "passed"}
    _review(layers, "adt_a01")
    assert set(yaml.safe_load((base / "tests" / "reviews.yaml").read_text("utf-8"))) == {"adt_a01"}
    assert _status(layers) == {"adt_a01": "passed", "site_a01": "passed"}
