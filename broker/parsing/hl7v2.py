"""HL7 v2 ER7 reading: charset decoding (MSH-18), a fast lazy tokenizer and the path grammar.

hl7apy's full parse costs 18-55 ms per message here (ARCHITECTURE §5), so the hot path splits
ER7 text itself: segments on CR, fields on MSH-1, repetitions, components and subcomponents on
MSH-2, and unescapes values only when read. hl7apy stays the reference for structures and
conformance (see ``broker.parsing.structures``).

Path grammar (one place, used by mappings and tools)::

    path      := SEG [ "(" seg_index ")" ] "-" FIELD [ "(" rep ")" ] [ "." COMP [ "." SUB ] ]
    SEG       := three upper-case letters or digits (``PID``, ``ZPI``, ``OBX``)
    seg_index := 1-based occurrence of the segment, or ``*`` for all
    FIELD     := 1-based field number (MSH-1 is the field separator itself)
    rep       := 1-based repetition, or ``*`` for all (default 1)
    COMP, SUB := 1-based component and subcomponent numbers

Examples: ``PID-5.1`` (first family name), ``PID-3(*).1`` (every identifier's id),
``OBX(2)-5`` (the second OBX's value), ``MSH-9.2`` (trigger event).
"""

from __future__ import annotations

import codecs
import functools
import re
from dataclasses import dataclass
from typing import Final

from broker.errors import HL7v2ParseError

__all__ = [
    "CHARSETS",
    "Delimiters",
    "Message",
    "Path",
    "Segment",
    "charset_code",
    "decode",
    "escape",
    "parse",
    "parse_path",
    "unescape",
]

# HL7 table 0211 (alternate character sets, MSH-18) → Python codec names.
CHARSETS: Final[dict[str, str]] = {
    "ASCII": "ascii",
    "ISO IR6": "ascii",
    "8859/1": "latin-1",
    "ISO IR100": "latin-1",
    "8859/2": "iso8859-2",
    "8859/3": "iso8859-3",
    "8859/4": "iso8859-4",
    "8859/5": "iso8859-5",
    "8859/6": "iso8859-6",  # Arabic
    "ISO IR127": "iso8859-6",
    "8859/7": "iso8859-7",
    "8859/8": "iso8859-8",
    "8859/9": "iso8859-9",
    "8859/15": "iso8859-15",
    "UNICODE UTF-8": "utf-8",
    "ISO IR192": "utf-8",
    "UNICODE UTF-16": "utf-16",
    "UNICODE UTF-32": "utf-32",
    "UNICODE": "utf-8",  # deprecated in v2.5; senders that use it send UTF-8 in practice
    "GB 18030-2000": "gb18030",
    "BIG-5": "big5",
    "KS X 1001": "euc-kr",
}

# The reverse of CHARSETS for MSH-18 of what Passerelle sends: per codec, the first code listed
# above (the table's own name, "8859/1" rather than "ISO IR100").
_CODES: Final[dict[str, str]] = {}
for _code, _codec in CHARSETS.items():
    _CODES.setdefault(codecs.lookup(_codec).name, _code)


def charset_code(charset: str, version: str) -> str | None:
    """The HL7 table 0211 code MSH-18 names text encoded in ``charset`` with, in ``version``.

    ``charset`` is a Python codec name (``utf-8``, ``latin-1``, ``iso-8859-1``, ``ascii``).
    UTF-8 is "UNICODE UTF-8", which table 0211 has from v2.5 on; v2.3 and v2.4 only have
    "UNICODE" (ISO/IEC 10646), which senders use for UTF-8 in practice and which ``decode``
    reads as UTF-8. None when the table has no code for ``charset`` (cp1252, for one).
    """
    try:
        name = codecs.lookup(charset).name
    except LookupError:
        return None
    code = _CODES.get(name)
    if code == "UNICODE UTF-8" and _version_tuple(version) < (2, 5):
        return "UNICODE"
    return code


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split(".") if part.isdigit())


