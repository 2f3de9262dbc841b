"""The HL7 v2 intake on a real Redis: journal first, then ACK; refusals kept; duplicates answered once."""

from __future__ import annotations

import asyncio
import hashlib
import threading

import pytest
import redis.asyncio
from structlog.testing import capture_logs

from broker import keys
from broker.ack import read_ack
from broker.adapters.mllp import MllpClient
from broker.adapters.spec import AdapterSpec, Sender
from broker.dispatch import AsyncKicker
from broker.intake.hl7v2 import HL7v2Intake, partition_key
from broker.intake.journal import Journal, dedupe_digest
from broker.intake.outcome import Verdict
from broker.listen import mllp_server
from broker.parsing.hl7v2 import parse
from broker.testing import QueuedTask, StubCelery, raw_of
from passerelle_demo.synthetic import adt, patients

ADAPTER = AdapterSpec(
    id="chu-rabat-adt",
    name="CHU Rabat",
    direction="inbound",
    transport="mllp",
    listen="127.0.0.1:2575",
)


def intake(
    url: str,
    supports=lambda event, version, adapter: event.startswith("ADT"),
    adapter: AdapterSpec = ADAPTER,
    rejected_head_bytes: int = 64 * 1024,
) -> tuple[HL7v2Intake, StubCelery, redis.asyncio.Redis]:
    client = redis.asyncio.Redis.from_url(url)
    celery = StubCelery()  # records the kicks (the drain is tested in tests/worker)
    journal = Journal(client, dedupe_window_s=60, rejected_head_bytes=rejected_head_bytes)
    handler = HL7v2Intake(adapter, journal, supports, 8, AsyncKicker(celery, client))
    return handler, celery, client


def journalled(redis_client) -> list[dict[bytes, bytes]]:
    """Every journal entry's fields, all partitions."""
    return [fields for p in range(8) for _, fields in redis_client.xrange(keys.inbound(p))]


def run(coro):
    return asyncio.run(coro)


@pytest.fixture
def message() -> bytes:
    return adt(patients(1, seed=1)[0], "A01", control_id="ING0001").encode()


