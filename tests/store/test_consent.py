"""The consent / opt-out registry, on SQLite and PostgreSQL, through the real delivery path.

A consent recorded in the store reaches the delivery drains through their cached snapshot (its
Redis version moves), and a replay after a change obeys the change.
"""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa

from broker.ack import read_ack
from broker.policy import ConsentError
from broker.store import ConsentRegistry
from broker.store.schema import deliveries
from passerelle_demo.synthetic import adt, patients

DMP = "dmp-national"
LAB = "lab-legacy"
CIN = "https://passerelle.ma/fhir/sid/cin"


def _adult(seed: int):
    return next(p for p in patients(10, seed=seed) if p.cin)


def _send(broker, patient, control_id: str) -> None:
    assert read_ack(broker.receive(adt(patient, "A01", control_id=control_id))).code == "AA"
    broker.run()


def _registry(broker) -> ConsentRegistry:
    return ConsentRegistry(broker.store, broker.client)


def _state(broker, envelope_id: str, subscriber: str) -> tuple[str, str | None]:
    broker.write_store()
    with broker.store.connect() as connection:
        row = connection.execute(
            sa.select(deliveries.c.state, deliveries.c.reason).where(
                deliveries.c.message_id == envelope_id, deliveries.c.subscriber == subscriber
            )
        ).one()
    return row.state, row.reason


def test_a_block_stops_one_subscriber_and_a_revoke_lifts_it(make_broker, store_url):
    broker = make_broker(store_url=store_url)
    x, y = _adult(21), _adult(22)
    entry = _registry(broker).add(
        system=CIN, value=x.cin, action="block", reason="opposition", who="dpo", subscriber=DMP
    )
    _send(broker, x, "C-1")
    _send(broker, y, "C-2")
    assert broker.fhir_control_ids() == ["C-2"], "the other patient is sent"
    assert broker.lab.control_ids() == ["C-1", "C-2"], "the other subscriber is not blocked"
    state, reason = _state(broker, broker.queued(DMP)["C-1"], DMP)
    assert state == "filtered"
    assert reason == f"the patient's consent {entry.id} blocks sharing with {DMP}"
    _registry(broker).revoke(entry.id, who="dpo")
    _send(broker, x, "C-3")
    assert broker.fhir_control_ids() == ["C-2", "C-3"]


def test_a_restrict_sends_only_the_policys_minimum(make_broker, store_url):
    broker = make_broker(
        store_url=store_url,
        policies={DMP: {"purpose": "TREAT", "minimum": ["Patient.identifier", "Patient.gender"]}},
    )
    x = _adult(23)
    _registry(broker).add(system=CIN, value=x.cin, action="restrict", reason="r", who="dpo")
    _send(broker, x, "C-4")
    (bundle,) = broker.fhir.received
    kinds = [e["resource"]["resourceType"] for e in bundle["entry"]]
    assert kinds == ["Patient"]
    patient = bundle["entry"][0]["resource"]
    assert set(patient) <= {"resourceType", "identifier", "gender", "meta", "id"}
    assert x.family not in json.dumps(bundle, ensure_ascii=False)
    (message,) = broker.lab.messages
    assert x.family not in message.text, "a consent for all subscribers restricts HL7 v2 too"


def test_a_replay_obeys_a_consent_recorded_after_the_first_delivery(make_broker, store_url):
    broker = make_broker(store_url=store_url)
    x = _adult(24)
    _send(broker, x, "C-5")
    envelope_id = broker.queued(DMP)["C-5"]
    assert broker.fhir_control_ids() == ["C-5"]
    _registry(broker).add(system=CIN, value=x.cin, action="block", reason="r", who="dpo")
    broker.operations().resend(envelope_id, DMP, who="op", why="resend")
    broker.run()
    assert broker.fhir_control_ids() == ["C-5"], "the resend is refused by the new consent"
    assert _state(broker, envelope_id, DMP)[0] == "filtered"


def test_a_dead_letter_replayed_after_a_block_is_filtered_and_closed(make_broker, store_url):
    broker = make_broker(store_url=store_url, retry={"max_attempts": 1})
    x = _adult(25)
    broker.fhir.fail_next(1, "reject")
    _send(broker, x, "C-6")
    (letter,) = broker.dead_letters.find(DMP)
    _registry(broker).add(system=CIN, value=x.cin, action="block", reason="r", who="dpo")
    broker.operations().replay(DMP, letter["id"], who="op", why="fixed")
    broker.run()
    assert broker.fhir_control_ids() == []
    assert broker.dead_letters.get(DMP, letter["id"])["status"] != "open"


def test_a_consent_outside_its_period_does_not_apply(make_broker, store_url):
    broker = make_broker(store_url=store_url)
    x = _adult(26)
    _registry(broker).add(
        system=CIN,
        value=x.cin,
        action="block",
        reason="r",
        who="dpo",
        valid_from=1.0,
        valid_until=2.0,
    )
    _send(broker, x, "C-7")
    assert broker.fhir_control_ids() == ["C-7"]


def test_bad_consents_are_refused_with_a_sentence(make_broker, store_url):
    registry = _registry(make_broker(store_url=store_url))
    with pytest.raises(ConsentError, match="block or restrict"):
        registry.add(system=CIN, value="X1", action="hide", reason="r", who="w")
    with pytest.raises(ConsentError, match="says why"):
        registry.add(system=CIN, value="X1", action="block", reason=" ", who="w")
    with pytest.raises(ConsentError, match="no consent nope"):
        registry.revoke("nope", who="w")
    entry = registry.add(system=CIN, value="X1", action="block", reason="r", who="w")
    assert [c.id for c in registry.list(value="X1")] == [entry.id]
    registry.revoke(entry.id, who="w")
    assert registry.list(value="X1") == []
    assert registry.list(value="X1", revoked=True)[0].revoked_by == "w"


def test_the_drains_snapshot_follows_each_change_and_fails_closed(make_broker, store_url, tmp_path):
    """A change sets a new token (a flushed Redis counting again could not match a stale
    snapshot); an announced registry that cannot be read is a retryable delivery error."""
    from broker.errors import RetryableDeliveryError
    from broker.policy import VERSION_KEY, ConsentLookup

    broker = make_broker(store_url=store_url)
    registry = _registry(broker)
    assert len(ConsentLookup(broker.client, store_url)()) == 0
    entry = registry.add(system=CIN, value="Z1", action="block", reason="r", who="w")
    first = broker.client.get(VERSION_KEY)
    assert len(ConsentLookup(broker.client, store_url)()) == 1
    registry.revoke(entry.id, who="w")
    assert broker.client.get(VERSION_KEY) != first
    assert len(ConsentLookup(broker.client, store_url)()) == 0
    missing = f"sqlite:///{tmp_path / 'nowhere' / 'store.sqlite3'}"
    with pytest.raises(RetryableDeliveryError, match="consent registry cannot be read"):
        ConsentLookup(broker.client, missing)()
    broker.client.delete(VERSION_KEY)
    assert len(ConsentLookup(broker.client, missing)()) == 0, "no store, nothing announced: empty"
