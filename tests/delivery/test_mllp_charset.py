"""Promise: the bytes an MLLP subscriber receives decode with the charset their MSH-18 names.

MllpSender sends to the MLLP capture peer over loopback; the peer keeps the raw payloads and the
test reads MSH-18 from those bytes itself (split on CR and "|"), maps it with its own copy of
HL7 table 0211 and decodes: accented French and Arabic text must come out intact.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from broker.adapters.spec import AdapterSpec
from broker.delivery.send import MllpSender
from broker.envelope import Envelope
from broker.mapping import MapContext, MappingSet
from broker.parsing.hl7v2 import decode, parse
from passerelle_demo.peers.mllp_capture import MllpCapture

ROOT = Path(__file__).resolve().parents[2]
ORU = ROOT / "mappings/tests/oru_r01_value_types_v251.hl7"
ARABIC = "العمراني"
ACCENTED = "Valeur vérifiée sur un second tube."
# HL7 table 0211 codes -> Python codecs, written here from the standard (not the product's table).
TABLE_0211 = {"UNICODE UTF-8": "utf-8", "UNICODE": "utf-8", "8859/1": "latin-1"}


class _RawCapture(MllpCapture):
    """The capture peer, also keeping each payload's bytes as they arrived."""

    def __init__(self, journal: Path) -> None:
        super().__init__(journal=journal)
        self.raw: list[bytes] = []

    async def _handle(self, payload: bytes, peer: str) -> bytes | None:
        self.raw.append(payload)
        return await super()._handle(payload, peer)


@pytest.fixture(name="capture")
def fixture_capture(tmp_path: Path) -> Iterator[_RawCapture]:
    capture = _RawCapture(tmp_path / "capture.jsonl")
    capture.start_in_thread()
    yield capture
    capture.stop()


def _envelope(mappings: MappingSet, *, arabic: bool) -> Envelope:
    text = decode(ORU.read_bytes())
    assert ARABIC in text
    assert ACCENTED in text
    if not arabic:  # latin-1 cannot carry Arabic: drop the Arabic name repetition
        text = text.replace("~العمراني^فاطمة^^^^^L", "")
    now = datetime(2024, 3, 18, tzinfo=UTC)
    result = mappings.map_hl7v2(parse(text), MapContext("env-1", "lis-chuis", received_at=now))
    return Envelope(
        id="env-1",
        source="lis-chuis",
        content_type="application/hl7-v2",
        received_at=now,
        control_id="LAB00310",
        bundle=result.bundle,
    )


@pytest.mark.parametrize(
    ("charset", "version", "code"),
    [
        ("utf-8", "2.5.1", "UNICODE UTF-8"),
        ("utf-8", "2.3", "UNICODE"),
        ("latin-1", "2.5.1", "8859/1"),
        ("latin-1", "2.3", "8859/1"),
    ],
)
def test_received_bytes_decode_with_the_charset_msh_18_names(
    capture: _RawCapture, charset: str, version: str, code: str
) -> None:
    """The subscriber's bytes name their charset in MSH-18 and decode to the accented/Arabic text."""
    mappings = MappingSet.load(ROOT / "mappings")
    adapter = AdapterSpec.model_validate(
        {
            "id": "lab-legacy",
            "name": "LAB",
            "direction": "outbound",
            "transport": "mllp",
            "connect": f"{capture.host}:{capture.port}",
            "charset": charset,
            "hl7_version": version,
            "subscribe": {"events": ["ORU^*"]},
        }
    )
    sender = MllpSender(adapter, lambda: mappings)
    try:
        assert sender.send(_envelope(mappings, arabic=charset == "utf-8")) == "AA"
    finally:
        sender.close()
    (raw,) = capture.raw
    msh = raw.split(b"\r")[0].split(b"|")
    assert msh[11] == version.encode()  # MSH-12
    assert msh[17] == code.encode()  # MSH-18
    text = raw.decode(TABLE_0211[msh[17].decode("ascii")])
    assert ACCENTED in text
    assert "Hémocultures négatives à 48 h." in text
    assert "Date du premier prélèvement" in text
    if charset == "utf-8" and version != "2.3":  # v2.3's PID-5 does not repeat: one name sent
        assert ARABIC in text