@dataclass(frozen=True, slots=True)
class Delimiters:
    """The encoding characters of a message: MSH-1 and MSH-2 (v2.5.1 §2.5.4)."""

    field: str = "|"
    component: str = "^"
    repetition: str = "~"
    escape: str = "\\"
    subcomponent: str = "&"

    @property
    def msh2(self) -> str:
        """MSH-2 as sent: component, repetition, escape and subcomponent characters."""
        return self.component + self.repetition + self.escape + self.subcomponent


DEFAULT = Delimiters()


def _msh_fields_bytes(raw: bytes) -> list[bytes] | None:
    start = raw.find(b"MSH")
    if start < 0 or len(raw) < start + 4:
        return None
    end = len(raw)
    for stop in (b"\r", b"\n"):
        pos = raw.find(stop, start)
        if 0 <= pos < end:
            end = pos
    return raw[start:end].split(raw[start + 3 : start + 4])


def decode(raw: bytes, default_charset: str = "utf-8") -> str:
    """Decode a message's bytes by its MSH-18, else by ``default_charset``; never guess.

    Raises:
        HL7v2ParseError: when MSH-18 names an unknown character set or the bytes are invalid in
            the chosen one (no replacement characters are ever produced).
    """
    fields = _msh_fields_bytes(raw)
    charset = default_charset
    declared = ""
    if fields is not None and len(fields) > 17:
        # fields[0] is "MSH" and fields[1] is MSH-2, so MSH-18 is fields[17]; first repetition.
        declared = fields[17].split(b"~")[0].decode("ascii", "replace").strip()
    if declared:
        if declared.upper() not in CHARSETS:
            msg = f"MSH-18 names an unknown character set; expected one of HL7 table 0211 ({', '.join(sorted(CHARSETS))})"
            raise HL7v2ParseError(msg, location="MSH-18")
        charset = CHARSETS[declared.upper()]
    try:
        return raw.decode(charset)
    except UnicodeDecodeError as exc:
        line = raw.count(b"\r", 0, exc.start) + 1
        source = f"MSH-18 ({declared})" if declared else f"the adapter's charset ({charset})"
        msg = f"byte {exc.start} (segment {line}) is not valid {charset}, as declared by {source}"
        raise HL7v2ParseError(msg, location=f"segment {line}") from None
    except LookupError:
        msg = f"the character set {charset!r} is not known to this system"
        raise HL7v2ParseError(msg, location="MSH-18") from None


_ESCAPE_RE_CACHE: dict[str, re.Pattern[str]] = {}


def unescape(value: str, delims: Delimiters = DEFAULT) -> str:
    """Resolve HL7 escape sequences (v2.5.1 §2.7): \\F\\ \\S\\ \\T\\ \\R\\ \\E\\ \\Xhh\\ \\.br\\."""
    esc = delims.escape
    if not esc or esc not in value:
        return value
    pattern = _ESCAPE_RE_CACHE.get(esc)
    if pattern is None:
        e = re.escape(esc)
        pattern = re.compile(f"{e}([^{e}]*){e}")
        _ESCAPE_RE_CACHE[esc] = pattern
    simple = {
        "F": delims.field,
        "S": delims.component,
        "T": delims.subcomponent,
        "R": delims.repetition,
        "E": delims.escape,
        ".br": "\n",
        "H": "",  # start highlighting: no meaning in FHIR text
        "N": "",  # normal text
    }

    def repl(match: re.Match[str]) -> str:
        code = match.group(1)
        if code in simple:
            return simple[code]
        if code[:1] == "X" and len(code) % 2 == 1:
            try:
                return bytes.fromhex(code[1:]).decode("latin-1")
            except ValueError:
                return match.group(0)
        return match.group(0)  # unknown sequences are kept as sent

    return pattern.sub(repl, value)


@functools.lru_cache(maxsize=64)
def _special(delims: Delimiters) -> re.Pattern[str]:
    """Matches any character ``escape`` must change: the delimiters, CR and LF."""
    chars = delims.field + delims.msh2 + "\r\n"
    return re.compile("[" + re.escape(chars) + "]")


_DEFAULT_SPECIAL = _special(DEFAULT)


