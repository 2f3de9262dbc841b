"""The inbound edge on a real Redis: journal first, then ACK; refusals kept; duplicates answered once."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio

from broker import keys
from broker.ack import read_ack
from broker.adapters.spec import AdapterSpec
from broker.dispatch import AsyncKicker
from broker.ingest import HL7v2Intake, partition_key
from broker.journal import Journal
from broker.parsing.hl7v2 import parse
from broker.synthetic import adt, patients

ADAPTER = AdapterSpec(
    id="chu-rabat-adt",
    name="CHU Rabat",
    direction="inbound",
    transport="mllp",
    listen="127.0.0.1:2575",
)


class _NoCelery:
    """Records kicks instead of publishing them (the drain itself is tested on the real stack)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, list[int]]] = []

    def send_task(
        self, name: str, args: list[int], queue: str, countdown: float | None = None
    ) -> None:
        self.sent.append((name, args))


def intake(
    url: str, supports=lambda event, version, adapter: event.startswith("ADT")
) -> tuple[HL7v2Intake, _NoCelery, redis.asyncio.Redis]:
    client = redis.asyncio.Redis.from_url(url)
    celery = _NoCelery()
    handler = HL7v2Intake(
        ADAPTER, Journal(client, dedupe_window_s=60), supports, 8, AsyncKicker(celery, client)
    )
    return handler, celery, client


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
            ack = read_ack(await handler(message, "peer"))
            await client.aclose()
            return ack, celery

        ack, celery = run(go())
        assert (ack.code, ack.control_id) == ("AA", "ING0001")
        partition = keys.partition_of(partition_key(parse(message.decode()), ADAPTER), 8)
        entries = redis_client.xrange(keys.inbound(partition))
        assert [e[1][b"raw"] for e in entries] == [message]
        assert celery.sent == [("passerelle.drain_inbound", [partition])]

    def test_a_duplicate_gets_the_first_ack_and_is_journalled_once(
        self, redis_url, redis_client, message
    ):
        """Same MSH-3, MSH-4 and MSH-10: byte-identical ACK, one journal entry."""

        async def go():
            handler, _, client = intake(redis_url)
            first = await handler(message, "peer")
            second = await handler(message, "peer")
            await client.aclose()
            return first, second

        first, second = run(go())
        assert first == second
        total = sum(redis_client.xlen(keys.inbound(p)) for p in range(8))
        assert total == 1

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
            reply = await handler(payload, "peer")
            await client.aclose()
            return read_ack(reply)

        ack = run(go())
        assert ack.code == code
        assert text in ack.text
        ((_, fields),) = redis_client.xrange(keys.REJECTED)
        assert fields[b"raw"] == payload
        assert text in fields[b"reason"].decode()

    def test_an_unreachable_journal_gets_ar_never_aa(self, tmp_path, message):
        """When Redis cannot take the message, the sender is told AR so it keeps and resends it."""

        async def go():
            handler, _, client = intake(f"unix://{tmp_path / 'nothing-here.sock'}")
            reply = await handler(message, "peer")
            await client.aclose()
            return read_ack(reply)

        ack = run(go())
        assert ack.code == "AR"
        assert "journal" in ack.text
