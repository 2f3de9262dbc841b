"""The delivery drain (``broker.delivery.drain``) in process: no Celery, no serve; a real Redis.

Each test feeds HL7 v2 messages through the listener's intake and runs the real drains eagerly
(``broker.testing.EagerBroker`` calls the plain functions the Celery tasks wrap). What is
asserted is what reached the capture subscribers, what they answered (their own counts) and the
dead-letter records in Redis. ``partitions=1`` puts every patient in one partition, so "the
others go on" is checked in the very partition of the failure. Releasing a held patient:
``test_release.py``.
"""

from __future__ import annotations

import json
from collections import Counter

import redis

from broker import keys
from broker.ack import read_ack
from broker.dispatch import DRAIN_INBOUND, DRAIN_OUTBOUND
from broker.testing import EagerBroker, stored_envelope_json, wait_until
from passerelle_demo.synthetic import adt, patients

DMP = "dmp-national"
LAB = "lab-legacy"


def receive(broker: EagerBroker, *messages: tuple[object, str, str]) -> None:
    """Send (patient, event, control id) messages through the intake; each must get AA."""
    for patient, event, control_id in messages:
        answer = broker.receive(adt(patient, event, control_id=control_id))
        assert answer is not None
        assert read_ack(answer).code == "AA", answer


def only_letter(broker: EagerBroker, subscriber: str = DMP) -> dict:
    """The one open dead letter of ``subscriber``."""
    letters = broker.dead_letters.find(subscriber)
    assert len(letters) == 1, f"expected one dead letter for {subscriber}, found {len(letters)}"
    return letters[0]


class TestRetriesExhausted:
    def test_a_head_out_of_attempts_is_a_dead_letter_with_the_reason_and_each_reply(
        self, make_broker
    ):
        """max_attempts: 3 failures (503) make a dead letter holding every reply; the partition goes on."""
        broker = make_broker(retry={"max_attempts": 3}, partitions=1)
        x, y = patients(2, seed=1201)
        broker.fhir.fail_next(3, "error")
        receive(broker, (x, "A01", "X-1"), (y, "A01", "Y-1"))
        ran = broker.run()

        letter = only_letter(broker)
        assert letter["reason"].startswith("retries exhausted: ")
        assert "503" in letter["reason"]
        assert [a["reply"][:8] for a in letter["attempts"]] == ["HTTP 503"] * 3
        assert letter["envelope_id"] == broker.queued(DMP)["X-1"]
        assert broker.fhir.status_counts().get(503) == 3, "the peer did not see three attempts"
        retries = [t for t in ran if t.name == DRAIN_OUTBOUND and t.countdown is not None]
        assert len(retries) == 2, "two retries are scheduled before the third attempt gives up"
        assert broker.fhir_control_ids() == ["Y-1"]
        assert broker.lab.control_ids() == ["X-1", "Y-1"], "the other subscriber is not held"

    def test_a_head_failing_past_its_max_age_is_a_dead_letter(self, make_broker):
        """max_age_s: retried while young; once its first failure is older than the limit, a dead letter."""
        broker = make_broker(retry={"max_age_s": 60}, partitions=1, deliver_inline=False)
        x = patients(1, seed=1202)[0]
        broker.fhir.mode = "error"
        receive(broker, (x, "A01", "X-1"))
        broker.run(DRAIN_INBOUND)
        broker.call(DRAIN_OUTBOUND, DMP, 0)
        assert broker.dead_letters.find(DMP) == [], "a fresh failure gave up"
        assert [t.stream for t in broker.celery.queued if t.countdown is not None] == [
            keys.outbound(DMP, 0)
        ]
        # The first failure two minutes ago, as the drain records attempts.
        key = keys.ATTEMPTS + DMP
        ((entry_id, raw),) = broker.client.hgetall(key).items()
        attempts = json.loads(raw)
        attempts[0]["at"] -= 120
        broker.client.hset(key, entry_id, json.dumps(attempts))
        broker.run(limit=50)

        letter = only_letter(broker)
        assert letter["reason"].startswith("retries exhausted: ")
        assert len(letter["attempts"]) == 2
        assert broker.fhir.status_counts() == {503: 2}

    def test_without_a_limit_a_failing_head_is_retried_and_never_dead_lettered(self, make_broker):
        """The default policy (no max_attempts, no max_age_s) retries until the peer takes it."""
        broker = make_broker(partitions=1)
        x, y = patients(2, seed=1203)
        broker.fhir.fail_next(6, "error")
        receive(broker, (x, "A01", "X-1"), (y, "A01", "Y-1"))
        broker.run()

        assert broker.dead_letters.find(DMP) == []
        assert broker.fhir.status_counts().get(503) == 6
        assert broker.fhir_control_ids() == ["X-1", "Y-1"]


