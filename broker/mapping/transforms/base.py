"""What every transform works with: the source values it reads, the per-message Env, and
the Transform record the registry keeps."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import BaseModel

from broker.envelope import Finding
from broker.identity import IdentifierSystem
from broker.parsing.hl7v2 import Delimiters, Message, Path, Segment, unescape

__all__ = [
    "Env",
    "InboundTransform",
    "OutboundTransform",
    "SourceValue",
    "Transform",
    "field_read",
    "first_value",
]


class SourceValue:
    """One value read by a rule's source path: a field repetition or one of its components."""

    __slots__ = ("_code", "_comps", "_plain", "delims", "path", "raw", "rep", "segment")

    def __init__(self, raw: str, segment: Segment, path: Path, rep: int) -> None:
        self.raw = raw
        self.segment = segment
        self.path = path
        self.rep = rep
        self.delims: Delimiters = segment.delims
        # ``raw`` split into components, on the first ``comp``: transforms read several
        # components of one value (XPN five, CX four) and conditions read a value's first
        # component again for each condition on it (ORU^R01: ~900 comp calls per message).
        self._comps: list[str] | None = None
        self._code: str | None = None
        self._plain = False
        """Set with ``_comps``: no subcomponent or escape character in ``raw``, so a component
        is its own text (most values; XPN, CX and XAD read 4-7 components each)."""

    def _components(self) -> list[str]:
        comps = self._comps
        if comps is None:
            raw = self.raw
            d = self.delims
            comps = self._comps = raw.split(d.component)
            # An empty escape character never escapes (``unescape`` returns the value as is).
            self._plain = d.subcomponent not in raw and not (d.escape and d.escape in raw)
        return comps

    def code(self) -> str:
        """The first component, unescaped and stripped: what conditions and value maps compare.

        Kept once found: every condition on OBX-2 compares it (~15 per ORU^R01 OBSERVATION).
        """
        code = self._code
        if code is None:
            code = self._code = self.comp(1).strip()
        return code

    @property
    def text(self) -> str:
        """The whole value, unescaped (components and all)."""
        return unescape(self.raw, self.delims)

    def comp_raw(self, number: int) -> str:
        """Component ``number`` as sent (escapes and subcomponents kept); ``""`` when absent."""
        comps = self._components()
        return comps[number - 1] if number <= len(comps) else ""

    def comp(self, number: int, sub: int = 1) -> str:
        """Component ``number`` (subcomponent ``sub``), unescaped; ``""`` when absent."""
        comps = self._comps
        if comps is None:
            comps = self._components()
        if number > len(comps):
            return ""
        value = comps[number - 1]
        if self._plain and sub == 1:
            return value
        d = self.delims
        if d.subcomponent in value or sub > 1:
            subs = value.split(d.subcomponent)
            value = subs[sub - 1] if sub <= len(subs) else ""
        return unescape(value, d) if d.escape in value else value


def field_read(segment: Segment, number: int, *, one_repetition: bool = False) -> int:
    """The key recording that field ``number`` of ``segment`` was read (all or one repetition).

    An int, not a (segment, number) tuple: a mapping run records hundreds of reads and ints do
    not load the cyclic garbage collector. Keys name segments by ``id()``, so they are
    compared with the message they were recorded for while it is alive (``MapResult.read``).
    """
    return id(segment) * 512 + (256 if one_repetition else 0) + number


class Env:
    """What a transform may use about the current message: context, findings and locations."""

    __slots__ = (
        "findings",
        "identifier_systems",
        "message",
        "received_at",
        "seen",
        "sender",
        "source",
        "timezone",
    )

    def __init__(
        self,
        message: Message,
        timezone: str,
        source: str,
        identifier_systems: Sequence[IdentifierSystem] = (),
        received_at: datetime | None = None,
    ) -> None:
        self.message = message
        self.received_at = received_at
        """When the broker received the message (``MapContext.received_at``): "now" for
        plausibility checks (a birth date in the future)."""
        self.timezone = timezone
        self.source = source
        self.identifier_systems = identifier_systems
        """The inbound adapter's ``identifier_systems`` (``broker.identity``)."""
        self.sender = message.sending_facility
        """MSH-4.1, the sending facility."""
        self.findings: list[Finding] = []
        self.seen: set[int] = set()
        """The fields read in this run, as ``field_read`` keys; a transform reading fields of
        segments other than its values' (an MDM document's later OBXs) adds them."""

    def location(self, value: SourceValue) -> str:
        """Name where ``value`` sits: ``PID-7``, ``OBX[3]-5``, ``PID-3(2)``; never the value."""
        p = value.path
        same = [s for s in self.message.segments if s.name == p.segment]
        where = p.segment
        if len(same) > 1:
            where += f"[{next(i for i, s in enumerate(same, 1) if s is value.segment)}]"
        where += f"-{p.field}"
        if value.rep > 1:
            where += f"({value.rep})"
        if p.component is not None:
            where += f".{p.component}"
        return where

    def warn(self, code: str, value: SourceValue, message: str) -> None:
        """Record a warning about ``value``; ``message`` must not contain the value."""
        self.findings.append(
            Finding(severity="warning", code=code, location=self.location(value), message=message)
        )


InboundTransform = Callable[[Sequence[SourceValue | None], Env, Any], Any]
"""An inbound transform: source values, the message's Env and validated args → FHIR data."""


OutboundTransform = Callable[[Any, Delimiters], str]
"""An outbound transform: one canonical element → one escaped ER7 field repetition."""


@dataclass(frozen=True)
class Transform:
    """A registered inbound transform and what it accepts.

    Attributes:
        fn: the function.
        returns: the FHIR type of what it returns, checked against the target element at load.
        sources: how many source paths it reads at most.
        args: the pydantic model its ``args:`` are validated against at load, if any.
    """

    fn: InboundTransform
    returns: str
    sources: int = 1
    args: type[BaseModel] | None = None
    optional: bool = False
    """Called even when the first source is empty (``concat`` joins what is present)."""


def first_value(values: Sequence[SourceValue | None]) -> SourceValue | None:
    """The value of a rule's first source path, or None when it is empty."""
    return values[0] if values else None