def escape(value: str, delims: Delimiters = DEFAULT) -> str:
    """Escape delimiter characters in a value before it is written into ER7 text.

    Nearly every value has nothing to escape: one regular-expression search says so, 0.32 µs
    against 0.55 µs for ``any()`` over the seven characters (rendering an ADT^A01 escapes ~20
    values, most outbound components in one joined search).
    """
    # The default delimiters skip the cache lookup, which hashes the dataclass' five fields:
    # 0.30 -> 0.12 µs a value.
    special = _DEFAULT_SPECIAL if delims is DEFAULT else _special(delims)
    if special.search(value) is None:
        return value
    e = delims.escape
    out = value.replace(e, f"{e}E{e}")
    out = out.replace(delims.field, f"{e}F{e}").replace(delims.component, f"{e}S{e}")
    out = out.replace(delims.subcomponent, f"{e}T{e}").replace(delims.repetition, f"{e}R{e}")
    return out.replace("\r\n", "\n").replace("\r", "\n").replace("\n", f"{e}.br{e}")


class Segment:
    """One segment: ``fields[n]`` is field n as sent (still escaped); ``fields[0]`` is the name.

    For MSH, ``fields[1]`` is the field separator and ``fields[2]`` the encoding characters, so
    field numbers match the standard for every segment.
    """

    __slots__ = ("delims", "fields", "name")

    def __init__(self, name: str, fields: list[str], delims: Delimiters) -> None:
        self.name = name
        self.fields = fields
        self.delims = delims

    def __repr__(self) -> str:
        return f"<Segment {self.name} with {len(self.fields) - 1} fields>"

    def field(self, number: int) -> str:
        """Field ``number`` as sent (escaped), or ``""`` when absent."""
        return self.fields[number] if number < len(self.fields) else ""

    def repetitions(self, number: int) -> list[str]:
        """The repetitions of a field, as sent; ``[]`` when the field is empty."""
        raw = self.field(number)
        if not raw:
            return []
        if self.name == "MSH" and number <= 2:
            return [raw]
        return raw.split(self.delims.repetition)

    def value(self, number: int, component: int = 1, sub: int = 1, rep: int = 1) -> str:
        """One unescaped value: field ``number``, repetition ``rep``, ``component``, ``sub``."""
        reps = self.repetitions(number)
        if rep > len(reps):
            return ""
        return component_of(reps[rep - 1], component, sub, self.delims)

    def components(self, number: int, rep: int = 1) -> list[str]:
        """The unescaped components of one repetition of a field (first subcomponent each)."""
        reps = self.repetitions(number)
        if rep > len(reps):
            return []
        d = self.delims
        return [unescape(c.split(d.subcomponent)[0], d) for c in reps[rep - 1].split(d.component)]


def component_of(repetition: str, component: int, sub: int, delims: Delimiters) -> str:
    """Extract and unescape ``component``.``sub`` of one field repetition."""
    if not repetition:
        return ""
    comps = (
        repetition.split(delims.component)
        if component > 1 or delims.component in repetition
        else [repetition]
    )
    if component > len(comps):
        return ""
    value = comps[component - 1]
    if sub > 1 or delims.subcomponent in value:
        subs = value.split(delims.subcomponent)
        value = subs[sub - 1] if sub <= len(subs) else ""
    return unescape(value, delims)


