"""Golden cases: ``<root>/tests/<case>.hl7`` must map exactly to ``<case>.expected.json``, and
that expected file must be the one a person reviewed.

A case is HL7 v2 ER7 (``<case>.hl7``) or FHIR R4 JSON (``<case>.json``, a resource or a Bundle,
mapped with ``mappings/fhir/``). The expected document holds the Bundle, the findings and the
partition key (for FHIR input also ``unmapped``: what the canonical message does not keep), or,
for a message the broker must refuse, the error (its class and one-line message). Cases map with source
``golden`` at 2024-01-01T00:00:00Z so ids and timestamps are stable; a case in a folder
``tests/<adapter>/`` is mapped as from that adapter (its site mapping, if any).

Reviews (``<root>/tests/reviews.yaml``, one per layer): a mapping from the case's key (its path
under ``tests/`` without suffix: ``adt_a01``, ``chu-rabat-adt/adt_a01_zpi``) to ``{sha256, reviewed,
by, against, note}``, where ``sha256`` is the hex SHA-256 of the ``.expected.json`` bytes that were
reviewed. A case passes only when its output equals its expected file *and* that file's hash is
the reviewed one; an expected file rewritten since (``--update``, ``PASSERELLE_REGOLD=1``) is
*unreviewed* until ``passerelle mappings review`` records a new review. The checklist a
reviewer follows is in ``mappings/tests/README.md``.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, RootModel, ValidationError

from broker.errors import BrokerError, MappingSpecError, MessageError, SpecError
from broker.mapping.context import MapContext, MapResult
from broker.mapping.layers import MappingRoots, layers, overlay
from broker.mapping.loader import MappingSet
from broker.mapping.message import FHIR_JSON, HL7V2, map_message
from broker.yamlspec import parse_yaml, read_yaml, validation_errors

__all__ = [
    "REVIEWS_FILE",
    "CaseResult",
    "Review",
    "ReviewError",
    "case_adapter",
    "case_key",
    "case_result",
    "cases",
    "expected_sha256",
    "golden_output",
    "golden_result",
    "layer_keys",
    "load_reviews",
    "review_cases",
    "run_cases",
]

REVIEWS_FILE = "reviews.yaml"
"""The review records of a layer's cases, in ``<layer>/tests/``."""

CONTEXT = MapContext("golden", "golden", received_at=datetime(2024, 1, 1, tzinfo=UTC))
"""The fixed context every golden case is mapped in."""


def case_adapter(case: Path) -> str:
    """The adapter a case is mapped as from: ``golden``, or its folder under ``tests/``.

    ``tests/chu-rabat-adt/x.hl7`` is mapped as received from adapter ``chu-rabat-adt``, so a
    site mapping (``source.adapters``) is tested with the site's own messages.
    """
    return "golden" if case.parent.name == "tests" else case.parent.name


def golden_result(mappings: MappingSet, case: Path) -> MapResult:
    """Map one case as the pipeline maps a message (``map_message``), with full validation.

    Raises:
        MessageError: the case is refused, as the pipeline would refuse it.
    """
    return map_message(
        case.read_bytes(),
        mappings,
        source=case_adapter(case),
        envelope_id=CONTEXT.envelope_id,
        received_at=CONTEXT.received_at,
        content_type=FHIR_JSON if case.suffix == ".json" else HL7V2,
        full_validation=True,
    )


def golden_output(mappings: MappingSet, case: Path) -> str:
    """The canonical JSON document a case maps to (sorted keys, two-space indent).

    The pipeline's refusals (no identified patient, an order without its ServiceRequest...) are
    part of what a case pins down: the document then holds the error.
    """
    document: dict[str, Any]
    try:
        result = golden_result(mappings, case)
    except MessageError as exc:
        document = {"error": {"type": type(exc).__name__, "message": str(exc)}}
    else:
        document = {
            "bundle": result.bundle,
            "findings": [f.model_dump() for f in result.findings],
            "partition_key": result.partition_key,
        }
        if case.suffix == ".json":
            document["unmapped"] = list(result.unmapped)
    return json.dumps(document, ensure_ascii=False, indent=2, sort_keys=True) + "\n"


def cases(root: MappingRoots) -> list[Path]:
    """Every case under ``root/tests``: ``*.hl7`` and ``*.json`` but not ``*.expected.json``.

    With layers (``broker.mapping.layers``), the cases of every layer's ``tests/``.
    """
    found = overlay(root, "tests", (".hl7", ".json")).values()
    return [p for p in found if not p.name.endswith(".expected.json")]


def _layer_of(root: MappingRoots, case: Path) -> Path:
    """The layer whose ``tests/`` holds ``case`` (the last one, as ``overlay`` reads)."""
    for layer in reversed(layers(root)):
        if case.is_relative_to(layer / "tests"):
            return layer
    msg = f"{case} is not under the tests/ folder of {root}"
    raise ValueError(msg)


