"""Data-sharing policies through the real delivery path, one test per rule kind.

Messages go through the listener's intake and the real drains (``EagerBroker``) to a loopback
FHIR server (``FhirCapture``) and an MLLP receiver (``MllpCapture``); what is asserted is what
those peers received, and what the message store recorded.
"""

from __future__ import annotations

import hashlib
import hmac
import json

import pytest
import sqlalchemy as sa

from broker import keys
from broker.ack import read_ack
from broker.dispatch import DRAIN_OUTBOUND
from broker.envelope import Envelope
from broker.store.schema import attempts, deliveries
from passerelle_demo.synthetic import adt, patients

DMP = "dmp-national"
LAB = "lab-legacy"
CIN = "https://passerelle.ma/fhir/sid/cin"
PSEUDO = "urn:passerelle:pseudonym:dmp:cin"
KEY = "k" * 32
LABELS = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality"
TREAT = {"purpose": "TREAT"}


def _adult(seed: int):
    return next(p for p in patients(10, seed=seed) if p.cin)


def _send(broker, patient, event: str = "A01", control_id: str = "P-1") -> None:
    answer = broker.receive(adt(patient, event, control_id=control_id))
    assert answer is not None
    assert read_ack(answer).code == "AA"
    broker.run()


def _resources(bundle: dict, kind: str) -> list[dict]:
    return [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == kind]


def _states(broker) -> dict[str, tuple[str, str | None]]:
    broker.write_store()
    with broker.store.connect() as connection:
        rows = connection.execute(sa.select(deliveries)).all()
    return {r.subscriber: (r.state, r.reason) for r in rows}


def test_a_source_the_policy_does_not_allow_is_filtered_with_the_policy_reason(make_broker):
    broker = make_broker(policies={DMP: {**TREAT, "id": "dmp-care", "sources": ["labo-casa"]}})
    _send(broker, _adult(1))
    assert broker.fhir.received == []
    assert broker.lab.control_ids() == ["P-1"], "the other subscriber still gets it"
    state, reason = _states(broker)[DMP]
    assert state == "filtered"
    assert reason == "policy dmp-care takes no message from chu-rabat-adt"


def test_an_event_the_policy_does_not_allow_is_filtered(make_broker):
    only_a04 = {**TREAT, "events": ["ADT^A04"]}
    broker = make_broker(policies={DMP: only_a04, LAB: only_a04})
    x = _adult(2)
    _send(broker, x, "A01", "E-1")
    _send(broker, x, "A04", "E-2")
    assert broker.fhir_control_ids() == ["E-2"]
    assert broker.lab.control_ids() == ["E-2"]
    assert _states(broker)[DMP][0] in ("filtered", "delivered")


def test_resource_types_the_policy_does_not_allow_are_taken_out_with_their_references(
    make_broker,
):
    broker = make_broker(policies={DMP: {**TREAT, "resource_types": ["Patient"]}})
    _send(broker, _adult(3))
    (bundle,) = broker.fhir.received
    kinds = {e["resource"]["resourceType"] for e in bundle["entry"]}
    assert kinds == {"Patient"}
    assert "urn:uuid:" not in json.dumps([e["resource"] for e in bundle["entry"]])


def test_removed_elements_do_not_reach_the_fhir_or_the_mllp_subscriber(make_broker):
    rules = {**TREAT, "remove": ["Patient.telecom", "Patient.address.line"]}
    broker = make_broker(policies={DMP: rules, LAB: rules})
    x = _adult(4)
    _send(broker, x)
    (bundle,) = broker.fhir.received
    (patient,) = _resources(bundle, "Patient")
    assert "telecom" not in patient
    assert patient["address"]
    assert all("line" not in a for a in patient["address"])
    assert patient["address"][0]["city"], "what is not named stays"
    (message,) = broker.lab.messages
    pid = next(s for s in message.text.split("\r") if s.startswith("PID|"))
    assert x.phone not in message.text
    assert x.street not in pid
    assert x.family in pid


def test_masked_elements_carry_the_stated_mask(make_broker):
    rules = {**TREAT, "mask": [{"path": "Patient.name.given", "with": "***"}]}
    broker = make_broker(policies={DMP: rules})
    x = _adult(5)
    _send(broker, x)
    (bundle,) = broker.fhir.received
    (patient,) = _resources(bundle, "Patient")
    assert {g for n in patient["name"] for g in n["given"]} == {"***"}
    assert x.given not in json.dumps(bundle, ensure_ascii=False)


def test_cin_is_pseudonymised_with_the_key_stably_for_fhir_and_hl7v2(make_broker, monkeypatch):
    monkeypatch.setenv("PASSERELLE_PSEUDONYM_KEY", KEY)
    rules = {**TREAT, "pseudonymise": {"identifiers": [{"system": CIN, "as": PSEUDO}]}}
    broker = make_broker(policies={DMP: rules, LAB: rules})
    x = _adult(6)
    _send(broker, x, "A01", "S-1")
    _send(broker, x, "A08", "S-2")
    expected = hmac.new(KEY.encode(), f"{CIN}|{x.cin}".encode(), hashlib.sha256).hexdigest()[:32]
    first, second = broker.fhir.received
    for bundle in (first, second):
        text = json.dumps(bundle)
        assert x.cin not in text
        (patient,) = _resources(bundle, "Patient")
        assert {"system": PSEUDO, "value": expected} in [
            {"system": i["system"], "value": i["value"]} for i in patient["identifier"]
        ]
    assert all(x.cin not in m.text for m in broker.lab.messages)
    assert len(broker.lab.messages) == 2


