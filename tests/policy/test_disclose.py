"""``broker.policy.disclose`` on its own: the canonical Bundle is never changed, changes are listed."""

from __future__ import annotations

import copy

import pytest

from broker.adapters.spec import AdapterSpec
from broker.canonical import validate_bundle
from broker.envelope import Envelope
from broker.policy import Consent, Consents, disclose

CIN = "https://passerelle.ma/fhir/sid/cin"


def _subscriber(policy: dict | None) -> AdapterSpec:
    data = {
        "id": "research",
        "name": "Research",
        "direction": "outbound",
        "transport": "fhir-rest",
        "url": "https://research.example/fhir",
        "subscribe": {"events": ["ADT^*"]},
    }
    if policy is not None:
        data["policy"] = policy
    return AdapterSpec.model_validate(data)


@pytest.fixture
def canonical(envelope) -> Envelope:
    return Envelope.model_validate(envelope)


def test_the_canonical_bundle_is_never_changed(canonical, monkeypatch):
    monkeypatch.setenv("PASSERELLE_PSEUDONYM_KEY", "x" * 32)
    before = copy.deepcopy(canonical.bundle)
    subscriber = _subscriber(
        {
            "purpose": "HRESCH",
            "remove": ["Patient.telecom.where(use='mobile')", "Patient.address.line"],
            "mask": [{"path": "Patient.address", "with": "x"}],
            "pseudonymise": {"identifiers": [{"system": CIN, "as": "urn:x:cin"}]},
        }
    )
    shown = disclose(subscriber, canonical, lambda: Consents([]))
    assert canonical.bundle == before
    assert shown.envelope is not None
    assert shown.envelope.bundle != before
    assert [(c.action, c.element, c.rule, c.count) for c in shown.changes] == [
        ("removed", "Patient.telecom.where(use='mobile')", "remove[0]", 1),
        ("removed", "Patient.address.line", "remove[1]", 2),
        ("masked", "Patient.address", "mask[0]", 1),
        ("pseudonymised", f"Identifier (system {CIN})", "pseudonymise.identifiers[0]", 1),
    ]
    (patient,) = [
        e["resource"]
        for e in shown.envelope.bundle["entry"]
        if e["resource"]["resourceType"] == "Patient"
    ]
    assert [t["use"] for t in patient["telecom"]] == ["home"]
    assert patient["address"][0]["extension"][0]["valueCode"] == "masked"
    pseudonymised = patient["identifier"][0]
    assert set(pseudonymised) == {"system", "value"}, "no CIN type or assigner stays on it"
    assert pseudonymised["system"] == "urn:x:cin"
    assert patient["meta"]["security"][0]["code"] == "PSEUDED"
    validate_bundle(shown.envelope.bundle)


def test_no_policy_and_no_consent_returns_the_envelope_itself(canonical):
    shown = disclose(_subscriber(None), canonical, lambda: Consents([]))
    assert shown.envelope is canonical
    assert shown.policy is None


def test_a_restricting_consent_without_a_policy_leaves_the_patients_identifiers(canonical):
    consent = Consent("c1", CIN, "BE123456", None, "restrict", "r", 0.0, None, "dpo", 0.0)
    shown = disclose(_subscriber(None), canonical, lambda: Consents([consent]))
    assert shown.envelope is not None
    (entry,) = shown.envelope.bundle["entry"][1:]
    assert set(entry["resource"]) == {"resourceType", "id", "identifier"}
    validate_bundle(shown.envelope.bundle)
    assert [c.id for c in shown.consents] == ["c1"]
