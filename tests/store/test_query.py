"""Searching the store by text: a reason, or what a receiver answered (real Redis, drains, SQLite)."""

from __future__ import annotations

from broker.ack import read_ack
from broker.store import Search, search
from passerelle_demo.synthetic import adt, patients

LAB = "lab-legacy"


def test_text_finds_what_the_receiver_answered_as_the_dead_letters_do(make_broker):
    """The lab's AR text is in its reply, not in the reason: ``--text`` finds it like
    ``GET /api/dead-letters/SUB?text=`` does; other text finds nothing."""
    broker = make_broker(retry={"max_attempts": 1})
    broker.lab.mode = "reject"
    patient = patients(1, seed=31)[0]
    assert read_ack(broker.receive(adt(patient, "A01", control_id="TXT-1"))).code == "AA"
    broker.run()
    broker.write_store()
    [letter] = broker.dead_letters.find(LAB, text="ANSWERS AR")
    assert "answers AR" not in letter["reason"]

    found = search(broker.store, Search(text="ANSWERS AR")).items
    assert [(m["id"], m["control_id"]) for m in found] == [(letter["envelope_id"], "TXT-1")]
    assert not search(broker.store, Search(text="answers AE")).items
    assert not search(broker.store, Search(text="answers%AR")).items, "% is a character"
