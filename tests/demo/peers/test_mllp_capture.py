"""The MLLP capture endpoint used as the legacy lab system (synthetic data only)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker.ack import read_ack
from broker.adapters.mllp import AsyncMllpClient, MllpClient, MllpTimeout
from passerelle_demo.peers.mllp_capture import MllpCapture


def oru(control_id: str) -> bytes:
    """A synthetic ORU^R01 for a patient in Marrakech."""
    return (
        "MSH|^~\\&|PASSERELLE|GHT|LABSYS|LABO|20240315101500||ORU^R01^ORU_R01|"
        f"{control_id}|P|2.5.1\r"
        "PID|1||MA778899^^^CHU-MARRAKECH||Ait Benhaddou^Khadija||19920718|F\r"
        "OBX|1|NM|2345-7^Glucose^LN||5.4|mmol/L|||||F\r"
    ).encode()


@pytest.fixture(name="capture")
def fixture_capture(tmp_path: Path) -> Iterator[MllpCapture]:
    """A capture endpoint running in a background thread, journalling to a temp file."""
    capture = MllpCapture(journal=tmp_path / "capture.jsonl")
    capture.start_in_thread()
    yield capture
    capture.stop()


class TestMllpCapture:
    def test_ack_mode_answers_aa_and_records(self, capture: MllpCapture) -> None:
        """In ack mode each message is recorded and answered AA with MSA-2 = its MSH-10."""
        with MllpClient(capture.host, capture.port, timeout=5) as client:
            replies = [read_ack(client.send(oru(cid))) for cid in ("R1", "R2", "R1")]
        assert [(r.code, r.control_id) for r in replies] == [
            ("AA", "R1"),
            ("AA", "R2"),
            ("AA", "R1"),
        ]
        assert capture.control_ids() == ["R1", "R2", "R1"]
        assert capture.count == 3
        assert capture.unique_count == 2
        assert capture.messages[0].text == oru("R1").decode()

    @pytest.mark.parametrize(
        ("mode", "code"),
        [pytest.param("error", "AE", id="error"), pytest.param("reject", "AR", id="reject")],
    )
    def test_error_modes(self, capture: MllpCapture, mode: str, code: str) -> None:
        """error answers AE and reject answers AR, with an ERR segment; both still record."""
        capture.mode = mode  # type: ignore[assignment]
        with MllpClient(capture.host, capture.port, timeout=5) as client:
            reply = read_ack(client.send(oru("E1")))
        assert (reply.code, reply.control_id, reply.error_code) == (code, "E1", "207")
        assert capture.count == 1

    def test_silent_mode_makes_the_sender_time_out(self, capture: MllpCapture) -> None:
        """silent answers nothing; switching back to ack at run time answers again."""
        capture.mode = "silent"
        with MllpClient(capture.host, capture.port, timeout=0.2) as client:
            with pytest.raises(MllpTimeout):
                client.send(oru("S1"))
            capture.mode = "ack"
            assert read_ack(client.send(oru("S2"))).code == "AA"
        assert capture.control_ids() == ["S1", "S2"]

    def test_only_messages_answered_aa_count_as_accepted(self, capture: MllpCapture) -> None:
        """Each record keeps its answer: AA is accepted; AE, AR and no answer are refused."""
        with MllpClient(capture.host, capture.port, timeout=0.2) as client:
            for mode, cid in (("error", "M1"), ("reject", "M2"), ("ack", "M3")):
                capture.mode = mode  # type: ignore[assignment]
                client.send(oru(cid))
            capture.mode = "silent"
            with pytest.raises(MllpTimeout):
                client.send(oru("M4"))
        assert [m.answer for m in capture.messages] == ["AE", "AR", "AA", None]
        assert capture.accepted_ids() == ["M3"]
        assert capture.refused_ids() == ["M1", "M2", "M4"]
        assert [m.control_id for m in capture.accepted] == ["M3"]
        assert [m.control_id for m in capture.refused] == ["M1", "M2", "M4"]
        assert capture.control_ids() == ["M1", "M2", "M3", "M4"]

    def test_journal_holds_ids_and_times_not_bodies(
        self, capture: MllpCapture, tmp_path: Path
    ) -> None:
        """The journal file gets one JSON line per message, without the message body."""
        with MllpClient(capture.host, capture.port, timeout=5) as client:
            client.send(oru("J1"))
            client.send(oru("J2"))
        capture.stop()
        lines = (tmp_path / "capture.jsonl").read_text(encoding="utf-8").splitlines()
        records = [json.loads(line) for line in lines]
        assert [r["control_id"] for r in records] == ["J1", "J2"]
        assert all(set(r) == {"control_id", "received_at"} for r in records)
        assert "Khadija" not in "".join(lines)

    def test_non_hl7_payload_is_rejected(self, capture: MllpCapture) -> None:
        """Bytes that are not HL7 are recorded without a control id and answered AR."""
        with MllpClient(capture.host, capture.port, timeout=5) as client:
            reply = read_ack(client.send(b"hello, not HL7"))
        assert (reply.code, reply.control_id) == ("AR", "")
        assert capture.count == 1
        assert capture.unique_count == 0

    def test_wait_for_and_clear(self, capture: MllpCapture) -> None:
        """wait_for returns once enough messages arrived; clear forgets them."""
        with MllpClient(capture.host, capture.port, timeout=5) as client:
            client.send(oru("W1"))
        assert capture.wait_for(1, timeout=5)
        capture.clear()
        assert (capture.count, capture.unique_count) == (0, 0)

    def test_runs_inside_an_event_loop(self) -> None:
        """start()/aclose() run the capture in the caller's event loop."""

        async def scenario() -> str:
            capture = MllpCapture()
            await capture.start()
            try:
                async with AsyncMllpClient(capture.host, capture.port, timeout=5) as client:
                    return read_ack(await client.send(oru("L1"))).control_id
            finally:
                await capture.aclose()

        assert asyncio.run(scenario()) == "L1"

    def test_unknown_mode_is_refused(self) -> None:
        """Setting a mode that does not exist is a ValueError."""
        capture = MllpCapture()
        with pytest.raises(ValueError, match="capture mode"):
            capture.mode = "drop"  # type: ignore[assignment]
