"""Dead letters on the real stack: a poison message holds its patient only; replay releases in order."""

from __future__ import annotations

import json

import pytest

from broker import keys
from broker.ack import read_ack
from broker.adapters.mllp import MllpClient
from broker.adapters.spec import load_adapters
from broker.delivery.dead_letter import DeadLetterStore
from broker.delivery.replay import Operations
from broker.intake.hl7v2 import partition_key
from broker.parsing.hl7v2 import parse
from broker.store import stored_envelope
from broker.store.schema import audit
from broker.testing import stored_envelope_json, wait_until
from broker.worker.celery_app import create_celery
from passerelle_demo.loopback import LoopbackStack
from passerelle_demo.synthetic import Patient, adt, patients

pytestmark = pytest.mark.integration


@pytest.fixture
def stack(tmp_path):
    with LoopbackStack(
        tmp_path, workers=2, rekick_interval_s=1.0, delivery_timeout_s=2.0
    ) as running:
        yield running


def operations(stack: LoopbackStack) -> Operations:
    celery = create_celery(stack.settings)
    return Operations(
        stack.redis,
        enqueue=lambda name, args: celery.send_task(name, args=args, queue="passerelle"),
        subscribers=["dmp-national", "lab-legacy"],
        retention_s=stack.settings.retention_s,
    )


def send(stack: LoopbackStack, messages: list[str]) -> None:
    with MllpClient("127.0.0.1", stack.inbound_port, timeout=10) as client:
        for text in messages:
            assert read_ack(client.send(text.encode())).code == "AA"


def fhir_control_ids(stack: LoopbackStack) -> list[str]:
    """MSH-10 of every bundle the FHIR server accepted, in arrival order."""
    arrived = [envelope_id for envelope_id, _ in stack.fhir.arrivals()]
    found = stack.control_ids(arrived)
    return [found[e] for e in arrived]


def fhir_envelopes(stack: LoopbackStack) -> dict[str, dict]:
    """Control id → the envelope (as the broker kept it) of every bundle the FHIR server accepted:
    in Redis while in flight, else as the message store rebuilds it."""
    out = {}
    for envelope_id in stack.fhir.envelope_ids:
        raw = stored_envelope_json(stack.redis, envelope_id)
        if raw is not None:
            envelope = json.loads(raw)
        elif stack.store is not None and (kept := stored_envelope(stack.store, envelope_id)):
            envelope = kept.model_dump(mode="json")
        else:
            continue
        out[envelope["control_id"]] = envelope
    return out


def partition_mates(
    stack: LoopbackStack, seed: int, candidates: int = 64
) -> tuple[Patient, Patient, list[Patient]]:
    """A patient X, another patient of X's partition, and two patients of other partitions.

    Partitions as the listener computes them (``ingest.partition_key``, ``keys.partition_of``)
    for the stack's inbound adapter; the test checks them again on the envelopes it gets back.
    """
    assert stack.settings is not None
    (adapter,) = [a for a in load_adapters(stack.settings.adapters_dir) if a.id == "chu-rabat-adt"]

    def partition(patient: Patient) -> int:
        message = parse(adt(patient, "A01", control_id="PROBE"))
        return keys.partition_of(partition_key(message, adapter), stack.settings.partitions)

    x, *rest = patients(candidates, seed=seed)
    mates = [p for p in rest if partition(p) == partition(x)]
    strangers = [p for p in rest if partition(p) != partition(x)]
    assert mates, "no partition mate among the candidates"
    assert len(strangers) >= 2, "too few patients of other partitions among the candidates"
    return x, mates[0], strangers[:2]


def test_a_poison_message_holds_only_its_patient_not_its_partition_and_replay_releases_in_order(
    stack,
):
    """X's refused message holds X's later messages for that subscriber only: a patient of the
    same partition queued behind them, and patients of other partitions, are delivered; replay
    sends X's messages in order."""
    x, mate, others = partition_mates(stack, seed=909)
    stack.fhir.fail_next(1, "reject")
    send(stack, [adt(x, "A01", control_id="X-1")])
    store = DeadLetterStore(stack.redis)
    assert wait_until(lambda: store.find("dmp-national"), 30), stack.logs()
    (letter,) = store.find("dmp-national")
    assert letter["holds_patient"]
    assert "422" in letter["attempts"][0]["reply"]

    later = [adt(x, "A08", control_id="X-2"), adt(x, "A08", control_id="X-3")]
    mate_msgs = [adt(mate, "A01", control_id="M-1"), adt(mate, "A08", control_id="M-2")]
    others_msgs = [adt(p, "A01", control_id=f"O-{i}") for i, p in enumerate(others)]
    # The mate's messages queue behind X's in the same partition stream.
    send(stack, [later[0], mate_msgs[0], later[1], mate_msgs[1], *others_msgs])
    wanted_mate = {"M-1", "M-2"}
    wanted_others = {f"O-{i}" for i in range(len(others))}
    assert wait_until(lambda: wanted_mate | wanted_others <= set(fhir_control_ids(stack)), 30), (
        f"held with X: {sorted(wanted_mate | wanted_others - set(fhir_control_ids(stack)))}\n"
        f"{stack.logs()}"
    )
    # The mate really is in X's partition, and is another patient (the envelopes say so).
    envelopes = fhir_envelopes(stack)
    assert {envelopes[c]["partition"] for c in wanted_mate} == {letter["partition"]}
    assert {envelopes[c]["partition_key"] for c in wanted_mate} != {letter["patient"]}
    assert all(envelopes[c]["partition"] != letter["partition"] for c in wanted_others)
    assert [c for c in fhir_control_ids(stack) if c.startswith("M-")] == ["M-1", "M-2"]
    assert wait_until(lambda: {"X-1", "X-2", "X-3"} <= set(stack.lab.accepted_ids()), 30), (
        stack.logs()
    )
    assert not {"X-1", "X-2", "X-3"} & set(fhir_control_ids(stack)), (
        "the held patient leaked through"
    )
    parked = stack.redis.xlen(keys.parked("dmp-national", letter["patient"]))
    print(
        f"held patient: {parked} messages parked (the dead letter first); delivered: "
        f"{len(wanted_mate)} of a patient of the same partition, {len(wanted_others)} of others"
    )
    assert parked == 3

    operations(stack).replay(
        "dmp-national", letter["id"], who="test", why="the receiver fixed its validation"
    )
    assert wait_until(lambda: {"X-1", "X-2", "X-3"} <= set(fhir_control_ids(stack)), 30), (
        stack.logs()
    )
    delivered_x = [c for c in fhir_control_ids(stack) if c.startswith("X-")]
    assert delivered_x == ["X-1", "X-2", "X-3"]
    assert wait_until(
        lambda: stack.redis.hget(keys.held("dmp-national"), letter["patient"]) is None, 10
    )
    assert store.get("dmp-national", letter["id"])["status"] == "delivered"
    after = [adt(x, "A08", control_id="X-4")]
    send(stack, after)
    assert wait_until(lambda: "X-4" in fhir_control_ids(stack), 30), stack.logs()
    assert wait_until(lambda: "test" in _replayed_by(stack), 30), stack.logs()


