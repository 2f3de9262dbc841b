"""Promises of the outbound mapping: canonical → ADT v2.5.1, preserving meaning on a round trip."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from broker.errors import NoMappingError
from broker.mapping import MapContext, MappingSet
from broker.parsing.hl7v2 import decode, parse

SAMPLES = Path(__file__).resolve().parents[1] / "samples" / "hl7v2"
CTX = MapContext("env", "chu-rabat", received_at=datetime(2024, 3, 15, 10, 30, 5, tzinfo=UTC))


@pytest.mark.parametrize(
    "name", ["adt_a01_v251.hl7", "adt_a01_v23.hl7", "adt_a04.hl7", "adt_a08.hl7"]
)
def test_round_trip_preserves_pid_and_visit(mappings: MappingSet, name: str) -> None:
    """Inbound ADT → canonical → ER7 keeps PID-3, PID-5, PID-7, PID-8 and PV1-19 in meaning."""
    inbound = parse(decode((SAMPLES / name).read_bytes()))
    bundle = mappings.map_hl7v2(inbound, CTX).bundle
    text = mappings.render_hl7v2(
        bundle,
        control_id=inbound.control_id,
        receiving_application="DPI",
        receiving_facility="CHUIS",
    )
    out = parse(text)
    assert "\n" not in text
    assert text.endswith("\r")
    assert out.version == "2.5.1"
    assert out.event == inbound.event
    assert out.control_id == inbound.control_id
    assert out.msh.value(5) == "DPI"
    assert out.msh.value(6) == "CHUIS"
    for path in (
        "PID-3(*).1",
        "PID-3(*).4",
        "PID-3(*).5",
        "PID-5(*).1",
        "PID-5(*).2",
        "PID-7",
        "PID-8",
        "PV1-19.1",
        "PV1-2",
        "PV1-7.1",
    ):
        assert out.get_all(path) == inbound.get_all(path), path


def test_unknown_event(mappings: MappingSet) -> None:
    """A Bundle whose event has no outbound mapping (A05 pre-admit) is a NoMappingError."""
    adt = parse(decode((SAMPLES / "adt_a04.hl7").read_bytes()))
    bundle = mappings.map_hl7v2(adt, CTX).bundle
    bundle["entry"][0]["resource"]["eventCoding"]["code"] = "A05"
    with pytest.raises(NoMappingError, match="A05"):
        mappings.render_hl7v2(
            bundle, control_id="X", receiving_application="A", receiving_facility="B"
        )