class Message:
    """A tokenized HL7 v2 message: its delimiters and segments in order."""

    __slots__ = ("_event", "_header", "delims", "segments", "text")

    def __init__(self, text: str, delims: Delimiters, segments: list[Segment]) -> None:
        self.text = text
        self.delims = delims
        self.segments = segments
        # MSH values the properties below gave, by (field, component): routing, mapping and
        # the unmapped report ask for the event, version and control id ~16 times per message.
        self._header: dict[int, str] = {}
        self._event: str | None = None

    def _msh_value(self, number: int, component: int = 1) -> str:
        key = number * 64 + component  # an int: no tuple to build and hash (components < 64)
        found = self._header.get(key)
        if found is None:
            found = self._header[key] = self.msh.value(number, component)
        return found

    @property
    def msh(self) -> Segment:
        """The message header segment."""
        return self.segments[0]

    def segments_named(self, name: str) -> list[Segment]:
        """Every segment called ``name``, in order."""
        return [s for s in self.segments if s.name == name]

    def first(self, name: str) -> Segment | None:
        """The first segment called ``name``, if any."""
        for segment in self.segments:
            if segment.name == name:
                return segment
        return None

    # MSH fields (v2.5.1 §2.14.9) used by the edge, routing and ACKs.
    @property
    def message_type(self) -> str:
        """MSH-9.1, the message code (``ADT``)."""
        return self._msh_value(9, 1)

    @property
    def sending_application(self) -> str:
        """MSH-3.1, the sending application (``HIS``)."""
        return self._msh_value(3)

    @property
    def sending_facility(self) -> str:
        """MSH-4.1, the sending facility (``CHU-RABAT``)."""
        return self._msh_value(4)

    @property
    def trigger_event(self) -> str:
        """MSH-9.2, the trigger event (``A01``)."""
        return self._msh_value(9, 2)

    @property
    def event(self) -> str:
        """``MSH-9.1^MSH-9.2``, e.g. ``ADT^A01``; routing's unit of subscription."""
        event = self._event
        if event is None:  # kept: mapping and routing ask for it several times per message
            trigger = self.trigger_event
            event = self._event = f"{self.message_type}^{trigger}" if trigger else self.message_type
        return event

    @property
    def structure(self) -> str:
        """MSH-9.3, the message structure (``ADT_A01``), when the sender gave it."""
        return self._msh_value(9, 3)

    @property
    def control_id(self) -> str:
        """MSH-10, the message control id the ACK's MSA-2 echoes."""
        return self._msh_value(10)

    @property
    def version(self) -> str:
        """MSH-12.1, the version id (``2.5.1``)."""
        return self._msh_value(12)

    @property
    def processing_id(self) -> str:
        """MSH-11.1: P (production), T (training) or D (debugging)."""
        return self._msh_value(11)

    def get(self, path: str) -> str:
        """The first value at ``path`` (see the module's grammar), ``""`` when absent."""
        values = self.get_all(path)
        return values[0] if values else ""

    def get_all(self, path: str) -> list[str]:
        """Every non-empty value at ``path``, expanding ``*`` in segment index and repetition."""
        p = parse_path(path)
        found = self.segments_named(p.segment)
        if p.segment_index is not None:
            found = (
                found[p.segment_index - 1 : p.segment_index]
                if p.segment_index <= len(found)
                else []
            )
        out = []
        for segment in found:
            reps = segment.repetitions(p.field)
            chosen = reps if p.repetition is None else reps[p.repetition - 1 : p.repetition]
            for rep in chosen:
                if p.component is None:
                    value = unescape(rep, segment.delims)
                else:
                    value = component_of(rep, p.component, p.sub or 1, segment.delims)
                if value:
                    out.append(value)
        return out


@dataclass(frozen=True, slots=True)
class Path:
    """A parsed source path; ``None`` index or repetition means "all"."""

    segment: str
    segment_index: int | None
    field: int
    repetition: int | None
    component: int | None
    sub: int | None


_PATH_RE = re.compile(
    r"^(?P<seg>[A-Z][A-Z0-9]{2})(?:\((?P<si>\d+|\*)\))?-(?P<f>\d+)(?:\((?P<r>\d+|\*)\))?"
    r"(?:\.(?P<c>\d+)(?:\.(?P<s>\d+))?)?$"
)
_PATHS: dict[str, Path] = {}


def parse_path(text: str) -> Path:
    """Parse ``PID-3(*).1`` into a Path (cached).

    Raises:
        ValueError: naming the path and the grammar it should follow.
    """
    cached = _PATHS.get(text)
    if cached is not None:
        return cached
    m = _PATH_RE.match(text.strip())
    if not m:
        msg = f"{text!r} is not an HL7 v2 path; expected SEG[(n)]-FIELD[(rep)][.COMP[.SUB]] such as PID-3(*).1"
        raise ValueError(msg)
    si, r = m["si"], m["r"]
    path = Path(
        segment=m["seg"],
        segment_index=None if si in (None, "*") else int(si),
        field=int(m["f"]),
        repetition=1 if r is None else (None if r == "*" else int(r)),
        component=int(m["c"]) if m["c"] else None,
        sub=int(m["s"]) if m["s"] else None,
    )
    if path.segment_index is None and si is None:
        path = Path(path.segment, None, path.field, path.repetition, path.component, path.sub)
    if path.field == 0 or path.component == 0 or path.sub == 0 or path.repetition == 0:
        msg = f"{text!r}: field, repetition, component and subcomponent numbers start at 1"
        raise ValueError(msg)
    _PATHS[text] = path
    return path