def test_discarding_the_dead_letter_releases_the_rest(stack):
    """Discarding X's dead letter delivers X's parked messages, without the discarded one."""
    x = patients(1, seed=910)[0]
    stack.fhir.fail_next(1, "reject")
    send(stack, [adt(x, "A01", control_id="D-1")])
    store = DeadLetterStore(stack.redis)
    assert wait_until(lambda: store.find("dmp-national"), 30), stack.logs()
    (letter,) = store.find("dmp-national")
    send(stack, [adt(x, "A08", control_id="D-2")])
    assert wait_until(
        lambda: stack.redis.xlen(keys.parked("dmp-national", letter["patient"])) == 2, 30
    ), stack.logs()
    operations(stack).discard(
        "dmp-national", letter["id"], who="test", why="sent to the wrong registry"
    )
    assert wait_until(lambda: "D-2" in fhir_control_ids(stack), 30), stack.logs()
    assert "D-1" not in fhir_control_ids(stack)
    assert store.get("dmp-national", letter["id"])["status"] == "discarded"


def test_skip_policy_delivers_the_patients_later_messages(tmp_path):
    """With on_exhausted: skip, a refused message is dead-lettered and the patient's next goes on."""
    with LoopbackStack(
        tmp_path,
        workers=2,
        rekick_interval_s=1.0,
        retry={"initial_delay_s": 0.2, "max_delay_s": 1.0, "on_exhausted": "skip"},
    ) as stack:
        x = patients(1, seed=911)[0]
        stack.fhir.fail_next(1, "reject")
        send(stack, [adt(x, "A01", control_id="S-1")])
        store = DeadLetterStore(stack.redis)
        assert wait_until(lambda: store.find("dmp-national"), 30), stack.logs()
        send(stack, [adt(x, "A08", control_id="S-2")])
        assert wait_until(lambda: "S-2" in fhir_control_ids(stack), 30), stack.logs()
        (letter,) = store.find("dmp-national")
        assert not letter["holds_patient"]
        operations(stack).replay("dmp-national", letter["id"], who="test", why="fixed")
        assert wait_until(lambda: "S-1" in fhir_control_ids(stack), 30), stack.logs()
        assert wait_until(
            lambda: store.get("dmp-national", letter["id"])["status"] == "delivered", 10
        )


def test_a_patient_held_within_a_batch_has_its_next_messages_parked(stack):
    """A refusal and the same patient's next messages in one burst: the next ones are parked too."""
    x = patients(1, seed=912)[0]
    stack.fhir.fail_next(1, "reject")
    send(
        stack,
        [
            adt(x, "A01", control_id="B-1"),
            adt(x, "A08", control_id="B-2"),
            adt(x, "A08", control_id="B-3"),
        ],
    )
    store = DeadLetterStore(stack.redis)
    assert wait_until(lambda: store.find("dmp-national"), 30), stack.logs()
    (letter,) = store.find("dmp-national")
    assert wait_until(
        lambda: stack.redis.xlen(keys.parked("dmp-national", letter["patient"])) == 3, 30
    ), stack.logs()
    assert not {"B-1", "B-2", "B-3"} & set(fhir_control_ids(stack))
    operations(stack).replay("dmp-national", letter["id"], who="test", why="fixed")
    assert wait_until(
        lambda: [c for c in fhir_control_ids(stack) if c.startswith("B-")] == ["B-1", "B-2", "B-3"],
        30,
    ), stack.logs()


def _replayed_by(stack) -> list[str]:
    """Who replayed, as the audit trail says once the store's writer appended it."""
    import sqlalchemy as sa

    if stack.store is None:
        return []
    query = sa.select(audit.c.actor).where(audit.c.action == "message.replayed")
    with stack.store.connect() as connection:
        return list(connection.scalars(query))
