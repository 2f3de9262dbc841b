"""HL7 v2 acknowledgments: build them on the hot path from strings, and read the ones we receive.

An ACK is MSH, MSA and, for an error, ERR (v2.5.1 §2.9 "message processing rules" and §2.14
"ACK message"). Original mode uses AA/AE/AR, enhanced mode's accept acknowledgment CA/CE/CR
(§2.9.3). hl7apy would cost milliseconds per ACK (ARCHITECTURE §5), so ACKs are joined from
strings here and ``tests/test_ack.py`` proves hl7apy accepts them for v2.3 to v2.5.1.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from broker.envelope import new_id
from broker.errors import HL7v2ParseError
from broker.parsing.hl7v2 import DEFAULT, Delimiters, Message, Segment, escape, parse_path

__all__ = [
    "ACK_CODES",
    "ERROR_CODES",
    "AckReply",
    "build_ack",
    "read_ack",
    "should_acknowledge",
]

ACK_CODES: Final = frozenset({"AA", "AE", "AR", "CA", "CE", "CR"})
"""HL7 table 0008: original mode (AA/AE/AR) and enhanced accept (CA/CE/CR) codes."""

ERROR_CODES: Final[dict[str, str]] = {
    "0": "Message accepted",
    "100": "Segment sequence error",
    "101": "Required field missing",
    "102": "Data type error",
    "103": "Table value not found",
    "200": "Unsupported message type",
    "201": "Unsupported event code",
    "202": "Unsupported processing id",
    "203": "Unsupported version id",
    "204": "Unknown key identifier",
    "205": "Duplicate key identifier",
    "206": "Application record locked",
    "207": "Application internal error",
}
"""HL7 table 0357 (message error condition codes), used in ERR-3 (v2.5+) and ERR-1.4."""

_POSITIVE: Final = frozenset({"AA", "CA"})
_DEFAULT_VERSION: Final = "2.5.1"
_DEFAULT_ERROR: Final = "207"
_SEGMENT_SPLIT = re.compile(r"\r\n|\r|\n")


def _version_tuple(version: str) -> tuple[int, ...]:
    parts = []
    for part in version.strip().split("."):
        if not part.isdigit():
            break
        parts.append(int(part))
    return tuple(parts)


def _error_location(location: str | None, delims: Delimiters) -> list[str]:
    # ERL (v2.5.1 §2.A.26) and ELD (v2.3 ERR-1): segment ID, sequence, field position, ...
    if not location:
        return []
    try:
        path = parse_path(location)
    except ValueError:
        return []
    parts = [path.segment, str(path.segment_index or 1), str(path.field)]
    if path.component is not None:
        parts += [str(path.repetition or 1), str(path.component)]
        if path.sub is not None:
            parts.append(str(path.sub))
    return parts


def build_ack(
    code: str,
    request: Message | None,
    *,
    text: str = "",
    error_code: str | None = None,
    error_location: str | None = None,
    control_id: str | None = None,
    now: datetime | None = None,
    sending_application: str = "PASSERELLE",
    sending_facility: str = "",
) -> str:
    """Build the ACK answering ``request`` as ER7 text, segments ending in CR, without framing.

    Args:
        code: the MSA-1 acknowledgment code (table 0008): AA, AE, AR, CA, CE or CR.
        request: the message being answered; ``None`` when the bytes were not HL7 at all (the
            ACK is then v2.5.1 with an empty MSA-2).
        text: a human-readable reason, written escaped in MSA-3 and, for v2.5+, ERR-8.
        error_code: the table 0357 code for an error ACK; defaults to 207.
        error_location: the path of the faulty element (``PID-7``), written as ERR-2 (v2.5+)
            or ERR-1 (earlier); the value itself is never written.
        control_id: our MSH-10; a new id when omitted.
        now: MSH-7; the current local time when omitted.
        sending_application: our MSH-3 when the request named no MSH-5.
        sending_facility: our MSH-4 when the request named no MSH-6.

    Returns:
        The ACK, e.g. ``MSH|^~\\&|LAB|CHU|PASSERELLE||…|ACK^A01^ACK|…\\rMSA|AA|MSG0001\\r``.

    Raises:
        ValueError: ``code`` is not in table 0008.
    """
    if code not in ACK_CODES:
        msg = f"{code!r} is not an HL7 acknowledgment code; expected one of {sorted(ACK_CODES)}"
        raise ValueError(msg)
    d = request.delims if request is not None else DEFAULT
    f = d.field
    if request is not None:
        msh = request.msh
        # The ACK goes back where the request came from: their MSH-3/4 become our MSH-5/6.
        ours_app = msh.field(5) or escape(sending_application, d)
        ours_fac = msh.field(6) or escape(sending_facility, d)
        their_app, their_fac = msh.field(3), msh.field(4)
        trigger = request.trigger_event
        processing = msh.field(11) or "P"
        version_field = msh.field(12) or _DEFAULT_VERSION
        version = request.version or _DEFAULT_VERSION
        answered = msh.field(10)
    else:
        ours_app, ours_fac = escape(sending_application, d), escape(sending_facility, d)
        their_app = their_fac = trigger = answered = ""
        processing, version_field = "P", _DEFAULT_VERSION
        version = _DEFAULT_VERSION
    numeric = _version_tuple(version)
    # MSH-9.3 (message structure) exists from v2.3.1 on (v2.5.1 §2.14.9.9).
    msg_type = f"ACK{d.component}{escape(trigger, d)}"
    if numeric >= (2, 3, 1):
        msg_type += f"{d.component}ACK"
    # UTC with its offset: a valid DTM everywhere, and no local-zone lookup per ACK.
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%d%H%M%S%z")
    msh_line = f.join(
        [
            "MSH",
            d.msh2,
            ours_app,
            ours_fac,
            their_app,
            their_fac,
            stamp,
            "",
            msg_type,
            escape(control_id, d) if control_id else new_id()[:20],
            processing,
            version_field,
        ]
    )
    msa = ["MSA", code, answered]
    if text:
        msa.append(escape(text, d))
    segments = [msh_line, f.join(msa)]
    if code not in _POSITIVE:
        segments.append(_err_segment(d, numeric, text, error_code, error_location))
    return "\r".join(segments) + "\r"


def _err_segment(
    d: Delimiters,
    version: tuple[int, ...],
    text: str,
    error_code: str | None,
    location: str | None,
) -> str:
    code = error_code or _DEFAULT_ERROR
    description = ERROR_CODES.get(code, "")
    where = _error_location(location, d)
    if version >= (2, 5):
        # ERR-2 location (ERL), ERR-3 HL7 error code (CWE, table 0357), ERR-4 severity,
        # ERR-8 user message (v2.5.1 §2.15.5).
        erl = d.component.join(escape(p, d) for p in where)
        hl7_code = d.component.join([escape(code, d), description, "HL70357"])
        fields = ["ERR", "", erl, hl7_code, "E"]
        if text:
            fields += ["", "", "", escape(text, d)]
        return d.field.join(fields)
    # Before v2.5 the only field is ERR-1 (ELD): segment^sequence^field^code as a CE whose
    # components are written as subcomponents (v2.4 §2.16.5.1).
    eld = [*where[:3], "", "", ""][:3]
    ce = d.subcomponent.join([escape(code, d), description, "HL70357"])
    return d.field.join(["ERR", d.component.join([*eld, ce])])


@dataclass(frozen=True, slots=True)
class AckReply:
    """What a receiver answered.

    Attributes:
        code: MSA-1 (AA, AE, AR, CA, CE, CR).
        control_id: MSA-2, the control id of the message being acknowledged.
        text: MSA-3, unescaped (``""`` when absent).
        error_code: ERR-3.1 (v2.5+) or ERR-1.4.1 (earlier), when an ERR segment is present.
    """

    code: str
    control_id: str
    text: str
    error_code: str | None

    @property
    def accepted(self) -> bool:
        """Whether the receiver accepted the message (AA or CA)."""
        return self.code in _POSITIVE


def read_ack(payload: bytes | str, charset: str = "utf-8") -> AckReply:
    """Read an acknowledgment received from a peer: MSA-1, MSA-2, MSA-3 and the ERR code.

    Lenient by design: a peer's ACK is read even when its MSH is incomplete.

    Args:
        payload: the reply frame's payload.
        charset: how to decode bytes; undecodable bytes become U+FFFD (only MSA and ERR are read).

    Raises:
        HL7v2ParseError: the reply holds no MSA segment or MSA-1 is empty.
    """
    text = payload.decode(charset, "replace") if isinstance(payload, bytes) else payload
    lines = _SEGMENT_SPLIT.split(text.lstrip("\ufeff \t\r\n"))
    delims = DEFAULT
    if lines and lines[0].startswith("MSH") and len(lines[0]) >= 8:
        sep = lines[0][3]
        enc = lines[0][4:].split(sep, 1)[0]
        if len(enc) >= 2:
            delims = Delimiters(sep, enc[0], enc[1], enc[2:3], enc[3:4] or "&")
    msa = err = None
    for line in lines:
        name = line[:3]
        if name == "MSA" and msa is None:
            msa = Segment(name, line.split(delims.field), delims)
        elif name == "ERR" and err is None:
            err = Segment(name, line.split(delims.field), delims)
    if msa is None or not msa.value(1):
        raise HL7v2ParseError("the reply has no MSA segment with an MSA-1 code", location="MSA-1")
    error_code = None
    if err is not None:
        error_code = err.value(3) or err.value(1, 4) or None
    return AckReply(
        code=msa.value(1).strip().upper(),
        control_id=msa.value(2),
        text=msa.value(3),
        error_code=error_code,
    )


def should_acknowledge(condition: str, accepted: bool) -> bool:
    """Whether an enhanced-mode ACK is wanted (HL7 table 0155, MSH-15 and MSH-16).

    ``AL`` always, ``NE`` never, ``ER`` only on error or reject, ``SU`` only on success; empty
    means always (the adapter asked for enhanced mode).
    """
    condition = condition.strip().upper()
    if condition in ("", "AL"):
        return True
    if condition == "NE":
        return False
    return accepted if condition == "SU" else not accepted
