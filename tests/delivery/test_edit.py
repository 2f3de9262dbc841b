"""Edits are new messages, through the real path: the drains, the release, the store's writer.

The ``held`` fixture (conftest): X-1 refused for good by the FHIR subscriber, X held, X-2 and
X-3 parked behind it. An operator corrects X-1's birth date: a new message takes X-1's place,
is delivered first, then X-2, X-3; the store keeps both, linked both ways, and the trail holds
the edit (paths and digest, not values) and the copy's disclosure.
"""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa

from broker import keys
from broker.delivery.replay import IdentityEditRefused, OperationError
from broker.store import Search, search, show, trace
from broker.store.schema import audit
from passerelle_demo.synthetic import adt, patients

DMP = "dmp-national"
LAB = "lab-legacy"
WHY = "INC-5501 birth date corrected by the admissions office"


def _patient(bundle):
    return next(
        e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient"
    )


def _edited(letter, **changes):
    bundle = json.loads(json.dumps(letter["envelope"]["bundle"]))
    _patient(bundle).update(changes)
    return bundle


def test_the_edited_copy_is_delivered_first_as_a_new_message_and_both_are_stored(held):
    """New id, delivered in X-1's place; store links both ways; the trail has no value."""
    broker, _, _ = held
    (letter,) = broker.dead_letters.find(DMP)
    original_id = letter["envelope_id"]
    record = broker.operations().replay(
        DMP, letter["id"], who="nadia", why=WHY, corrected=_edited(letter, birthDate="1970-01-02")
    )
    new_id = record["history"][-1]["edited_to"]
    broker.run()

    received = list(broker.fhir.received_control_ids)
    assert original_id not in received[2:], "the original is never sent again"
    assert received[2] == new_id, "the copy takes the original's place, first"
    assert broker.fhir_control_ids()[2:] == ["X-1", "X-2", "X-3"]
    assert broker.client.hget(keys.held(DMP), letter["patient"]) is None
    assert broker.dead_letters.get(DMP, letter["id"])["status"] == "edited"

    broker.write_store()
    original, copy = show(broker.store, original_id), show(broker.store, new_id)
    assert original is not None
    assert copy is not None
    assert original["edits"] == [new_id]
    assert copy["edit_of"] == original_id
    assert {d["subscriber"]: d["state"] for d in copy["deliveries"]}[DMP] == "delivered"
    traced = trace(broker.store, new_id)
    assert traced["edit"]["why"] == WHY
    assert [c["new"] for c in traced["edit"]["diff"]] == ["1970-01-02"]
    assert (
        _patient(json.loads(json.dumps(trace(broker.store, original_id)["canonical"])))["birthDate"]
        != "1970-01-02"
    ), "the original's content is kept as it was"

    with broker.store.connect() as connection:
        rows = [
            dict(r._mapping) for r in connection.execute(sa.select(audit).order_by(audit.c.seq))
        ]
    (edit,) = [r for r in rows if r["action"] == "message.edited"]
    details = json.loads(edit["details"])
    assert (edit["actor"], edit["reason"]) == ("nadia", WHY)
    assert details["edited_to"] == new_id
    assert details["paths"].endswith(".birthDate")
    assert len(details["diff_sha256"]) == 64
    assert "1970-01-02" not in json.dumps(edit), "the audit entry holds no value"
    disclosed = [
        json.loads(r["targets"])["envelope"] for r in rows if r["action"] == "message.delivered"
    ]
    assert new_id in disclosed


def test_an_identity_change_needs_identity_edit_and_changes_nothing(held):
    """A changed Patient.identifier: refused without identity.edit, taken with it."""
    broker, _, _ = held
    (letter,) = broker.dead_letters.find(DMP)
    forged = _edited(letter)
    _patient(forged)["identifier"][0]["value"] = "ZZ000002"
    with pytest.raises(IdentityEditRefused, match=r"identity\.edit"):
        broker.operations().replay(DMP, letter["id"], who="nadia", why=WHY, corrected=forged)
    assert broker.dead_letters.get(DMP, letter["id"])["status"] == "open"
    record = broker.operations().replay(
        DMP, letter["id"], who="admin", why=WHY, corrected=forged, identity_edit=True
    )
    assert record["history"][-1]["identity_changed"] == 1


@pytest.mark.parametrize("why", ["", ".", "fix it", "  ok  "])
def test_an_edit_needs_a_real_reason(held, why):
    """Blank or a few letters: refused, the dead letter stays open."""
    broker, _, _ = held
    (letter,) = broker.dead_letters.find(DMP)
    with pytest.raises(OperationError, match="reason"):
        broker.operations().replay(
            DMP,
            letter["id"],
            who="nadia",
            why=why,
            corrected=_edited(letter, birthDate="1970-01-02"),
        )
    assert broker.dead_letters.get(DMP, letter["id"])["status"] == "open"


def test_an_edit_that_fails_the_canonical_check_is_refused(held):
    """No patient identifier at all: refused by the same check as any mapped message."""
    from broker.errors import CanonicalError

    broker, _, _ = held
    (letter,) = broker.dead_letters.find(DMP)
    broken = _edited(letter)
    _patient(broken)["identifier"] = [{"system": "urn:x"}]
    with pytest.raises(CanonicalError):
        broker.operations().replay(
            DMP, letter["id"], who="admin", why=WHY, corrected=broken, identity_edit=True
        )
    assert broker.dead_letters.get(DMP, letter["id"])["status"] == "open"


def test_an_edit_sent_as_hl7_v2_has_its_own_control_id(make_broker):
    """The lab refused ED-1 for good; its corrected copy goes out with MSH-10 ``E`` + 16 hex
    digits (a receiver that drops control ids it has seen would drop ED-1 again); the store
    still finds the copy by the sender's ED-1."""
    broker = make_broker(retry={"max_attempts": 1})
    broker.lab.mode = "reject"
    patient = patients(1, seed=1243)[0]
    broker.receive(adt(patient, "A01", control_id="ED-1"))
    broker.run()
    (letter,) = broker.dead_letters.find(LAB)
    broker.lab.mode = "ack"
    record = broker.operations().replay(
        LAB, letter["id"], who="nadia", why=WHY, corrected=_edited(letter, birthDate="1970-01-02")
    )
    new_id = record["history"][-1]["edited_to"]
    broker.run()
    sent = broker.lab.control_ids()[-1]
    assert sent == "E" + new_id[-16:]
    assert len(sent) <= 20, "MSH-10 is 20 characters at most in HL7 v2.3 and v2.4"
    assert broker.lab.messages[-1].answer == "AA"
    broker.write_store()
    found = {item["id"] for item in search(broker.store, Search(control_id="ED-1")).items}
    assert found == {letter["envelope_id"], new_id}