class TestIntake:
    def test_aa_is_sent_for_a_journalled_message(self, redis_url, redis_client, message):
        """The AA echoes MSH-10 and the raw bytes are in the patient's partition stream."""

        async def go():
            handler, celery, client = intake(redis_url)
            ack = read_ack((await handler.receive(message, "peer")).reply)
            await handler.kicker.settle()  # the publish runs beside the answer
            await client.aclose()
            return ack, celery

        ack, celery = run(go())
        assert (ack.code, ack.control_id) == ("AA", "ING0001")
        partition = keys.partition_of(partition_key(parse(message.decode()), ADAPTER), 8)
        entries = redis_client.xrange(keys.inbound(partition))
        assert [raw_of(e[1]) for e in entries] == [message]
        assert celery.queued == [QueuedTask("passerelle.drain_inbound", (partition,))]

    def test_a_journalled_message_gets_its_aa_when_the_kick_cannot_be_queued(
        self, redis_url, redis_client, message
    ):
        """Journalled but the drain task not queued (broker link down): still AA; beat re-kicks."""

        async def go():
            client = redis.asyncio.Redis.from_url(redis_url)
            journal = Journal(client, dedupe_window_s=60, rejected_head_bytes=1024)
            down = StubCelery()
            down.down = True  # every publish fails, the reconnect too
            kicker = AsyncKicker(down, client)
            handler = HL7v2Intake(ADAPTER, journal, lambda *a: True, 8, kicker)
            with capture_logs() as logs:
                answer = (await handler.receive(message, "peer")).reply
                await kicker.settle()
            await client.aclose()
            return answer, logs

        answer, logs = run(go())
        ack = read_ack(answer)
        assert (ack.code, ack.control_id) == ("AA", "ING0001")
        assert [raw_of(f) for f in journalled(redis_client)] == [message]
        (failed,) = [e for e in logs if e["event"] == "inbound.kick_failed"]
        partition = keys.partition_of(partition_key(parse(message.decode()), ADAPTER), 8)
        assert (failed["stream"], failed["error"]) == (keys.inbound(partition), "ConnectionError")
        # The flag stays set: the periodic re-kick finds the partition with work and no drainer.
        assert redis_client.exists(keys.kick(keys.inbound(partition)))

    def test_the_aa_does_not_wait_for_the_drain_tasks_publish(
        self, redis_url, redis_client, message
    ):
        """Celery's publish (a thread, a round trip to Redis) runs beside the answer: a publish
        that hangs leaves the AA on time, and the task is queued once it goes through."""
        release = threading.Event()

        class SlowCelery(StubCelery):
            def send_task(self, *args, **kwargs):
                assert release.wait(30), "the test never released the publish"
                super().send_task(*args, **kwargs)

        async def go():
            client = redis.asyncio.Redis.from_url(redis_url)
            journal = Journal(client, dedupe_window_s=60, rejected_head_bytes=1024)
            celery = SlowCelery()
            kicker = AsyncKicker(celery, client)
            handler = HL7v2Intake(ADAPTER, journal, lambda *a: True, 8, kicker)
            try:
                outcome = await asyncio.wait_for(handler.receive(message, "peer"), 10)
                queued_at_answer = list(celery.queued)
            finally:
                release.set()
            await kicker.settle()
            await client.aclose()
            return outcome, queued_at_answer, celery.queued

        outcome, at_answer, queued = run(go())
        assert read_ack(outcome.reply).code == "AA"
        assert at_answer == []
        partition = keys.partition_of(partition_key(parse(message.decode()), ADAPTER), 8)
        assert queued == [QueuedTask("passerelle.drain_inbound", (partition,))]

    def test_a_duplicate_gets_an_aa_for_its_control_id_and_is_journalled_once(
        self, redis_url, redis_client, message
    ):
        """Same MSH-3, MSH-4 and MSH-10: AA with the same MSA-2, one journal entry; the log
        names the envelope it repeats."""

        async def go():
            handler, _, client = intake(redis_url)
            with capture_logs() as logs:
                first = await handler.receive(message, "peer")
                second = await handler.receive(message, "peer")
            await client.aclose()
            return first, second, logs

        first, second, logs = run(go())
        assert (first.verdict, second.verdict) == (Verdict.ACCEPTED, Verdict.DUPLICATE)
        acks = [read_ack(first.reply), read_ack(second.reply)]
        assert [(a.code, a.control_id) for a in acks] == [("AA", "ING0001")] * 2
        (entry,) = journalled(redis_client)
        (duplicate,) = [e for e in logs if e["event"] == "message.duplicate"]
        assert duplicate["envelope_id"] == entry[b"id"].decode()
        assert duplicate["control_id"] == "ING0001"

    def test_a_duplicate_of_a_message_received_before_the_upgrade_gets_the_stored_ack(
        self, redis_url, redis_client, message
    ):
        """The previous version's record (``pl:dedupe:SRC:HASH``, the ACK sent) still counts."""
        msh = parse(message.decode()).msh
        identity = dedupe_digest(msh.field(3), msh.field(4), "ING0001")
        stored = b"MSH|^~\\&|PASSERELLE||HIS|CHU-RABAT|20260101||ACK^A01^ACK|OLD1|P|2.5.1\rMSA|AA|ING0001\r"
        redis_client.set(keys.legacy_dedupe(ADAPTER.id, identity), stored, ex=60)

        async def go():
            handler, _, client = intake(redis_url)
            outcome = await handler.receive(message, "peer")
            await client.aclose()
            return outcome

        outcome = run(go())
        assert (outcome.verdict, outcome.reply) == (Verdict.DUPLICATE, stored)
        assert journalled(redis_client) == []

    @pytest.mark.parametrize(
        ("payload", "code", "text"),
        [
            pytest.param(b"GET / HTTP/1.1\r\n\r\n", "AE", "MSH", id="not-hl7"),
            pytest.param(
                b"MSH|^~\\&|A|B|C|D|2025||ADT^A01||P|2.5.1", "AE", "MSH-10", id="no-control-id"
            ),
            pytest.param(
                b"MSH|^~\\&|A|B|C|D|2025||ORU^R01|X1|P|2.5.1",
                "AR",
                "no mapping for ORU^R01",
                id="no-mapping",
            ),
            pytest.param(
                b"MSH|^~\\&|A|B|C|D|2025||ADT^A01|X2|P|2.5.1\rMSH|^~\\&|A|B|C|D|2025||ADT^A01|X3|P|2.5.1",
                "AR",
                "more than one message",
                id="two-messages",
            ),
            pytest.param(
                "MSH|^~\\&|A|B|C|D|2025||ADT^A01|X4|P|2.5.1|||||MAR|UNICODE UTF-8\rPID|1||Fès".encode(
                    "latin-1"
                ),
                "AE",
                "not valid utf-8",
                id="bad-bytes",
            ),
        ],
    )
    def test_refusals_are_answered_and_kept_with_their_reason(
        self, redis_url, redis_client, payload, code, text
    ):
        """Unreadable input gets AE, unsupported input AR; both are kept in pl:rejected."""

        async def go():
            handler, _, client = intake(redis_url)
            outcome = await handler.receive(payload, "peer")
            await client.aclose()
            return outcome

        outcome = run(go())
        ack = read_ack(outcome.reply)
        assert ack.code == code
        assert outcome.verdict == {"AE": Verdict.UNREADABLE, "AR": Verdict.REFUSED}[code]
        assert text in ack.text
        ((_, fields),) = redis_client.xrange(keys.REJECTED)
        assert raw_of(fields) == payload
        assert text in fields[b"reason"].decode()

    def test_an_unreachable_journal_gets_ar_never_aa(self, tmp_path, message):
        """When Redis cannot take the message, the sender is told AR so it keeps and resends it."""

        async def go():
            handler, _, client = intake(f"unix://{tmp_path / 'nothing-here.sock'}")
            outcome = await handler.receive(message, "peer")
            await client.aclose()
            return outcome

        outcome = run(go())
        assert outcome.verdict is Verdict.UNAVAILABLE
        ack = read_ack(outcome.reply)
        assert ack.code == "AR"
        assert "journal" in ack.text


