"""The outbound mapping engine: a canonical message Bundle rendered as HL7 v2 ER7 text.

Element paths are a small FHIRPath subset evaluated over the Bundle's plain dicts (fhirpathpy
is the general tool, but far too slow per message): dotted element names, ``[n]`` indexes,
``resolve()`` to follow a ``urn:uuid:`` reference inside the Bundle, and a ``%bundle.`` prefix
for the Bundle itself. A path gives a list; a list gives field repetitions.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from broker.errors import MappingSpecError, NoMappingError
from broker.mapping.functions import OUTBOUND, OutboundTransform, out_datetime
from broker.mapping.spec import OutboundSpec
from broker.parsing.hl7v2 import DEFAULT, Delimiters, escape
from broker.yamlspec import LineMap

__all__ = ["CompiledOutbound", "compile_outbound", "eval_path"]

_STEP = re.compile(
    r"^(?:(?P<name>[A-Za-z][A-Za-z0-9_]*)(?:\[(?P<index>\d+)\])?|(?P<resolve>resolve\(\)))$"
)
Step = tuple[str, int | None]


def _parse(path: str) -> tuple[bool, list[Step]]:
    text = path.strip()
    on_bundle = text.startswith("%bundle.")
    if on_bundle:
        text = text[len("%bundle.") :]
    steps: list[Step] = []
    for part in text.split("."):
        m = _STEP.match(part)
        if not m:
            msg = (
                f"{path!r} is not an element path; expected names, [n] and resolve() "
                "such as participant[0].individual.resolve()"
            )
            raise ValueError(msg)
        if m["resolve"]:
            steps.append(("resolve()", None))
        else:
            steps.append((m["name"], int(m["index"]) if m["index"] else None))
    return on_bundle, steps


def eval_path(steps: list[Step], start: Any, index: dict[str, dict[str, Any]]) -> list[Any]:
    """Evaluate parsed path steps from ``start``; ``index`` maps fullUrl → resource."""
    current = [start]
    for name, position in steps:
        nxt: list[Any] = []
        if name == "resolve()":
            for item in current:
                ref = item.get("reference") if isinstance(item, dict) else None
                if isinstance(ref, str) and ref in index:
                    nxt.append(index[ref])
        else:
            for item in current:
                if not isinstance(item, dict):
                    continue
                value = item.get(name)
                if value is None:
                    continue
                if isinstance(value, list):
                    nxt.extend(value)
                else:
                    nxt.append(value)
            if position is not None:
                nxt = nxt[position : position + 1]
        current = nxt
    return current


@dataclass(frozen=True)
class _Field:
    number: int
    read: Callable[[dict[str, Any], dict[str, Any], dict[str, dict[str, Any]]], list[Any]]
    write: Callable[[Any, Delimiters], str]


@dataclass(frozen=True)
class _Segment:
    name: str
    resource: str
    required: bool
    fields: tuple[_Field, ...]


@dataclass
class CompiledOutbound:
    """An outbound mapping ready to render; see ``render``."""

    spec: OutboundSpec
    file: str
    segments: tuple[_Segment, ...]

    def triggers(self) -> set[str]:
        """The trigger events (``A01``) this mapping renders."""
        return {event.split("^", 1)[1] for event in self.spec.target.events}

    def render(
        self,
        bundle: dict[str, Any],
        *,
        version: str,
        control_id: str,
        receiving_application: str,
        receiving_facility: str,
        sending_application: str,
        sending_facility: str,
    ) -> str:
        """Render ``bundle`` as ER7 text (segments separated by CR, v2.5.1 §2.6).

        Raises:
            NoMappingError: when the Bundle's event is not one this mapping renders.
        """
        d = DEFAULT
        entries = bundle.get("entry") or []
        index: dict[str, dict[str, Any]] = {
            e["fullUrl"]: e["resource"]
            for e in entries
            if isinstance(e, dict)
            and isinstance(e.get("fullUrl"), str)
            and isinstance(e.get("resource"), dict)
        }
        by_type: dict[str, dict[str, Any]] = {}
        for entry in entries:
            resource = entry.get("resource") or {}
            by_type.setdefault(resource.get("resourceType", ""), resource)
        header = by_type.get("MessageHeader", {})
        trigger = (header.get("eventCoding") or {}).get("code", "")
        event = next((e for e in self.spec.target.events if e.endswith(f"^{trigger}")), None)
        if event is None:
            msg = f"the outbound mapping {self.spec.id} does not render event {trigger or '(none)'}"
            raise NoMappingError(
                msg,
                location="MessageHeader.eventCoding",
            )
        code = event.split("^", 1)[0]
        structure = self.spec.target.structures.get(trigger, "")
        msh9 = f"{code}{d.component}{trigger}" + (f"{d.component}{structure}" if structure else "")
        # MSH fields, v2.5.1 §2.14.9: 3/4 sender, 5/6 receiver, 7 time, 9 type, 10 control id,
        # 11 processing id (P: production), 12 version id.
        msh = [
            "MSH",
            d.msh2,
            escape(sending_application, d),
            escape(sending_facility, d),
            escape(receiving_application, d),
            escape(receiving_facility, d),
            out_datetime(bundle.get("timestamp"), d),
            "",
            msh9,
            escape(control_id, d),
            "P",
            version,
        ]
        lines = [d.field.join(msh)]
        for segment in self.segments:
            resource = by_type.get(segment.resource)
            if resource is None and not segment.required:
                continue
            fields: list[str] = [segment.name]
            for spec in segment.fields:
                values = spec.read(resource or {}, bundle, index)
                reps = [text for text in (spec.write(v, d) for v in values) if text]
                while len(fields) <= spec.number:
                    fields.append("")
                fields[spec.number] = d.repetition.join(reps)
            while len(fields) > 1 and not fields[-1]:
                fields.pop()
            lines.append(d.field.join(fields))
        return "\r".join(lines) + "\r"


def _where(file: str, lines: LineMap, key: tuple[str | int, ...], reason: str) -> MappingSpecError:
    line = None
    for end in range(len(key), -1, -1):
        if key[:end] in lines:
            line = lines[key[:end]]
            break
    dotted = ""
    for part in key:
        dotted += f"[{part}]" if isinstance(part, int) else (f".{part}" if dotted else part)
    return MappingSpecError(file, line, dotted, reason)


def compile_outbound(spec: OutboundSpec, file: str, lines: LineMap) -> CompiledOutbound:
    """Check and compile an outbound mapping.

    Raises:
        MappingSpecError: naming the file, line and key of the first problem.
    """
    from broker.mapping.targets import fhir_model

    segments = []
    for s_index, seg in enumerate(spec.segments):
        if fhir_model(seg.resource) is None:
            raise _where(
                file,
                lines,
                ("segments", s_index, "resource"),
                f"{seg.resource!r} is not a FHIR R4 resource type",
            )
        fields = []
        for f_index, fld in enumerate(seg.fields):
            key: tuple[str | int, ...] = ("segments", s_index, "fields", f_index)
            write: OutboundTransform = OUTBOUND["string"]
            if fld.function is not None:
                found = OUTBOUND.get(fld.function)
                if found is None:
                    raise _where(
                        file,
                        lines,
                        (*key, "function"),
                        f"unknown function {fld.function!r}; known: {', '.join(sorted(OUTBOUND))}",
                    )
                write = found
            if fld.map is not None:
                table = spec.maps.get(fld.map)
                if table is None:
                    raise _where(
                        file, lines, (*key, "map"), f"no value map {fld.map!r} under maps:"
                    )
                write = _map_writer(table.values, table.default)
            if fld.value is not None:
                constant = fld.value
                fields.append(_Field(fld.field, _constant(constant), write))
                continue
            try:
                on_bundle, steps = _parse(fld.from_ or "")
            except ValueError as exc:
                raise _where(file, lines, (*key, "from"), str(exc)) from None
            fields.append(_Field(fld.field, _reader(on_bundle, steps), write))
        segments.append(_Segment(seg.segment, seg.resource, seg.required, tuple(fields)))
    return CompiledOutbound(spec, file, tuple(segments))


def _reader(
    on_bundle: bool, steps: list[Step]
) -> Callable[[dict[str, Any], dict[str, Any], dict[str, dict[str, Any]]], list[Any]]:
    def read(
        resource: dict[str, Any], bundle: dict[str, Any], index: dict[str, dict[str, Any]]
    ) -> list[Any]:
        return eval_path(steps, bundle if on_bundle else resource, index)

    return read


def _constant(
    value: str,
) -> Callable[[dict[str, Any], dict[str, Any], dict[str, dict[str, Any]]], list[Any]]:
    def read(
        resource: dict[str, Any], bundle: dict[str, Any], index: dict[str, dict[str, Any]]
    ) -> list[Any]:
        return [value]

    return read


def _map_writer(values: dict[str, Any], default: Any) -> OutboundTransform:
    def write(value: Any, d: Delimiters) -> str:
        found = values.get(str(value), default)
        return escape(str(found), d) if found is not None else ""

    return write
