"""Tests of the simulated hospital MLLP sender against a tiny echo-ACK server."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Awaitable, Callable

import pytest

from broker.adapters.mllp import MllpServer
from passerelle_demo.peers.sender import SendResult, ack_code, patient_key, send_messages
from passerelle_demo.synthetic import stream

Handler = Callable[[bytes, str], Awaitable[bytes | None]]


def _ack(message: bytes, code: str = "AA") -> bytes:
    """An ACK echoing MSH-10 of ``message`` in MSA-2."""
    control_id = message.split(b"\r")[0].split(b"|")[9]
    return (
        b"MSH|^~\\&|BROKER|MA|HIS|CHU|20250101||ACK|1|P|2.5.1\rMSA|"
        + code.encode()
        + b"|"
        + control_id
    )


def _run(handler: Handler, messages: list[str], **options: object) -> SendResult:
    async def main() -> SendResult:
        server = MllpServer("127.0.0.1", 0, handler)
        await server.start()
        try:
            return await send_messages("127.0.0.1", server.port, messages, **options)  # type: ignore[arg-type]
        finally:
            await server.stop()

    return asyncio.run(main())


def _messages(n: int) -> list[str]:
    return [er7 for _, _, er7 in stream(n, seed=7, mix={"ADT^A01": 1, "ORU^R01": 1}, n_obx=2)]


class TestSendMessages:
    def test_every_message_is_acked_and_timed(self) -> None:
        """Each message is sent once, its MSA-1 counted and its ACK latency recorded."""

        async def handler(payload: bytes, peer: str) -> bytes:
            return _ack(payload)

        result = _run(handler, _messages(40), connections=4)
        assert result.sent == 40
        assert result.acked_by_code == {"AA": 40}
        assert len(result.latencies) == 40
        assert all(o.code == "AA" and o.attempts == 1 for o in result.outcomes)
        assert [o.index for o in result.outcomes] == list(range(40))
        assert result.percentile(50) <= result.percentile(100)

    def test_codes_are_counted_per_kind(self) -> None:
        """AE and AR replies are counted under their own code."""
        codes = iter(["AA", "AE", "AR"] * 10)

        async def handler(payload: bytes, peer: str) -> bytes:
            return _ack(payload, next(codes))

        result = _run(handler, _messages(30), connections=1)
        assert result.acked_by_code == {"AA": 10, "AE": 10, "AR": 10}

    def test_waits_for_each_ack_before_the_next(self) -> None:
        """On one connection at most one message is outstanding at any time."""
        outstanding = 0
        most = 0

        async def handler(payload: bytes, peer: str) -> bytes:
            nonlocal outstanding, most
            outstanding += 1
            most = max(most, outstanding)
            await asyncio.sleep(0)
            outstanding -= 1
            return _ack(payload)

        _run(handler, _messages(20), connections=1)
        assert most == 1

    def test_key_keeps_one_patients_messages_in_order(self) -> None:
        """With key=patient_key each patient's messages arrive in the order given."""
        seen: dict[str, list[bytes]] = defaultdict(list)

        async def handler(payload: bytes, peer: str) -> bytes:
            seen[patient_key(payload)].append(payload.split(b"\r")[0].split(b"|")[9])
            await asyncio.sleep(0)
            return _ack(payload)

        messages = _messages(60)
        _run(handler, messages, connections=4, key=patient_key)
        expected: dict[str, list[bytes]] = defaultdict(list)
        for m in messages:
            raw = m.encode()
            expected[patient_key(raw)].append(raw.split(b"\r")[0].split(b"|")[9])
        assert seen == expected

    def test_no_reply_is_a_timeout_error(self) -> None:
        """A message that gets no ACK within the timeout is counted as a timeout."""

        async def handler(payload: bytes, peer: str) -> None:
            return None

        result = _run(handler, _messages(2), connections=1, timeout=0.2)
        assert result.errors_by_kind == {"timeout": 2}
        assert result.acked_by_code == {}
        assert all(o.code is None for o in result.outcomes)

    def test_retries_resend_after_a_missing_ack(self) -> None:
        """With retries, a message whose ACK never came is sent again with the same MSH-10."""
        calls: list[bytes] = []

        async def handler(payload: bytes, peer: str) -> bytes | None:
            calls.append(payload)
            return None if len(calls) == 1 else _ack(payload)

        result = _run(handler, _messages(1), connections=1, timeout=0.2, retries=2)
        assert result.acked_by_code == {"AA": 1}
        assert result.outcomes[0].attempts == 2
        assert calls[0] == calls[1]

    def test_unreachable_peer_is_a_connection_error(self) -> None:
        """Nothing listening: every message is a connection error, none acknowledged."""

        async def main() -> SendResult:
            server = MllpServer("127.0.0.1", 0, lambda p, q: asyncio.sleep(0, None))
            await server.start()
            port = server.port
            await server.stop()
            return await send_messages("127.0.0.1", port, _messages(3), timeout=1)

        result = asyncio.run(main())
        assert result.errors_by_kind == {"connection": 3}

    def test_bad_arguments_are_refused(self) -> None:
        """connections < 1 and a non-positive rate are ValueErrors."""
        with pytest.raises(ValueError, match="connections"):
            asyncio.run(send_messages("127.0.0.1", 1, [], connections=0))
        with pytest.raises(ValueError, match="rate"):
            asyncio.run(send_messages("127.0.0.1", 1, [], rate=0))


class TestAckCode:
    @pytest.mark.parametrize(
        ("reply", "code"),
        [
            pytest.param(b"MSH|^~\\&|A\rMSA|AA|1", "AA", id="aa"),
            pytest.param(b"MSH|^~\\&|A\rMSA|CE|1\rERR|", "CE", id="enhanced"),
            pytest.param(b"MSH#^~\\&#A\rMSA#AR#1", "AR", id="other-separator"),
            pytest.param(b"MSH|^~\\&|A", "", id="no-msa"),
            pytest.param(b"garbage", "", id="not-hl7"),
        ],
    )
    def test_reads_msa1(self, reply: bytes, code: str) -> None:
        """MSA-1 is read with the reply's own field separator; no MSA gives ''."""
        assert ack_code(reply) == code


class TestPatientKey:
    def test_first_pid3_identifier(self) -> None:
        """The key is PID-3.1 of the first repetition (the IPP)."""
        message = _messages(1)[0].encode()
        assert patient_key(message).startswith("IPP")