HOSPITAL_B = ADAPTER.model_copy(update={"id": "chu-casa-adt", "listen": "127.0.0.1:2576"})


class TestDedupeIsPerAdapter:
    """Issue 8 item 1: the dedupe key is the receiving adapter plus MSH-3, MSH-4 and MSH-10."""

    def test_the_same_msh_3_4_10_on_two_adapters_is_two_messages(self, redis_url, redis_client):
        """Hospital B's message reusing A's MSH-3/4/10 never makes A's real message a duplicate."""
        from_b = adt(patients(1, seed=11)[0], "A08", control_id="SHARED0001").encode()
        from_a = adt(patients(1, seed=12)[0], "A01", control_id="SHARED0001").encode()

        async def go():
            handler_a, _, client_a = intake(redis_url)
            handler_b, _, client_b = intake(redis_url, adapter=HOSPITAL_B)
            replies = [
                (await handler_b.receive(from_b, "b")).reply,
                (await handler_a.receive(from_a, "a")).reply,
            ]
            await client_a.aclose()
            await client_b.aclose()
            return [read_ack(r) for r in replies]

        acks = run(go())
        assert [a.code for a in acks] == ["AA", "AA"]
        assert sorted((f[b"source"], raw_of(f)) for f in journalled(redis_client)) == sorted(
            [(b"chu-casa-adt", from_b), (b"chu-rabat-adt", from_a)]
        )

    def test_a_resend_on_the_same_adapter_is_a_duplicate_of_that_adapters_message(
        self, redis_url, redis_client
    ):
        """A, then B with the same ids, then A again: A's resend repeats A's envelope, not B's."""
        text = adt(patients(1, seed=13)[0], "A01", control_id="SHARED0002").encode()

        async def go():
            handler_a, _, client_a = intake(redis_url)
            handler_b, _, client_b = intake(redis_url, adapter=HOSPITAL_B)
            with capture_logs() as logs:
                replies = [
                    (await handler_a.receive(text, "a")).reply,
                    (await handler_b.receive(text, "b")).reply,
                    (await handler_a.receive(text, "a")).reply,
                    (await handler_b.receive(text, "b")).reply,
                ]
            await client_a.aclose()
            await client_b.aclose()
            return replies, logs

        replies, logs = run(go())
        assert [read_ack(r).code for r in replies] == ["AA"] * 4
        ids = {f[b"source"].decode(): f[b"id"].decode() for f in journalled(redis_client)}
        assert sorted(ids) == ["chu-casa-adt", "chu-rabat-adt"]
        repeats = [
            (e["adapter"], e["envelope_id"]) for e in logs if e["event"] == "message.duplicate"
        ]
        assert repeats == [
            ("chu-rabat-adt", ids["chu-rabat-adt"]),
            ("chu-casa-adt", ids["chu-casa-adt"]),
        ]

    def test_msh_3_and_4_count_with_every_component(self, redis_url, redis_client):
        """Same namespace ID but another universal ID (HD.2) in MSH-4 is another sender."""
        base = adt(patients(1, seed=14)[0], "A01", control_id="HD0001")
        one = base.replace("|CHU-RABAT|", "|CHU-RABAT^2.16.504.1.10^ISO|", 1).encode()
        other = base.replace("|CHU-RABAT|", "|CHU-RABAT^2.16.504.1.99^ISO|", 1).encode()
        assert one != other

        async def go():
            handler, _, client = intake(redis_url)
            codes = [read_ack((await handler.receive(m, "peer")).reply).code for m in (one, other)]
            await client.aclose()
            return codes

        assert run(go()) == ["AA", "AA"]
        assert len(journalled(redis_client)) == 2