def test_a_pseudonymising_policy_without_its_key_refuses_to_load(make_broker, monkeypatch):
    from broker.errors import AdapterSpecError

    monkeypatch.delenv("PASSERELLE_PSEUDONYM_KEY", raising=False)
    rules = {**TREAT, "pseudonymise": {"identifiers": [{"system": CIN, "as": PSEUDO}]}}
    with pytest.raises(AdapterSpecError, match=r"dmp-national.yaml:\d+.*PASSERELLE_PSEUDONYM_KEY"):
        make_broker(policies={DMP: rules})


def _queue_labelled(
    broker, original: str, bundle_level: str | None, encounter_level: str | None, suffix: str
) -> str:
    """Queue for the DMP a copy of message ``original`` with confidentiality labels; drain."""
    envelope = Envelope.unsealed(broker.client.get(keys.envelope(original)), original)
    bundle = json.loads(json.dumps(envelope.bundle))
    if bundle_level:
        bundle["meta"] = {"security": [{"system": LABELS, "code": bundle_level}]}
    for entry in bundle["entry"]:
        if encounter_level and entry["resource"]["resourceType"] == "Encounter":
            entry["resource"]["meta"] = {"security": [{"system": LABELS, "code": encounter_level}]}
    labelled = envelope.model_copy(update={"id": envelope.id[:-4] + suffix, "bundle": bundle})
    broker.client.set(keys.envelope(labelled.id), labelled.sealed())
    partition = labelled.partition or 0
    broker.client.xadd(
        keys.outbound(DMP, partition),
        {"env": labelled.id, "pk": labelled.partition_key or "", "partition": partition},
    )
    broker.call(DRAIN_OUTBOUND, DMP, partition)
    return labelled.id


def test_security_labels_above_the_policy_are_not_sent(make_broker):
    broker = make_broker(policies={DMP: {**TREAT, "confidentiality": "N"}})
    _send(broker, _adult(7), "A01", "L-1")
    assert len(broker.fhir.received) == 1
    original = broker.queued(DMP)["L-1"]
    restricted = _queue_labelled(broker, original, "R", None, "aaaa")
    assert len(broker.fhir.received) == 1, "a Bundle labelled R is not sent under N"
    _queue_labelled(broker, original, None, "V", "bbbb")
    labelled = broker.fhir.received[-1]
    assert len(broker.fhir.received) == 2
    assert not _resources(labelled, "Encounter"), "the V-labelled Encounter is taken out"
    assert _resources(labelled, "Patient")
    broker.write_store()
    with broker.store.connect() as connection:
        row = connection.execute(
            sa.select(deliveries).where(deliveries.c.message_id == restricted)
        ).one()
    assert row.state == "filtered"
    assert "labelled R" in row.reason


def test_a_policy_allowing_restricted_data_sends_it(make_broker):
    broker = make_broker(policies={DMP: {**TREAT, "confidentiality": "R"}})
    _send(broker, _adult(8), "A01", "L-1")
    _queue_labelled(broker, broker.queued(DMP)["L-1"], "R", None, "aaaa")
    assert len(broker.fhir.received) == 2


def test_the_purpose_of_use_is_recorded_with_each_attempt(make_broker):
    broker = make_broker(policies={DMP: {"id": "dmp-care", "purpose": "TREAT"}})
    _send(broker, _adult(9))
    broker.write_store()
    with broker.store.connect() as connection:
        rows = connection.execute(sa.select(attempts.c.subscriber, attempts.c.policy)).all()
    assert dict(rows) == {DMP: "dmp-care/TREAT", LAB: None}
    from broker.store import trace

    traced = trace(broker.store, broker.queued(DMP)["P-1"])
    assert traced is not None
    logs = {d["subscriber"]: d["attempt_log"] for d in traced["deliveries"]}
    assert [a["policy"] for a in logs[DMP]] == ["dmp-care/TREAT"]


def test_a_replay_obeys_the_policy_in_force_now(make_broker):
    """Delivered whole; the registration then removes the telecom: the resend sends none."""
    broker = make_broker()
    x = _adult(10)
    _send(broker, x, "A01", "R-1")
    (first,) = broker.fhir.received
    assert "telecom" in _resources(first, "Patient")[0]
    envelope_id = broker.queued(DMP)["R-1"]
    broker.reconfigure(policies={DMP: {**TREAT, "remove": ["Patient.telecom"]}})
    broker.operations().resend(envelope_id, DMP, who="test", why="policy check")
    broker.run()
    assert len(broker.fhir.received) == 2
    assert "telecom" not in _resources(broker.fhir.received[1], "Patient")[0]
    broker.reconfigure(policies={DMP: {**TREAT, "events": ["ADT^A04"]}})
    broker.operations().resend(envelope_id, DMP, who="test", why="policy check")
    broker.run()
    assert len(broker.fhir.received) == 2, "a resend the policy now refuses is filtered"
    assert _states(broker)[DMP] == ("filtered", "policy dmp-national does not allow ADT^A01")


def test_a_resend_to_a_subscriber_not_subscribed_is_filtered(make_broker):
    """The issue's case: a resend delivered lab results to an ADT-only subscriber."""
    broker = make_broker(events={LAB: ["ADT^A04"]})
    _send(broker, _adult(11), "A01", "N-1")
    envelope_id = broker.queued(DMP)["N-1"]
    assert broker.lab.messages == []
    broker.operations().resend(envelope_id, LAB, who="test", why="wrong subscriber")
    broker.run()
    assert broker.lab.messages == []
    assert _states(broker)[LAB] == ("filtered", "the subscriber does not subscribe to ADT^A01")
