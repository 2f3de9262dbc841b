"""Promises of the test oracle tests/oracles/mllp.py: frames counted by the MLLP rules, by hand."""

from __future__ import annotations

import pytest

from tests.oracles.mllp import ack_code, acknowledged_id, control_id, count_frames, payloads

SB, EB, CR = b"\x0b", b"\x1c", b"\r"


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        pytest.param(b"", [], id="nothing"),
        pytest.param(SB + b"MSH|x" + EB + CR, [b"MSH|x"], id="one-frame"),
        pytest.param(SB + b"A" + EB + CR + SB + b"B" + EB + CR, [b"A", b"B"], id="two-frames"),
        pytest.param(b"junk" + SB + b"A" + EB + CR + b"tail", [b"A"], id="garbage-around"),
        pytest.param(EB + CR + b"A" + EB + CR, [], id="end-pairs-without-start"),
        pytest.param(SB + b"A" + SB + b"B" + EB + CR, [b"B"], id="nested-start-abandons-first"),
        pytest.param(SB + b"A" + EB + b"B" + EB + CR, [b"A" + EB + b"B"], id="eb-without-cr"),
        pytest.param(SB + b"A" + EB + EB + CR, [b"A" + EB], id="eb-eb-cr"),
        pytest.param(SB + b"A\r\rB" + EB, [], id="truncated-before-cr"),
        pytest.param(SB + b"A" + EB + CR + SB + b"B", [b"A"], id="second-truncated"),
        pytest.param(SB + EB + CR, [b""], id="empty-payload"),
        pytest.param(SB + CR + EB + CR, [b"\r"], id="cr-only-payload"),
    ],
)
def test_frames_are_counted_by_the_block_format(data: bytes, expected: list[bytes]) -> None:
    """<SB> payload <EB><CR> is a frame; garbage, nested starts and truncation as documented."""
    assert payloads(data) == expected
    assert count_frames(data) == len(expected)


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        pytest.param(b"MSH|^~\\&|A|B\rMSA|AA|X1\r", "AA", id="aa"),
        pytest.param(b"MSH#^~\\&#A\rMSA#AR#X1#too big\rERR#\r", "AR", id="other-separator"),
        pytest.param(b"MSH|^~\\&|A\r", None, id="no-msa"),
        pytest.param(b"garbage", None, id="not-hl7"),
    ],
)
def test_ack_code_reads_msa_1(payload: bytes, code: str | None) -> None:
    """MSA-1 is read with the separator MSH-1 declares; no MSA is None."""
    assert ack_code(payload) == code


def test_control_ids_are_msh_10_and_msa_2() -> None:
    """MSH-10 of a message and MSA-2 of its ACK are read by field position."""
    assert control_id(b"MSH|^~\\&|A|B|C|D|20240101||ADT^A01|CTRL42|P|2.5.1\rPID|1\r") == "CTRL42"
    assert acknowledged_id(b"MSH|^~\\&|A\rMSA|AA|CTRL42\r") == "CTRL42"
    assert control_id(b"MSH|^~\\&|A") is None