class TestSenders:
    """Issue 8 item 1: an adapter's ``senders:`` list refuses a frame claiming another sender."""

    @pytest.fixture(name="rabat_only")
    def fixture_rabat_only(self) -> AdapterSpec:
        return ADAPTER.model_copy(
            update={
                "senders": [
                    Sender(application="HIS", facility="CHU-RABAT"),
                    Sender(facility="2.16.504.1.10"),
                ]
            }
        )

    @pytest.mark.parametrize(
        ("application", "facility"),
        [
            pytest.param("HIS", "CHU-RABAT", id="listed-pair"),
            pytest.param("PACS", "^2.16.504.1.10^ISO", id="listed-universal-id"),
        ],
    )
    def test_a_listed_sender_is_journalled(
        self, redis_url, redis_client, rabat_only, application, facility
    ):
        """MSH-3/MSH-4 matching an entry (by HD.1 or HD.2) is answered AA and journalled."""
        text = adt(
            patients(1, seed=15)[0],
            "A01",
            control_id="SND0001",
            sending_application=application,
            sending_facility="CHU-RABAT",
        ).replace("|CHU-RABAT|", f"|{facility}|", 1)

        async def go():
            handler, _, client = intake(redis_url, adapter=rabat_only)
            reply = (await handler.receive(text.encode(), "peer")).reply
            await client.aclose()
            return read_ack(reply)

        assert run(go()).code == "AA"
        assert len(journalled(redis_client)) == 1
        assert redis_client.xlen(keys.REJECTED) == 0

    def test_another_sender_gets_ar_with_the_reason_and_is_kept(
        self, redis_url, redis_client, rabat_only
    ):
        """MSH-4 naming another hospital: AR, an ERR at MSH-4, kept in pl:rejected, not journalled."""
        text = adt(
            patients(1, seed=16)[0],
            "A01",
            control_id="SND0002",
            sending_application="HIS",
            sending_facility="CHU-CASA",
        ).encode()

        async def go():
            handler, _, client = intake(redis_url, adapter=rabat_only)
            reply = (await handler.receive(text, "peer")).reply
            await client.aclose()
            return reply

        reply = run(go())
        ack = read_ack(reply)
        assert (ack.code, ack.control_id) == ("AR", "SND0002")
        assert "'CHU-CASA'" in ack.text
        assert "chu-rabat-adt" in ack.text
        assert "senders" in ack.text
        segments = reply.decode().split("\r")
        (err,) = [s for s in segments if s.startswith("ERR|")]
        assert err.split("|")[2] == "MSH^1^4"
        assert journalled(redis_client) == []
        ((_, fields),) = redis_client.xrange(keys.REJECTED)
        assert raw_of(fields) == text
        assert fields[b"source"] == b"chu-rabat-adt"
        assert fields[b"reason"].decode() == ack.text

    def test_without_senders_anyone_is_accepted(self, redis_url, redis_client):
        """No senders: list (the default) checks nothing."""
        text = adt(
            patients(1, seed=17)[0], "A01", control_id="SND0003", sending_facility="CHU-CASA"
        ).encode()

        async def go():
            handler, _, client = intake(redis_url)
            reply = (await handler.receive(text, "peer")).reply
            await client.aclose()
            return read_ack(reply)

        assert run(go()).code == "AA"


class TestOversize:
    """Issue 8 item 6: an over-size frame keeps a bounded head, its size and its digest."""

    def test_an_oversize_frame_keeps_its_head_size_and_digest(self, redis_url, redis_client):
        """Over the limit on a real socket: AR; pl:rejected holds 1 KiB, the size and the SHA-256."""
        message = adt(patients(1, seed=18)[0], "A01", control_id="BIG0001")
        payload = (message + "NTE|1||" + "x" * 11_000).encode()
        limit = 8192
        assert limit < len(payload) < 2 * limit

        async def go():
            handler, _, client = intake(redis_url, rejected_head_bytes=1024)
            server = mllp_server("127.0.0.1", 0, handler, max_bytes=limit)
            await server.start()
            try:
                with MllpClient("127.0.0.1", server.port, timeout=10) as sender:
                    reply = await asyncio.to_thread(sender.send, payload)
            finally:
                await server.stop()
                await client.aclose()
            return read_ack(reply)

        ack = run(go())
        assert (ack.code, ack.control_id) == ("AR", "BIG0001")
        assert f"{len(payload)} bytes, over the limit of {limit} bytes" in ack.text
        assert journalled(redis_client) == []
        ((_, fields),) = redis_client.xrange(keys.REJECTED)
        digest = hashlib.sha256(payload).hexdigest()
        assert raw_of(fields) == payload[:1024]
        assert (fields[b"size"], fields[b"kept"]) == (str(len(payload)).encode(), b"1024")
        assert fields[b"sha256"] == digest.encode()
        assert f"kept: the first 1024 of {len(payload)} bytes, sha256 {digest}" in (
            fields[b"reason"].decode()
        )