def _partition_of(broker: EagerBroker, subscriber: str, envelope_id: str) -> int:
    """The partition whose queue for ``subscriber`` holds ``envelope_id``."""
    for partition in range(broker.settings.partitions):
        entries = broker.client.xrange(keys.outbound(subscriber, partition))
        if any(fields[b"env"].decode() == envelope_id for _, fields in entries):
            return partition
    raise AssertionError(f"{envelope_id} is queued for {subscriber} nowhere")


def _give_the_entry_id_of(client: redis.Redis, stream: str, other: str) -> None:
    """Queue ``stream``'s one entry again under the id of ``other``'s one entry: what two journal
    drains committing in the same millisecond give two partitions (an id is unique per stream)."""
    ((entry_id, _),) = client.xrange(other)
    ((_, fields),) = client.xrange(stream)
    client.delete(stream)
    client.xadd(stream, fields, id=entry_id)
    client.xgroup_create(stream, keys.DELIVER_GROUP, id="0")


class TestEntriesOfTheSameIdInTwoPartitions:
    def test_each_head_is_tried_as_often_as_the_policy_says(self, make_broker):
        """Two partitions' heads with the same entry id, both refused: each is sent
        ``max_attempts`` times, its retries and its dead letter its own (the attempts were kept by
        entry id alone: one head was dead-lettered after two sends, the other sent four times)."""
        broker = make_broker(retry={"max_attempts": 3}, partitions=2, deliver_inline=False)
        broker.lab.mode = "reject"
        x, y = patients(2, seed=1208)
        receive(broker, (x, "A01", "X-1"), (y, "A01", "Y-1"))
        broker.run(DRAIN_INBOUND)
        queued = broker.queued(LAB)
        px, py = (_partition_of(broker, LAB, queued[c]) for c in ("X-1", "Y-1"))
        assert px != py, "the two patients must be in different partitions"
        _give_the_entry_id_of(broker.client, keys.outbound(LAB, py), keys.outbound(LAB, px))
        broker.run()

        assert Counter(broker.lab.refused_ids()) == {"X-1": 3, "Y-1": 3}
        letters = {letter["envelope_id"]: letter for letter in broker.dead_letters.find(LAB)}
        assert {len(letters[queued[c]]["attempts"]) for c in ("X-1", "Y-1")} == {3}
        assert broker.client.hget(keys.STATS, f"retried:{LAB}") == b"4"
        assert broker.client.hlen(keys.ATTEMPTS + LAB) == 0, "a dead letter's attempts are left"


class TestRenderingBug:
    def test_a_renderer_crash_is_a_dead_letter_not_a_retry_and_the_partition_goes_on(
        self, make_broker
    ):
        """An envelope the renderer raises on (KeyError) is dead-lettered once; nothing is sent for it."""
        broker = make_broker(partitions=1, deliver_inline=False)
        x, y = patients(2, seed=1211)
        receive(broker, (x, "A01", "X-1"), (y, "A01", "Y-1"))
        broker.run(DRAIN_INBOUND)
        # A stored envelope the renderer's code does not expect: an entry without its fullUrl.
        envelope_id = broker.queued(DMP)["X-1"]
        key = keys.envelope(envelope_id)
        envelope = json.loads(stored_envelope_json(broker.client, envelope_id) or b"")
        del envelope["bundle"]["entry"][1]["fullUrl"]
        broker.client.set(key, json.dumps(envelope))
        ran = broker.run(limit=50)  # an endless retry raises instead of passing

        letter = only_letter(broker)
        assert letter["reason"] == (
            "internal error while rendering or sending (KeyError); see the worker log"
        )
        assert len(letter["attempts"]) == 1
        assert not [t for t in ran if t.countdown is not None], "a rendering bug was retried"
        assert broker.fhir.status_counts() == {200: 1}, "something was sent for the bad envelope"
        assert broker.fhir_control_ids() == ["Y-1"]


class TestExpiredEnvelope:
    def test_an_envelope_gone_past_its_retention_is_a_dead_letter_that_holds_nobody(
        self, make_broker
    ):
        """Its queue entry outlived the envelope: dead letter "expired", no payload; the patient goes on."""
        broker = make_broker(partitions=1, deliver_inline=False)
        x, y = patients(2, seed=1221)
        receive(broker, (x, "A01", "X-1"), (x, "A08", "X-2"), (y, "A01", "Y-1"))
        broker.run(DRAIN_INBOUND)
        key = keys.envelope(broker.queued(DMP)["X-1"])
        assert 0 < broker.client.ttl(key) <= broker.settings.retention_s
        broker.client.pexpire(key, 1)  # the retention TTL, run out
        assert wait_until(lambda: not broker.client.exists(key), 10)
        broker.run()

        letter = only_letter(broker)
        assert letter["reason"] == "the envelope expired before delivery"
        assert letter["envelope"] is None
        assert not letter["holds_patient"]
        assert broker.client.hlen(keys.held(DMP)) == 0
        assert broker.fhir.status_counts() == {200: 2}
        assert [broker.control_id(e) for e in broker.fhir.received_control_ids] == ["X-2", "Y-1"]


