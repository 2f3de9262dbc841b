"""An MLLP frame counter for tests, written from the spec and not from the broker's decoder.

MLLP release 2 (HL7 v2.5.1 Appendix C, "Minimal Lower Layer Protocol", C.4.3 block format): a
block is ``<SB> dddd <EB><CR>``, with ``<SB>`` = 0x0B (vertical tab), ``<EB>`` = 0x1C (file
separator) and ``<CR>`` = 0x0D; ``dddd`` is the HL7 message and "cannot contain" ``<SB>`` or the
``<EB><CR>`` pair. The spec does not say what a receiver does with bytes that are not a block.
What this counter counts, on the whole byte string at once:

- a complete frame is ``0x0B``, then any bytes that contain no ``0x0B``, then the first
  ``0x1C 0x0D`` after it;
- garbage (bytes outside such a frame, including a lone ``0x1C 0x0D``) counts for nothing;
- a start byte inside an unfinished frame (a "nested" start) abandons the unfinished one: only
  the last ``0x0B`` before an end pair opens a frame, because a sender that starts again never
  finishes the first;
- ``0x1C`` not followed by ``0x0D`` is payload;
- a truncated frame (a start byte without an end pair before the data ends) is not a frame.

It deliberately imports nothing from ``broker``: it is the oracle the listener is judged by.
"""

from __future__ import annotations

import re

__all__ = ["ack_code", "acknowledged_id", "control_id", "count_frames", "frame", "payloads"]

# One regular expression, small enough to check by eye against the rules above.
_FRAME = re.compile(rb"\x0b([^\x0b]*?)\x1c\r", re.DOTALL)


def frame(payload: bytes) -> bytes:
    """``payload`` as one block: ``<SB> payload <EB><CR>``."""
    return b"\x0b" + payload + b"\x1c\r"


def payloads(data: bytes) -> list[bytes]:
    """The payloads of the complete frames in ``data``, in order."""
    return [m.group(1) for m in _FRAME.finditer(data)]


def count_frames(data: bytes) -> int:
    """How many complete frames ``data`` holds (see the module docstring for the rules)."""
    return len(payloads(data))


def _fields(payload: bytes, name: str) -> list[str] | None:
    """The fields of the first segment ``name``, split on the separator MSH-1 declares.

    HL7 v2.5.1 ch. 2: segments end with ``<CR>`` (2.5.4); MSH-1 is the field separator, the
    character after ``MSH`` (2.14.9.1). For MSH itself, index ``n`` is MSH-``n + 1``.
    """
    text = payload.decode("latin-1")
    if not text.startswith("MSH") or len(text) < 4:
        return None
    separator = text[3]
    for segment in text.split("\r"):
        fields = segment.split(separator)
        if fields[0] == name:
            return fields
    return None


def ack_code(payload: bytes) -> str | None:
    """MSA-1, the acknowledgment code (v2.5.1 2.14.8.1), of an ACK; ``None`` without MSA."""
    fields = _fields(payload, "MSA")
    return fields[1] if fields is not None and len(fields) > 1 else None


def acknowledged_id(payload: bytes) -> str | None:
    """MSA-2, the control id of the message acknowledged (v2.5.1 2.14.8.2); ``None`` without."""
    fields = _fields(payload, "MSA")
    return fields[2] if fields is not None and len(fields) > 2 else None


def control_id(payload: bytes) -> str | None:
    """MSH-10, the message control id (v2.5.1 2.14.9.10); ``None`` when there is none."""
    fields = _fields(payload, "MSH")
    return fields[9] if fields is not None and len(fields) > 9 else None
