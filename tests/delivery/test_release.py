"""Releasing a held patient (``broker.delivery.release``) in process: no Celery; a real Redis.

The ``held`` fixture (conftest) leaves patient X held by a dead letter for the FHIR subscriber,
X-1 refused (422) with X-2 and X-3 parked behind it, and Y and Z of the same partition
delivered. An operator's replay or discard queues the release, which ``EagerBroker.run`` runs.
"""

from __future__ import annotations

from broker import keys
from broker.ack import read_ack
from broker.dispatch import RELEASE_PATIENT
from passerelle_demo.synthetic import adt

DMP = "dmp-national"


class TestRelease:
    def test_replay_delivers_the_dead_letter_then_the_parked_messages_in_order(self, held):
        """Replay: X-1, X-2, X-3 delivered in order, hold lifted, record delivered; X-4 goes straight on."""
        broker, x, _ = held
        (letter,) = broker.dead_letters.find(DMP)
        broker.operations().replay(DMP, letter["id"], who="test", why="receiver fixed")
        assert broker.celery.kicked(RELEASE_PATIENT) == [keys.parked(DMP, letter["patient"])]
        broker.run()

        assert broker.fhir_control_ids() == ["Y-1", "Z-1", "X-1", "X-2", "X-3"]
        assert broker.client.hget(keys.held(DMP), letter["patient"]) is None
        assert broker.client.xlen(keys.parked(DMP, letter["patient"])) == 0
        assert broker.dead_letters.get(DMP, letter["id"])["status"] == "delivered"
        assert read_ack(broker.receive(adt(x, "A08", control_id="X-4"))).code == "AA"
        broker.run()
        assert broker.fhir_control_ids()[-1] == "X-4"

    def test_discard_delivers_the_parked_messages_without_the_dead_letter(self, held):
        """Discard: X-2, X-3 delivered in order, X-1 never; the hold is lifted."""
        broker, _, _ = held
        (letter,) = broker.dead_letters.find(DMP)
        broker.operations().discard(DMP, letter["id"], who="test", why="wrong registry")
        broker.run()

        assert broker.fhir_control_ids() == ["Y-1", "Z-1", "X-2", "X-3"]
        assert broker.client.hget(keys.held(DMP), letter["patient"]) is None
        assert broker.dead_letters.get(DMP, letter["id"])["status"] == "discarded"

    def test_a_replay_refused_again_reopens_the_dead_letter_and_keeps_the_hold(self, held):
        """Replay while the peer still refuses: X-1 open again, X-2, X-3 still parked, nothing sent."""
        broker, _, _ = held
        (letter,) = broker.dead_letters.find(DMP)
        broker.fhir.fail_next(1, "reject")
        broker.operations().replay(DMP, letter["id"], who="test", why="try again")
        broker.run()

        record = broker.dead_letters.get(DMP, letter["id"])
        assert record["status"] == "open"
        assert len(record["attempts"]) == 2
        assert broker.fhir_control_ids() == ["Y-1", "Z-1"]
        assert broker.parked(DMP, letter["patient"]) == ["X-1", "X-2", "X-3"]
        assert broker.client.hget(keys.held(DMP), letter["patient"]) is not None
