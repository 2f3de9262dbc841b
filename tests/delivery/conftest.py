"""Fixtures of the delivery tests: a patient held by a dead letter, with messages parked behind it."""

from __future__ import annotations

import pytest

from broker.ack import read_ack
from broker.testing import EagerBroker
from passerelle_demo.synthetic import adt, patients


def _receive(broker: EagerBroker, *messages: tuple[object, str, str]) -> None:
    """Send (patient, event, control id) messages through the intake; each must get AA."""
    for patient, event, control_id in messages:
        answer = broker.receive(adt(patient, event, control_id=control_id))
        assert answer is not None
        assert read_ack(answer).code == "AA", answer


@pytest.fixture
def held(make_broker):
    """X's first message refused for good (422) by the FHIR subscriber; X-2, X-3 behind it.

    Y and Z, in the same (only) partition, arrive between X's messages.
    """
    broker = make_broker(partitions=1)
    x, y, z = patients(3, seed=1231)
    broker.fhir.fail_next(1, "reject")
    _receive(
        broker,
        (x, "A01", "X-1"),
        (y, "A01", "Y-1"),
        (x, "A08", "X-2"),
        (z, "A01", "Z-1"),
        (x, "A08", "X-3"),
    )
    broker.run()
    return broker, x, y
