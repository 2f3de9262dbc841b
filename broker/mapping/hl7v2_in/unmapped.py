"""What a message holds that its inbound mapping did not read: the ``unmapped`` report."""

from __future__ import annotations

from collections.abc import Collection
from functools import lru_cache

from broker.mapping.hl7v2_in.engine import ENGINE_READS, CompiledMapping
from broker.mapping.hl7v2_in.scopes import field_numbers, group_segments
from broker.mapping.spec import HL7_VERSIONS
from broker.parsing.hl7v2 import Message, Segment

__all__ = ["unmapped_fields"]


def unmapped_fields(mapping: CompiledMapping, message: Message, read: Collection[int]) -> list[str]:
    """The fields present in ``message`` that no rule read, per segment instance, in order.

    A field counts as read in the segment instances its rules actually read for this
    message: an NTE-3 read under each OBX does not hide the NTE after PID that no rule
    reads. Locations are structural, the same for every message (the Redis tally stays
    bounded): ``SEG-n`` (``ZPI-2``, ``OBX-8``), or ``GROUP/SEG-n`` (``PATIENT_RESULT/NTE-3``)
    for a segment inside an instance of a declared group that it does not start (the
    innermost group). A field whose rules read one repetition (``OBX-5``, not ``OBX-5(*)``)
    while others are present is named ``OBX-5(2+)``. Never a value. Set ID fields (data type
    SI, such as PID-1 and OBX-1) number segments, and the MSH fields the engine reads, are
    not reported.

    Args:
        mapping: the mapping that mapped ``message``.
        message: the parsed message.
        read: the ``field_read`` keys of what the mapping read (``MapResult.read``).
    """
    places = _places(mapping, message)
    version = message.version
    found: dict[str, None] = {}
    for segment in message.segments:
        name = segment.name
        place = places.get(id(segment))
        prefix = f"{place}/{name}" if place else name
        # The field_read keys inline (id * 512 + number, + 256 for one repetition) and the
        # skipped fields looked up once per segment: this loop visits every field of the
        # message, and these cut the report's cost by about half (measured, ADT^A01).
        key = id(segment) * 512
        skipped = _skipped(name, version)
        fields = segment.fields
        for number in range(1, len(fields)):
            if not fields[number] or key + number in read or number in skipped:
                continue
            location = f"{prefix}-{number}"
            if key + 256 + number in read:
                # One repetition was read; the others are named ``OBX-5(2+)`` when present.
                if not _other_repetitions(segment, number):
                    continue
                location += "(2+)"
            found[location] = None
    return list(found)


@lru_cache(maxsize=1024)
def _skipped(segment: str, version: str) -> frozenset[int]:
    """The fields of ``segment`` never reported: its Set IDs, and for MSH the engine's reads."""
    known = version if version in HL7_VERSIONS else "2.5.1"
    numbers = () if segment.startswith("Z") else field_numbers(segment, known) or ()
    set_ids = {number for number in numbers if _is_set_id(segment, number, version)}
    engine = {number for name, number in ENGINE_READS if name == segment}
    return frozenset(set_ids | engine)


def _other_repetitions(segment: Segment, number: int) -> bool:
    """Tell whether field ``number`` has a non-empty repetition after its first."""
    return any(rep and rep != '""' for rep in segment.repetitions(number)[1:])


def _places(mapping: CompiledMapping, message: Message) -> dict[int, str]:
    """id(segment) → the innermost declared group holding it, for segments that do not start it."""
    if not mapping.groups:
        return {}
    instances = group_segments(mapping.groups, mapping.group_order, message.segments)
    places: dict[int, str] = {}
    for name in mapping.group_order:  # parents first: an inner group overrides its parent
        starts = mapping.groups[name].start_names
        for _, segments in instances[name]:
            for segment in segments:
                if segment.name in starts:
                    places.pop(id(segment), None)
                else:
                    places[id(segment)] = name
    return places


def _is_set_id(segment: str, number: int, version: str) -> bool:
    """Tell whether hl7apy's reference tables give field ``number`` of ``segment`` type SI.

    Looked up by the field number in the element name (``OBX_1``), so the fields hl7apy leaves
    out as withdrawn do not shift the types of those after them.
    """
    numbers = field_numbers(segment, version if version in HL7_VERSIONS else "2.5.1")
    return numbers is not None and numbers.get(number) == "SI"
