"""``broker.policy.disclose`` on its own: the canonical Bundle is never changed, changes are listed."""

from __future__ import annotations

import copy
import hashlib
import hmac
import json

import pytest

from broker.adapters.spec import AdapterSpec
from broker.canonical import validate_bundle
from broker.envelope import Envelope
from broker.policy import Consent, Consents, disclose
from broker.policy.paths import ABSENT_URL

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


KEY = "x" * 32
PSEUDO = "urn:x:cin"
PSEUDONYMISE = {"identifiers": [{"system": CIN, "as": PSEUDO}]}


def _expected(value: str) -> str:
    """The pseudonym as the policy documents it, computed here (not by the code under test)."""
    return hmac.new(KEY.encode(), f"{CIN}|{value}".encode(), hashlib.sha256).hexdigest()[:32]


def _entry(bundle: dict, kind: str) -> dict:
    (entry,) = [e for e in bundle["entry"] if e["resource"]["resourceType"] == kind]
    return entry


@pytest.fixture
def nested(canonical) -> Envelope:
    """The ADT with CIN identifiers in References of the Encounter, one in a list of lists."""
    bundle = copy.deepcopy(canonical.bundle)
    encounter = _entry(bundle, "Encounter")["resource"]
    encounter["subject"]["identifier"] = {
        "system": CIN,
        "value": "BE123456",
        "type": {"text": "CIN"},
        "use": "official",
    }
    encounter["participant"][0]["individual"]["identifier"] = {"system": CIN, "value": "AB1"}
    encounter["extension"] = [
        {"url": "urn:x:holders", "valueString": CIN},
        [[{"system": CIN, "value": "CD2"}]],
    ]
    return canonical.model_copy(update={"bundle": bundle})


@pytest.fixture(params=[True, False], ids=["counted first", "walk everything"])
def counted(request, monkeypatch):
    """Run with and without the count of the system's strings that lets the walk stop early."""
    from broker.policy import pseudonyms

    monkeypatch.setattr(pseudonyms, "_REFERENTS_LIST_VALUES", request.param)


def test_an_identifier_nested_in_another_resource_is_pseudonymised(nested, monkeypatch, counted):
    """Reference.identifier in an Encounter (and one in a list of lists) is found and replaced."""
    monkeypatch.setenv("PASSERELLE_PSEUDONYM_KEY", KEY)
    shown = disclose(
        _subscriber({"purpose": "HRESCH", "pseudonymise": PSEUDONYMISE}),
        nested,
        lambda: Consents([]),
    )
    assert shown.envelope is not None
    encounter = _entry(shown.envelope.bundle, "Encounter")["resource"]
    assert encounter["subject"] == {
        "reference": nested.bundle["entry"][1]["fullUrl"],
        "identifier": {"system": PSEUDO, "value": _expected("BE123456"), "use": "official"},
    }
    assert encounter["participant"][0]["individual"]["identifier"] == {
        "system": PSEUDO,
        "value": _expected("AB1"),
    }
    assert encounter["extension"] == [
        {"url": "urn:x:holders", "valueString": CIN},
        [[{"system": PSEUDO, "value": _expected("CD2")}]],
    ]
    labels = [label["code"] for label in encounter["meta"]["security"]]
    assert labels == ["PSEUDED"], "one label for three identifiers"
    assert [(c.action, c.count) for c in shown.changes] == [("pseudonymised", 4)]
    assert "BE123456" not in json.dumps(shown.envelope.bundle)


def test_a_resource_naming_the_system_without_such_an_identifier_is_left_as_it_is(
    canonical, monkeypatch, counted
):
    """The system as a Coding's system or a string is no Identifier: nothing changes, no label."""
    monkeypatch.setenv("PASSERELLE_PSEUDONYM_KEY", KEY)
    bundle = copy.deepcopy(canonical.bundle)
    practitioner = _entry(bundle, "Practitioner")["resource"]
    practitioner["qualification"] = [{"code": {"coding": [{"system": CIN, "code": "X"}]}}]
    practitioner["extension"] = [{"url": "urn:x:n", "valueString": CIN}]
    envelope = canonical.model_copy(update={"bundle": bundle})
    shown = disclose(
        _subscriber({"purpose": "HRESCH", "pseudonymise": PSEUDONYMISE}),
        envelope,
        lambda: Consents([]),
    )
    assert shown.envelope is not None
    assert _entry(shown.envelope.bundle, "Practitioner") is _entry(bundle, "Practitioner")


