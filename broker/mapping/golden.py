"""Golden cases: ``<root>/tests/<case>.hl7`` must map exactly to ``<case>.expected.json``.

A case is HL7 v2 ER7 (``<case>.hl7``) or FHIR R4 JSON (``<case>.json``, a resource or a Bundle,
mapped with ``mappings/fhir/``). The expected document holds the Bundle, the findings and the
partition key (for FHIR input also ``unmapped``: what the canonical message does not keep), or,
for a message the broker must refuse, the error (its class and one-line message). Cases map with source
``golden`` at 2024-01-01T00:00:00Z so ids and timestamps are stable; a case in a folder
``tests/<adapter>/`` is mapped as from that adapter (its site mapping, if any).
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from broker.canonical import check, validate_bundle
from broker.errors import MessageError
from broker.fhir_inbound import read_fhir
from broker.mapping.context import MapContext
from broker.mapping.layers import MappingRoots, overlay
from broker.mapping.loader import MappingSet
from broker.parsing.hl7v2 import decode, parse

__all__ = ["CaseResult", "case_adapter", "cases", "golden_output", "run_cases"]

CONTEXT = MapContext("golden", "golden", received_at=datetime(2024, 1, 1, tzinfo=UTC))
"""The fixed context every golden case is mapped in."""


def case_adapter(case: Path) -> str:
    """The adapter a case is mapped as from: ``golden``, or its folder under ``tests/``.

    ``tests/chu-rabat-adt/x.hl7`` is mapped as received from adapter ``chu-rabat-adt``, so a
    site mapping (``source.adapters``) is tested with the site's own messages.
    """
    return "golden" if case.parent.name == "tests" else case.parent.name


def golden_output(mappings: MappingSet, case: Path) -> str:
    """The canonical JSON document a case maps to (sorted keys, two-space indent)."""
    document: dict[str, Any]
    source = case_adapter(case)
    context = CONTEXT if source == CONTEXT.source else replace(CONTEXT, source=source)
    unmapped: tuple[str, ...] | None = None
    try:
        if case.suffix == ".json":
            done = mappings.map_fhir(read_fhir(case.read_bytes()), context)
            result, unmapped = done.result, done.unmapped
        else:
            message = parse(decode(case.read_bytes()))
            result = mappings.map_hl7v2(message, context)
            # The pipeline's refusals (no identified patient, an order without its
            # ServiceRequest...) are part of what a case pins down.
            check(message.event, result.bundle)
        validate_bundle(result.bundle)
    except MessageError as exc:
        document = {"error": {"type": type(exc).__name__, "message": str(exc)}}
    else:
        document = {
            "bundle": result.bundle,
            "findings": [f.model_dump() for f in result.findings],
            "partition_key": result.partition_key,
        }
        if unmapped is not None:
            document["unmapped"] = list(unmapped)
    return json.dumps(document, ensure_ascii=False, indent=2, sort_keys=True) + "\n"


def cases(root: MappingRoots) -> list[Path]:
    """Every case under ``root/tests``: ``*.hl7`` and ``*.json`` but not ``*.expected.json``.

    With layers (``broker.mapping.layers``), the cases of every layer's ``tests/``.
    """
    found = overlay(root, "tests", (".hl7", ".json")).values()
    return [p for p in found if not p.name.endswith(".expected.json")]


@dataclass(frozen=True)
class CaseResult:
    """One golden case's outcome: ``diff`` is empty when the case passes."""

    case: Path
    diff: str

    @property
    def passed(self) -> bool:
        """True when the actual output equals the expected file."""
        return not self.diff


def run_cases(
    root: MappingRoots, mappings: MappingSet | None = None, *, update: bool = False
) -> list[CaseResult]:
    """Run every case in ``root/tests`` and its adapter folders; with ``update``, write the actual output as expected.

    Raises:
        MappingSpecError: the mappings under ``root`` do not load.
    """
    loaded = mappings if mappings is not None else MappingSet.load(root)
    results = []
    for case in cases(root):
        expected_file = case.with_suffix(".expected.json")
        actual = golden_output(loaded, case)
        if update:
            expected_file.write_text(actual, encoding="utf-8")
        expected = expected_file.read_text(encoding="utf-8") if expected_file.exists() else ""
        diff = ""
        if actual != expected:
            diff = "".join(
                difflib.unified_diff(
                    expected.splitlines(True),
                    actual.splitlines(True),
                    str(expected_file),
                    f"{case} (actual)",
                )
            )
        results.append(CaseResult(case, diff))
    return results