def case_key(root: MappingRoots, case: Path) -> str:
    """The case's key in ``reviews.yaml``: its path under ``tests/`` without suffix."""
    relative = case.relative_to(_layer_of(root, case) / "tests")
    return relative.with_suffix("").as_posix()


def expected_sha256(case: Path) -> str | None:
    """The hex SHA-256 of the case's ``.expected.json`` bytes, or None when it is missing."""
    expected = case.with_suffix(".expected.json")
    return hashlib.sha256(expected.read_bytes()).hexdigest() if expected.is_file() else None


NonEmpty = Annotated[str, Field(min_length=1, pattern=r"\S")]


class Review(BaseModel):
    """One review record: who looked at which expected file, when, and against what."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    """Hex SHA-256 of the ``.expected.json`` bytes reviewed."""
    reviewed: date
    by: NonEmpty
    against: Annotated[list[NonEmpty], Field(min_length=1)]
    """What the output was checked against: the input's meaning, the v2-to-FHIR IG map, the
    code system..."""
    note: str | None = None


class _Reviews(RootModel[dict[str, Review]]):
    pass


class ReviewError(BrokerError):
    """``review_cases`` refused: an unknown case, a case that fails, an empty ``--by``."""


def load_reviews(layer: Path, keys: Sequence[str] | None = None) -> dict[str, Review]:
    """The review records of ``layer/tests/reviews.yaml`` ({} when the file does not exist).

    Args:
        keys: the layer's case keys; a record for a key not among them is an error.

    Raises:
        MappingSpecError: the file is not valid, naming file:line and key; every problem is in
            its ``problems`` attribute.
    """
    path = layer / "tests" / REVIEWS_FILE
    if not path.is_file():
        return {}
    data, lines = read_yaml(path, MappingSpecError)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise MappingSpecError(
            str(path), 1, "", "expected a mapping of case keys to review records"
        )
    problems: list[SpecError] = []
    reviews: dict[str, Review] = {}
    try:
        reviews = _Reviews.model_validate(data).root
    except ValidationError as exc:
        problems = validation_errors(exc, str(path), lines, MappingSpecError)
    if keys is not None:
        known = set(keys)
        for key in data:
            if key not in known:
                problems.append(
                    MappingSpecError(
                        str(path),
                        lines.get((key, "__key__")),
                        str(key),
                        f"no golden case {key}.hl7 or {key}.json in {path.parent}; "
                        "expected the key of an existing case (remove or rename the record)",
                    )
                )
    if problems:
        problems.sort(key=lambda p: p.line or 0)
        first = problems[0]
        first.problems = problems  # type: ignore[attr-defined]
        raise first
    return reviews


Status = Literal["passed", "failed", "unreviewed"]


@dataclass(frozen=True)
class CaseResult:
    """One golden case's outcome.

    Attributes:
        case: the input file.
        diff: unified diff expected → actual; empty when the output equals the expected file.
        status: ``passed`` (output equals the expected file, whose hash is the reviewed one),
            ``failed`` (the output differs) or ``unreviewed`` (equal, but no review record
            holds the expected file's hash).
        key: the case's key in ``reviews.yaml``.
        why: for an unreviewed case, what is missing.
    """

    case: Path
    diff: str
    status: Status = "passed"
    key: str = ""
    why: str = ""

    @property
    def passed(self) -> bool:
        """True when the output equals the expected file and that file was reviewed."""
        return self.status == "passed"


def _unreviewed_reason(review: Review | None, sha: str | None) -> str:
    if review is None:
        return f"no review record in tests/{REVIEWS_FILE}"
    if review.sha256 != sha:
        return (
            f"the expected file changed since its review of {review.reviewed} by {review.by} "
            f"(reviewed sha256 {review.sha256[:12]}, now {(sha or '')[:12]})"
        )
    return ""


def _diff(case: Path, actual: str) -> str:
    expected_file = case.with_suffix(".expected.json")
    expected = expected_file.read_text(encoding="utf-8") if expected_file.exists() else ""
    if actual == expected:
        return ""
    return "".join(
        difflib.unified_diff(
            expected.splitlines(True),
            actual.splitlines(True),
            str(expected_file),
            f"{case} (actual)",
        )
    )


def run_cases(
    root: MappingRoots, mappings: MappingSet | None = None, *, update: bool = False
) -> list[CaseResult]:
    """Run every case in ``root/tests`` and its adapter folders; with ``update``, write the actual output as expected.

    A rewritten expected file keeps its review only if its bytes did not change.

    Raises:
        MappingSpecError: the mappings under ``root`` do not load, or a ``reviews.yaml`` is
            not valid.
    """
    found = cases(root)
    reviews = {layer: load_reviews(layer, layer_keys(root, layer)) for layer in layers(root)}
    loaded = mappings if mappings is not None else MappingSet.load(root)
    return [case_result(root, loaded, case, reviews, update=update) for case in found]


def layer_keys(root: MappingRoots, layer: Path) -> list[str]:
    """The keys of the cases ``layer`` holds (a case overridden by a later layer is not)."""
    return [case_key(root, c) for c in cases(root) if _layer_of(root, c) == layer]


def case_result(
    root: MappingRoots,
    mappings: MappingSet,
    case: Path,
    reviews: dict[Path, dict[str, Review]],
    *,
    update: bool = False,
) -> CaseResult:
    """One case's outcome; ``reviews`` holds each layer's records (``load_reviews``)."""
    actual = golden_output(mappings, case)
    if update:
        case.with_suffix(".expected.json").write_text(actual, encoding="utf-8")
    key = case_key(root, case)
    diff = _diff(case, actual)
    if diff:
        return CaseResult(case, diff, "failed", key)
    review = reviews.get(_layer_of(root, case), {}).get(key)
    why = _unreviewed_reason(review, expected_sha256(case))
    return CaseResult(case, "", "unreviewed" if why else "passed", key, why)


def review_cases(
    root: MappingRoots,
    keys: Sequence[str],
    *,
    by: str,
    against: Sequence[str],
    note: str | None = None,
    today: date | None = None,
    mappings: MappingSet | None = None,
) -> list[tuple[str, Review]]:
    """Record that ``keys`` were reviewed: the current hash of each expected file, in the
    ``reviews.yaml`` of the layer that holds the case (a record already there is replaced).

    Raises:
        ReviewError: an unknown case, a case whose output differs from its expected file (a
            failing case is fixed or regenerated first, never reviewed as it is), or ``by`` or
            ``against`` empty. Nothing is written then.
        MappingSpecError: the mappings do not load, or a ``reviews.yaml`` is not valid.
    """
    by_key = {case_key(root, c): c for c in cases(root)}
    unknown = [k for k in keys if k not in by_key]
    if unknown:
        msg = (
            f"no golden case {unknown[0]!r}; expected a case key such as "
            f"{next(iter(by_key), 'adt_a01')!r} (its path under tests/ without suffix)"
        )
        raise ReviewError(msg)
    try:
        base = Review(
            sha256="0" * 64,
            reviewed=today or datetime.now(UTC).date(),
            by=by,
            against=list(against),
            note=note or None,
        )
    except ValidationError as exc:
        where = ".".join(str(p) for p in exc.errors()[0]["loc"])
        msg = (
            f"--{where.split('.')[0]}: {exc.errors()[0]['msg']}; expected the reviewer's name "
            "and at least one --against (what the output was checked against)"
        )
        raise ReviewError(msg) from None
    for layer in layers(root):
        load_reviews(layer)  # a broken file is reported before anything is written
    loaded = mappings if mappings is not None else MappingSet.load(root)
    done: list[tuple[str, Review]] = []
    for key in keys:
        case = by_key[key]
        sha = expected_sha256(case)
        if sha is None or _diff(case, golden_output(loaded, case)):
            msg = (
                f"{key}: its output differs from {case.with_suffix('.expected.json').name}; "
                "a failing case is not reviewed: fix the mapping, or regenerate with "
                "`passerelle mappings test --update`, read the diff, then review"
            )
            raise ReviewError(msg)
        done.append((key, base.model_copy(update={"sha256": sha})))
    for key, review in done:
        _write_review(_layer_of(root, by_key[key]) / "tests" / REVIEWS_FILE, key, review)
    return done


def _write_review(path: Path, key: str, review: Review) -> None:
    """Put ``key``'s record in ``path``, replacing its block or inserting it in key order;
    the rest of the file (other records, comments) is kept as it is."""
    record: dict[str, Any] = {
        "sha256": review.sha256,
        "reviewed": review.reviewed,
        "by": review.by,
        "against": list(review.against),
    }
    if review.note:
        record["note"] = review.note
    block = yaml.safe_dump(
        {key: record}, sort_keys=False, allow_unicode=True, default_flow_style=False, width=100
    )
    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    lines = text.splitlines(True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    node, _ = parse_yaml(text) if text.strip() else (None, None)
    spans: list[tuple[str, int, int]] = []  # key, first line, line after its block
    if isinstance(node, yaml.MappingNode):
        pairs = node.value
        for i, (key_node, _value) in enumerate(pairs):
            first = key_node.start_mark.line
            after = pairs[i + 1][0].start_mark.line if i + 1 < len(pairs) else len(lines)
            spans.append((str(key_node.value), first, after))
    for existing, first, after in spans:
        if existing == key:
            # keep the blank lines and comments that precede the next record
            while after > first + 1 and lines[after - 1].lstrip().startswith(("#", "\n")):
                after -= 1
            lines[first:after] = [block]
            break
    else:
        at = next((first for existing, first, _ in spans if existing > key), len(lines))
        lines[at:at] = [block]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(lines), encoding="utf-8")