def test_the_canonical_bundle_is_unchanged_by_every_rule_at_once(nested, monkeypatch, counted):
    """remove, mask and pseudonymise on the same resources leave the canonical Bundle as it was."""
    monkeypatch.setenv("PASSERELLE_PSEUDONYM_KEY", KEY)
    before = copy.deepcopy(nested.bundle)
    policy = {
        "purpose": "HRESCH",
        "remove": [
            "Patient.telecom.where(use='mobile')",
            "Patient.address.line",
            "Encounter.location",
        ],
        "mask": [
            {"path": "Patient.name.given", "with": "***"},
            {"path": "Encounter.subject", "with": "x"},
            {"path": "Encounter.participant.individual.display", "with": "x"},
        ],
        "pseudonymise": PSEUDONYMISE,
    }
    shown = disclose(_subscriber(policy), nested, lambda: Consents([]))
    assert nested.bundle == before
    assert shown.envelope is not None
    patient = _entry(shown.envelope.bundle, "Patient")["resource"]
    assert {g for n in patient["name"] for g in n["given"]} == {"***"}
    assert patient["identifier"][0]["value"] == _expected("BE123456")
    encounter = _entry(shown.envelope.bundle, "Encounter")["resource"]
    assert "location" not in encounter
    assert encounter["subject"] == {"extension": [{"url": ABSENT_URL, "valueCode": "masked"}]}


def test_entries_nothing_changes_are_the_canonical_entries(canonical, monkeypatch, counted):
    """Copy on write: what a policy does not touch is shared, not copied."""
    monkeypatch.setenv("PASSERELLE_PSEUDONYM_KEY", KEY)
    policy = {"purpose": "HRESCH", "remove": ["Patient.telecom"], "pseudonymise": PSEUDONYMISE}
    shown = disclose(_subscriber(policy), canonical, lambda: Consents([]))
    assert shown.envelope is not None
    for kind in ("MessageHeader", "Encounter", "Practitioner"):
        assert _entry(shown.envelope.bundle, kind) is _entry(canonical.bundle, kind)
    patient = _entry(shown.envelope.bundle, "Patient")["resource"]
    original = _entry(canonical.bundle, "Patient")["resource"]
    assert patient is not original
    assert patient["name"] is original["name"]
    assert patient["identifier"][1] is original["identifier"][1]


def test_two_subscribers_with_different_policies_get_independent_results(
    canonical, monkeypatch, counted
):
    """Disclosing to one subscriber changes neither the envelope nor another's disclosure."""
    monkeypatch.setenv("PASSERELLE_PSEUDONYM_KEY", KEY)
    before = copy.deepcopy(canonical.bundle)
    pseudonymising = _subscriber({"purpose": "HRESCH", "pseudonymise": PSEUDONYMISE})
    masking = _subscriber(
        {
            "purpose": "TREAT",
            "remove": ["Patient.address"],
            "mask": [{"path": "Patient.identifier.value", "with": "***"}],
        }
    )
    first = disclose(pseudonymising, canonical, lambda: Consents([]))
    assert first.envelope is not None
    first_bundle = copy.deepcopy(first.envelope.bundle)
    second = disclose(masking, canonical, lambda: Consents([]))
    assert second.envelope is not None
    assert first.envelope.bundle == first_bundle
    assert canonical.bundle == before
    one = _entry(first.envelope.bundle, "Patient")["resource"]
    two = _entry(second.envelope.bundle, "Patient")["resource"]
    assert one["address"] == before["entry"][1]["resource"]["address"]
    assert one["identifier"][0] == {"system": PSEUDO, "value": _expected("BE123456")}
    assert "address" not in two
    assert [i["value"] for i in two["identifier"]] == ["***", "***"]
    assert two["identifier"][0]["system"] == CIN
    assert "meta" not in two


def test_an_identifier_in_a_dict_subclass_is_pseudonymised(canonical, monkeypatch, counted):
    """Not JSON, but a Bundle built in process may hold one: the CIN in it is replaced too."""
    from collections import OrderedDict

    monkeypatch.setenv("PASSERELLE_PSEUDONYM_KEY", KEY)
    bundle = copy.deepcopy(canonical.bundle)
    encounter = _entry(bundle, "Encounter")["resource"]
    encounter["subject"] = OrderedDict(identifier=OrderedDict(system=CIN, value="EF3"))
    envelope = canonical.model_copy(update={"bundle": bundle})
    shown = disclose(
        _subscriber({"purpose": "HRESCH", "pseudonymise": PSEUDONYMISE}),
        envelope,
        lambda: Consents([]),
    )
    assert shown.envelope is not None
    subject = _entry(shown.envelope.bundle, "Encounter")["resource"]["subject"]
    assert subject["identifier"] == {"system": PSEUDO, "value": _expected("EF3")}


def test_a_policy_that_changes_nothing_returns_the_envelope_itself(canonical):
    """Nothing to remove, mask or pseudonymise in this message: no copy of the envelope."""
    policy = {"purpose": "TREAT", "remove": ["Observation.note"], "events": ["ADT^*"]}
    shown = disclose(_subscriber(policy), canonical, lambda: Consents([]))
    assert shown.envelope is canonical
    assert shown.changes == []
    assert shown.policy == "research/TREAT"