class TestHold:
    def test_a_dead_letter_parks_its_patients_later_messages_and_others_of_the_partition_go_on(
        self, held
    ):
        """X-1 refused: X-2, X-3 parked behind it; Y and Z, same partition, delivered; the lab gets all."""
        broker, _, _ = held
        letter = only_letter(broker)
        assert letter["holds_patient"]
        assert "422" in letter["attempts"][0]["reply"]
        assert {e["partition"] for e in map(json.loads, _envelopes(broker))} == {0}
        assert broker.fhir_control_ids() == ["Y-1", "Z-1"]
        assert broker.parked(DMP, letter["patient"]) == ["X-1", "X-2", "X-3"]
        assert broker.lab.control_ids() == ["X-1", "Y-1", "X-2", "Z-1", "X-3"]

    def test_a_held_patients_message_arriving_later_is_parked_too(self, held):
        """A message of X in a later batch joins the parked stream; Y's goes through."""
        broker, x, y = held
        receive(broker, (x, "A08", "X-4"), (y, "A08", "Y-2"))
        broker.run()
        letter = only_letter(broker)
        assert broker.fhir_control_ids() == ["Y-1", "Z-1", "Y-2"]
        assert broker.parked(DMP, letter["patient"]) == ["X-1", "X-2", "X-3", "X-4"]

    def test_skip_policy_delivers_the_patients_later_messages(self, make_broker):
        """on_exhausted: skip: the refused message is a dead letter that holds nobody."""
        broker = make_broker(retry={"on_exhausted": "skip"}, partitions=1)
        x = patients(1, seed=1232)[0]
        broker.fhir.fail_next(1, "reject")
        receive(broker, (x, "A01", "X-1"), (x, "A08", "X-2"))
        broker.run()
        assert not only_letter(broker)["holds_patient"]
        assert broker.fhir_control_ids() == ["X-2"]


class TestRetryWait:
    def test_a_retried_head_holds_its_partition_until_its_time_then_order_is_kept(
        self, make_broker
    ):
        """A 503 head waits out its backoff (pl:hold), Y behind it waits too; then X-1, Y-1 in order."""
        broker = make_broker(retry={"initial_delay_s": 30, "max_delay_s": 30}, partitions=1)
        x, y = patients(2, seed=1241)
        broker.fhir.fail_next(1, "error")
        receive(broker, (x, "A01", "X-1"), (y, "A01", "Y-1"))
        ran = broker.run()

        (retry,) = [t for t in ran if t.countdown is not None]
        assert retry.stream == keys.outbound(DMP, 0)
        assert 24 <= retry.countdown <= 36, "the backoff is initial_delay_s ± jitter"
        assert broker.fhir.received_control_ids == [], "Y-1 passed the failing head"
        assert broker.rekick() == 0, "the re-kick must respect the retry time"
        broker.client.set(keys.hold(DMP, 0), "0")  # the backoff has run out
        assert broker.rekick() == 1
        broker.run()
        assert broker.fhir_control_ids() == ["X-1", "Y-1"]


def _envelopes(broker: EagerBroker) -> list[bytes]:
    """The stored envelopes of everything queued for the FHIR subscriber."""
    return [stored_envelope_json(broker.client, e) for e in broker.queued(DMP).values()]


class TestReuse:
    """``_reuse``: the envelope this process stored, only for exactly the bytes it stored."""

    def test_the_same_bytes_give_the_stored_envelope_once(self):
        from broker.delivery.drain import _reuse
        from broker.envelope import Envelope

        envelope = Envelope(source="chu-rabat-adt")
        stored = {envelope.id: (b"sealed", envelope)}

        assert _reuse(stored, envelope.id, b"sealed") is envelope
        assert stored == {}, "one object serves one delivery"
        assert _reuse(stored, envelope.id, b"sealed") is None

    def test_other_bytes_or_no_store_are_parsed_as_before(self):
        from broker.delivery.drain import _reuse
        from broker.envelope import Envelope

        envelope = Envelope(source="chu-rabat-adt")
        stored = {envelope.id: (b"sealed", envelope)}

        assert _reuse(stored, envelope.id, b"rewritten") is None
        assert envelope.id in stored
        assert _reuse(None, envelope.id, b"sealed") is None
