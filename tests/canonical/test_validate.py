"""Promises of validate_bundle: FHIR R4 validity, message invariants, errors that name elements only."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from broker.canonical import validate_bundle
from broker.errors import CanonicalError

HEADER_ID = "0c6b1d0e-5d8e-4d4e-9a43-2b1f4e1c9a01"
PATIENT_ID = "7a3c2f10-1b2d-4e5f-8a9b-0c1d2e3f4a5b"


def bundle() -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "id": "b1",
        "type": "message",
        "timestamp": "2024-03-15T10:30:05+00:00",
        "entry": [
            {
                "fullUrl": f"urn:uuid:{HEADER_ID}",
                "resource": {
                    "resourceType": "MessageHeader",
                    "id": HEADER_ID,
                    "eventCoding": {
                        "system": "http://terminology.hl7.org/CodeSystem/v2-0003",
                        "code": "A01",
                    },
                    "source": {"endpoint": "urn:passerelle:adapter:chu-rabat"},
                    "focus": [{"reference": f"urn:uuid:{PATIENT_ID}"}],
                },
            },
            {
                "fullUrl": f"urn:uuid:{PATIENT_ID}",
                "resource": {
                    "resourceType": "Patient",
                    "id": PATIENT_ID,
                    "identifier": [
                        {"system": "https://passerelle.ma/fhir/sid/cin", "value": "BE123456"}
                    ],
                    "name": [
                        {"family": "EL AMRANI", "given": ["Fatima"]},
                        {"family": "العمراني", "given": ["فاطمة"]},
                    ],
                    "birthDate": "1962-03-12",
                    "gender": "female",
                },
            },
        ],
    }


def test_valid_bundle_passes() -> None:
    """A valid message Bundle raises nothing and is not modified."""
    data = bundle()
    before = copy.deepcopy(data)
    validate_bundle(data)
    assert data == before


@pytest.mark.parametrize(
    ("change", "location"),
    [
        pytest.param(
            lambda b: b["entry"][1]["resource"].update(birthDate="1962-03-52"),
            "Bundle.entry[1].resource.birthDate",
            id="bad-date",
        ),
        pytest.param(
            lambda b: b["entry"][1]["resource"].update(gender="femme"),
            "Bundle.entry[1].resource.gender",
            id="bad-code",
        ),
        pytest.param(
            lambda b: b["entry"][1]["resource"].update(colour="red"),
            "Bundle.entry[1].resource.colour",
            id="unknown-element",
        ),
        pytest.param(
            lambda b: b["entry"][0]["resource"].pop("source"),
            "Bundle.entry[0].resource.source",
            id="missing-required",
        ),
        pytest.param(lambda b: b.update(type="collection"), "Bundle.type", id="not-a-message"),
        pytest.param(
            lambda b: b["entry"].reverse(), "Bundle.entry[0].resource", id="header-not-first"
        ),
        pytest.param(
            lambda b: b["entry"][1].update(fullUrl="urn:uuid:other"),
            "Bundle.entry[1].fullUrl",
            id="fullurl",
        ),
        pytest.param(
            lambda b: b["entry"][0]["resource"]["focus"][0].update(reference="urn:uuid:nowhere"),
            "Bundle.entry[0].resource",
            id="dangling-reference",
        ),
        pytest.param(
            lambda b: b["entry"][1]["resource"].update(resourceType="Patinet"),
            "Bundle.entry[1].resource.resourceType",
            id="unknown-type",
        ),
    ],
)
def test_invalid_bundles_name_the_element(change: Any, location: str) -> None:
    """An invalid Bundle is a CanonicalError naming the element, never quoting the value."""
    data = bundle()
    change(data)
    with pytest.raises(CanonicalError) as caught:
        validate_bundle(data)
    assert caught.value.location == location
    for secret in ("1962-03-52", "femme", "colour: red"):
        assert secret not in str(caught.value)


def test_pydantic_errors_do_not_escape() -> None:
    """No pydantic ValidationError escapes: it is translated to CanonicalError."""
    data = bundle()
    data["entry"][1]["resource"]["name"] = "EL AMRANI"
    with pytest.raises(CanonicalError) as caught:
        validate_bundle(data)
    assert caught.value.__cause__ is None
