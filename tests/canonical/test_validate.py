"""Promises of validate_bundle: FHIR R4 validity, message invariants, errors that name elements only."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from broker.canonical import validate_bundle
from broker.errors import CanonicalError
from tests.oracles.fhir_references import unresolved
from tests.oracles.fhirjs import validate

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


INVALID_CASES = [
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
    pytest.param(lambda b: b["entry"].reverse(), "Bundle.entry[0].resource", id="header-not-first"),
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
]


@pytest.mark.parametrize(("change", "location"), INVALID_CASES)
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


# Which independent oracle must also find each invalid case above invalid: FHIR.js (npm fhir,
# not the product's fhir.resources models) or the reference resolver written from FHIR R4
# §2.36.4.1. The other cases break Passerelle's own message rules (a message Bundle, its
# MessageHeader first, fullUrl "urn:uuid:<id>"), which FHIR.js does not evaluate.
INDEPENDENTLY_INVALID = {
    "bad-date": "fhirjs",
    "bad-code": "fhirjs",
    "unknown-element": "fhirjs",
    "missing-required": "fhirjs",
    "unknown-type": "fhirjs",
    "dangling-reference": "references",
}


@pytest.fixture(scope="module")
def fhirjs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, str]]]:
    """FHIR.js's errors for the valid Bundle and every invalid case, from one node process."""
    bundles = {"valid": bundle()}
    for case in INVALID_CASES:
        data = bundle()
        case.values[0](data)
        bundles[str(case.id)] = data
    return validate(bundles, tmp_path_factory.mktemp("fhirjs"))


@pytest.mark.integration
def test_the_valid_bundle_is_valid_for_the_independent_oracles(
    fhirjs: dict[str, list[dict[str, str]]],
) -> None:
    """The Bundle these tests call valid has no FHIR.js error and no unresolved reference."""
    assert fhirjs.get("valid") is None, fhirjs["valid"]
    assert unresolved(bundle()) == []


@pytest.mark.integration
@pytest.mark.parametrize(("case", "oracle"), sorted(INDEPENDENTLY_INVALID.items()))
def test_an_invalid_case_is_invalid_for_an_independent_oracle(
    fhirjs: dict[str, list[dict[str, str]]], case: str, oracle: str
) -> None:
    """What validate_bundle refuses as invalid FHIR, FHIR.js or the reference resolver refuses too."""
    if oracle == "fhirjs":
        assert fhirjs.get(case), f"FHIR.js finds no error in case {case}"
    else:
        data = bundle()
        next(c for c in INVALID_CASES if c.id == case).values[0](data)
        assert unresolved(data), f"every reference of case {case} resolves"