_SEGMENT_NAME = re.compile(r"^[A-Z][A-Z0-9]{2}$")
_SEGMENT_NAMES: set[str] = set()
"""Segment names ``parse`` has already matched with ``_SEGMENT_NAME`` (at most 512 kept)."""


@functools.lru_cache(maxsize=64)
def _delimiters(sep: str, enc: str) -> Delimiters:
    """The Delimiters of MSH-1 ``sep`` and MSH-2 ``enc``, checked once per pair (cached).

    The usual ``|^~\\&`` gives ``DEFAULT`` itself, which ``escape`` recognises without a lookup.

    Raises:
        HL7v2ParseError: the characters are not distinct non-alphanumeric ones.
    """
    if (
        sep.isalnum()
        or sep in "\r\n "
        or not 2 <= len(enc) <= 5
        or len(set(enc + sep)) != len(enc) + 1
        or any(c.isalnum() or c in "\r\n " for c in enc)
    ):
        msg = "MSH-1 and MSH-2 must be distinct non-alphanumeric encoding characters such as |^~\\&"
        raise HL7v2ParseError(msg, location="MSH-2")
    delims = Delimiters(
        field=sep,
        component=enc[0],
        repetition=enc[1],
        escape=enc[2] if len(enc) > 2 else "",
        subcomponent=enc[3] if len(enc) > 3 else "&",
    )
    return DEFAULT if delims == DEFAULT else delims


def parse(text: str) -> Message:
    """Tokenize ER7 text into a Message; lenient about everything after a readable MSH.

    Unknown, Z-, repeated and out-of-order segments are kept as they are. Segments may be
    separated by CR (the standard), LF or CRLF.

    Raises:
        HL7v2ParseError: no MSH first, broken encoding characters, no MSH-9 or MSH-10.
    """
    body = text.lstrip("\ufeff \t\r\n")
    if not body.startswith("MSH"):
        head = body[:3] if body[:3].isalnum() else "non-text bytes"
        msg = (
            f"a message must start with an MSH segment; found {head!r}"
            if head.isalnum()
            else "a message must start with an MSH segment; found no segment name"
        )
        raise HL7v2ParseError(msg, location="MSH")
    if len(body) < 8:
        raise HL7v2ParseError(
            "the MSH segment is too short to hold MSH-1 and MSH-2", location="MSH-2"
        )
    sep = body[3]
    delims = _delimiters(sep, body[4:].split(sep, 1)[0])
    if "\r" in body:
        lines = body.replace("\r\n", "\r").replace("\n", "\r").split("\r")
    else:
        lines = body.split("\n")
    fields = lines[0].split(sep)
    fields.insert(1, sep)  # MSH-1 is the separator itself: the standard's numbering needs it
    segments = [Segment("MSH", fields, delims)]
    for line in lines[1:]:  # no line holds CR or LF any more
        if not line or line.isspace():
            continue
        fields = line.split(sep)
        name = fields[0]
        if name not in _SEGMENT_NAMES:
            if not _SEGMENT_NAME.match(name):
                msg = f"segment {len(segments) + 1} has no valid three-character segment name"
                raise HL7v2ParseError(msg, location=f"segment {len(segments) + 1}")
            if len(_SEGMENT_NAMES) < 512:
                _SEGMENT_NAMES.add(name)
        segments.append(Segment(name, fields, delims))
    message = Message(body, delims, segments)
    if not message.message_type:
        raise HL7v2ParseError(
            "MSH-9 (message type) is empty; expected e.g. ADT^A01", location="MSH-9"
        )
    if not message.control_id:
        raise HL7v2ParseError(
            "MSH-10 (message control id) is empty; every message needs one", location="MSH-10"
        )
    return message
