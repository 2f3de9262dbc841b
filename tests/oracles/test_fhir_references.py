"""Promises of the test oracle tests/oracles/fhir_references.py, on Bundles written by hand."""

from __future__ import annotations

from typing import Any

import pytest

from tests.oracles.fhir_references import unresolved

PATIENT = "urn:uuid:0b7f6a52-8d4e-4c1e-9f3a-000000000001"


def bundle(reference: dict[str, Any], *, kind: str = "message", **entry: Any) -> dict[str, Any]:
    """A Patient and an Observation whose subject is ``reference``."""
    return {
        "resourceType": "Bundle",
        "type": kind,
        "entry": [
            {"fullUrl": PATIENT, "resource": {"resourceType": "Patient", "id": "p1"}},
            {
                "fullUrl": entry.pop("full_url", "urn:uuid:0b7f6a52-8d4e-4c1e-9f3a-000000000002"),
                "resource": {
                    "resourceType": "Observation",
                    "id": "o1",
                    "contained": [{"resourceType": "Specimen", "id": "s1"}],
                    "subject": reference,
                },
                **entry,
            },
        ],
    }


REST = "http://example.org/fhir"


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(bundle({"reference": PATIENT}), id="urn-uuid"),
        pytest.param(bundle({"reference": PATIENT, "type": "Patient"}), id="urn-uuid-typed"),
        pytest.param(bundle({"reference": "#s1"}), id="contained"),
        pytest.param(
            bundle({"identifier": {"system": "urn:x", "value": "1"}, "type": "Patient"}),
            id="logical",
        ),
        pytest.param(bundle({"display": "Someone"}), id="display-only"),
        pytest.param(
            bundle(
                {"reference": "Patient?identifier=urn:x|1"},
                kind="transaction",
                request={"method": "PUT", "url": "Observation?identifier=urn:x|2"},
            ),
            id="conditional-in-transaction",
        ),
    ],
)
def test_references_that_resolve(data: dict[str, Any]) -> None:
    """fullUrl matches, contained ids, logical and conditional-in-transaction references pass."""
    assert unresolved(data) == []


def test_a_relative_reference_resolves_against_a_restful_full_url() -> None:
    """Patient/p1 from an entry at [base]/Observation/o1 resolves to [base]/Patient/p1."""
    data = bundle({"reference": "Patient/p1"}, full_url=f"{REST}/Observation/o1")
    data["entry"][0]["fullUrl"] = f"{REST}/Patient/p1"
    assert unresolved(data) == []


@pytest.mark.parametrize(
    ("data", "why"),
    [
        pytest.param(
            bundle({"reference": "urn:uuid:nowhere"}), "no fullUrl matches", id="dangling"
        ),
        pytest.param(bundle({"reference": "#s2"}), "no contained", id="contained-missing"),
        pytest.param(bundle({"reference": "Patient/p1"}), "no RESTful base", id="relative-in-urn"),
        pytest.param(
            bundle({"reference": "Patient?identifier=urn:x|1"}),
            "only in a transaction",
            id="conditional-in-message",
        ),
        pytest.param(
            bundle({"reference": PATIENT, "type": "Group"}), "type is Group", id="wrong-type"
        ),
        pytest.param(
            bundle({"identifier": {"value": "1"}, "type": "patient"}),
            "not a resource type",
            id="bad-logical-type",
        ),
        pytest.param(bundle({"reference": "Patient p1"}), "neither", id="not-a-reference"),
    ],
)
def test_references_that_do_not_resolve_are_named(data: dict[str, Any], why: str) -> None:
    """A dangling or misplaced reference is one Problem naming the entry, the path and why."""
    problems = unresolved(data)
    assert len(problems) == 1, problems
    text = str(problems[0])
    assert text.startswith("Bundle.entry[1].resource (Observation/o1) Observation.subject: ")
    assert why in text
