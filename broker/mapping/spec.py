"""The schema of ``mappings/**.yaml``: strict pydantic models, checked once at load.

An inbound mapping (``mappings/hl7v2/*.yaml``, has ``source:``) reads an HL7 v2 message and
builds FHIR R4 resources; an outbound mapping (``mappings/out/hl7v2/*.yaml``, has ``target:``)
reads a canonical message Bundle and writes ER7 segments. Every model forbids unknown keys, so
a misspelt key is an error that names its file and line (see ``broker.yamlspec``).

Inbound example::

    id: hl7v2-adt
    source: {format: hl7v2, events: [ADT^A01], versions: ["2.5.1"]}
    groups:                       # segment groups, v2.5.1 message structures
      ORDER_OBSERVATION: {starts: [ORC, OBR]}   # [ORC] OBR: an ORC begins the order it precedes
      OBSERVATION: {starts: OBX, within: ORDER_OBSERVATION, members: [NTE]}
    maps:                         # HL7 table → FHIR value; unknown codes give a finding
      gender-fr: {values: {H: male, F: female}, default: unknown}   # or a shared table
    resources:
      - role: patient             # roles name resources for reference: and ids
        type: Patient
        each: PATIENT_RESULT      # optional: a group, or a repeating field (PV1-7(*))
        when: {path: PID-3, present: true}
        rules:
          - {target: "identifier[]", from: "PID-3(*)", function: cx_identifier}
          - {target: gender, from: PID-8, map: gender-fr}   # or hl7-0001-administrative-sex
          - {target: subject, reference: patient}
          - target: "participant[]"
            each: "PV1-7(*)"      # one element per repetition (or per group instance: each:
            rules: [{target: individual, reference: attending}]   # PERSONNEL_RESOURCE)

Rule grammar: exactly one of ``from`` (a source path, or a list for multi-field functions),
``value`` (a constant), ``reference`` (a role) or ``rules`` (a sub-element); optionally
``function`` *or* ``map``, ``default``, ``when`` and ``note``. ``from`` with a ``function``
building a complex element may also take ``rules:``, which add to each element built (the
function gives none: no element; constants never create one on their own)::

    - target: location[]          # PV1-6 prior location, v2-to-FHIR PV1 → Encounter
      from: PV1-6
      function: pl_location
      rules: [{target: status, value: completed}]

Groups: ``starts`` is one segment or the group's leading segments in message-structure order
(see GroupSpec for when a listed segment begins a new instance). Every element FHIR R4 requires
(primitive or complex, ``DocumentReference.content`` as well as ``status``) is checked on each
resource built; a message that leaves one empty is a CanonicalError naming it.

``when`` is a Condition, or ``all:``/``any:``/``not:`` combinations of them (see Condition). Target element paths are dotted
FHIR element names; ``name[]`` appends to a repeating element and is required for one.
Source paths follow ``broker.parsing.hl7v2``'s grammar; ``(*)`` reads every repetition.

Outbound example (segment groups, per-version fields)::

    id: out-hl7v2-oru-r01
    target: {format: hl7v2, events: [ORU^R01], version: "2.5.1",
             versions: ["2.3", "2.5.1"], structures: {R01: ORU_R01}}
    segments:
      - segment: PID
        each: "%bundle.entry.resource.ofType(Patient)"   # one PID per Patient
        fields: [{field: 1, from: "%set_id"}, {field: 3, from: identifier, function: cx}]
        segments:                                     # written after each PID
          - segment: OBR
            each: "%bundle.entry.resource.ofType(DiagnosticReport)"
            linked_by: subject                        # only this patient's reports
            segments:
              - segment: OBX
                resource: Observation
                each: result.resolve()                # in DiagnosticReport.result order
                fields:
                  - {field: 2, value: CE, until: "2.4", when: {path: valueCodeableConcept, present: true}}
                  - {field: 2, value: CWE, since: "2.5", when: {path: valueCodeableConcept, present: true}}
                  - {field: 5, from: valueCodeableConcept, function: cwe}

Segment grammar: ``segment`` and either ``resource`` (the Bundle's first resource of that type)
or ``each`` (an element path from the parent segment's item, or ``%bundle.``: one segment per
item, each followed by its child ``segments:``), with ``resource`` then filtering items by type
and ``linked_by`` keeping items whose Reference at that path points at the parent's resource.
Field grammar: ``field`` and exactly one of ``from`` (an element path; ``%set_id`` is the item's
1-based position) or ``value``; optionally ``function`` *or* ``map``, ``when`` (element paths
of the item) and ``note``. Several entries may write one field: the first that applies and gives
a value wins. Segments and fields take ``since``/``until`` (inclusive HL7 versions); element
paths are ``broker.mapping.hl7v2_out.reverse``'s FHIRPath subset.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "Condition",
    "GroupSpec",
    "InboundSpec",
    "LetSpec",
    "OutFieldSpec",
    "OutSegmentSpec",
    "OutboundSpec",
    "RequireSpec",
    "ResourcePatchSpec",
    "ResourceSpec",
    "RuleSpec",
    "SharedTable",
    "SiteSourceSpec",
    "SiteSpec",
    "SourceSpec",
    "TableSpec",
    "TargetSpec",
    "ValueMapSpec",
]

HL7_VERSIONS = ("2.1", "2.2", "2.3", "2.3.1", "2.4", "2.5", "2.5.1", "2.6", "2.7", "2.7.1", "2.8")


_SEGMENT_NAME = re.compile(r"^[A-Z][A-Z0-9]{2}$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class SourceSpec(_Strict):
    """What an inbound mapping reads: format, message types and versions."""

    format: Literal["hl7v2"]
    events: list[str] = Field(min_length=1, json_schema_extra={"example": ["ADT^A01"]})
    """``MSH-9.1^MSH-9.2`` pairs such as ``ADT^A01``."""
    versions: list[Literal[HL7_VERSIONS]] = Field(min_length=1)  # type: ignore[valid-type]
    """MSH-12 values this mapping accepts."""

    @model_validator(mode="after")
    def _events_are_pairs(self) -> SourceSpec:
        for event in self.events:
            code, _, trigger = event.partition("^")
            if not (len(code) == 3 and code.isalnum() and trigger and trigger.isalnum()):
                msg = f"event {event!r} must be MESSAGE^TRIGGER such as ADT^A01"
                raise ValueError(msg)
        return self


class TargetSpec(_Strict):
    """What an outbound mapping writes: format, events, the default version and the others."""

    format: Literal["hl7v2"]
    events: list[str] = Field(min_length=1)
    version: Literal[HL7_VERSIONS] = "2.5.1"  # type: ignore[valid-type]
    """The version written when the subscriber names none."""
    versions: list[Literal[HL7_VERSIONS]] = []  # type: ignore[valid-type]
    """Every MSH-12 a subscriber may ask for (``hl7_version:``); empty means only ``version``."""

    @model_validator(mode="after")
    def _default_listed(self) -> TargetSpec:
        if self.versions and self.version not in self.versions:
            msg = f"version {self.version} must be one of versions {self.versions}"
            raise ValueError(msg)
        return self

    @property
    def renders(self) -> tuple[str, ...]:
        """The versions this mapping can write."""
        return tuple(self.versions) or (self.version,)

    structures: dict[str, str] = {}
    """Trigger event → message structure for MSH-9.3 (``A04: ADT_A01``)."""


class GroupSpec(_Strict):
    """A segment group (v2.5.1 ch. 2 message structures): where instances start and end.

    An instance starts at each ``starts`` segment inside one instance of ``within`` (the whole
    message when absent) and runs until the next instance starts, or, when ``members`` is set,
    until the first segment that is neither a start nor a member.

    ``starts`` may list the group's leading segments in message-structure order when the first
    is optional (ORU^R01 ORDER_OBSERVATION is ``[ORC] OBR``, VXU^V04 ORDER ``ORC [TQ1] RXA``):
    ``starts: [ORC, OBR]``. A listed segment begins a new instance unless the current instance
    has seen only segments listed before it; so ``ORC OBR`` is one instance, ``OBR OBR`` and
    ``OBR ORC OBR`` are two. Start segments are local to the group (never read from a parent).
    """

    starts: str | list[str] = Field(json_schema_extra={"example": ["ORC", "OBR"]})
    within: str | None = None
    members: list[str] | None = None

    @model_validator(mode="after")
    def _segment_names(self) -> GroupSpec:
        names = self.start_names
        if not names or any(not _SEGMENT_NAME.match(name) for name in names):
            msg = "starts must be a segment name such as OBR, or a list of them ([ORC, OBR])"
            raise ValueError(msg)
        if len(set(names)) != len(names):
            raise ValueError("starts lists a segment twice")
        return self

    @property
    def start_names(self) -> tuple[str, ...]:
        """The start segments in message-structure order (one for ``starts: OBR``)."""
        return (self.starts,) if isinstance(self.starts, str) else tuple(self.starts)


class ValueMapSpec(_Strict):
    """A code → value table (an HL7 table to a FHIR value set), used by rules' ``map:``."""

    note: str | None = None
    values: dict[str, Any] = Field(min_length=1)
    default: Any = None
    """Used for codes not in ``values``; when absent, such codes are dropped with a finding."""
    system: str | None = None
    """The HL7 table the codes come from, named in findings (``HL7 table 0001``)."""


class SharedTable(ValueMapSpec):
    """A code table from ``mappings/tables/``, used by any mapping's ``map:`` by its name.

    ``file`` and ``lines`` (key path -> line, ``("values", code)`` for each entry) let the
    compiler name the table file and line when an entry does not fit the element it is mapped to.
    """

    name: str
    file: str
    lines: dict[tuple[str | int, ...], int] = {}
    sha256: str = ""
    """The table file's content hash, recorded with each mapping that uses the table."""


class TableSpec(_Strict):
    """A YAML code table file under ``mappings/tables/``: ``id``, ``values``, ``default``."""

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*$")
    """The name rules give to ``map:``."""
    system: str | None = None
    """The code system the codes come from, named in findings (``HL7 table 0078``)."""
    note: str | None = None
    values: dict[str, Any] = Field(min_length=1)
    default: Any = None


class Condition(_Strict):
    """When a rule or resource applies: a source path is present, equals, is in values or matches.

    ``path`` may also be a bare segment name (``PV1``) tested with ``present``, or a ``$variable``.
    ``matches`` is a regular expression the whole first component must match (compiled at load).
    Conditions combine with exactly one of ``all:`` (every one holds), ``any:`` (at least one
    holds) or ``not:`` (the one given does not hold), nested freely::

        when: {all: [{path: OBX-2, in: [NM, SN]}, {not: {path: OBX-5, present: false}}]}

    In an outbound mapping ``path`` is an element path of the segment's item (``valueQuantity``).
    """

    path: str | None = None
    present: bool | None = None
    equals: str | None = None
    in_: list[str] | None = Field(None, alias="in")
    matches: str | None = None
    all_: list[Condition] | None = Field(None, alias="all", min_length=1)
    any_: list[Condition] | None = Field(None, alias="any", min_length=1)
    not_: Condition | None = Field(None, alias="not")

    @model_validator(mode="after")
    def _one_test(self) -> Condition:
        tests = [
            self.present is not None,
            self.equals is not None,
            self.in_ is not None,
            self.matches is not None,
        ]
        combined = [self.all_ is not None, self.any_ is not None, self.not_ is not None]
        if any(combined):
            if sum(combined) != 1 or self.path is not None or any(tests):
                raise ValueError(
                    "a combined condition has exactly one of all, any or not, and no path"
                )
            return self
        if self.path is None:
            raise ValueError("a condition needs a path (or all, any or not)")
        if sum(tests) != 1:
            raise ValueError("a condition needs exactly one of present, equals, in or matches")
        return self

    @property
    def parts(self) -> list[tuple[str, int | None, Condition]]:
        """The sub-conditions of a combined condition as (key, index, condition), else []."""
        if self.all_ is not None:
            return [("all", i, c) for i, c in enumerate(self.all_)]
        if self.any_ is not None:
            return [("any", i, c) for i, c in enumerate(self.any_)]
        if self.not_ is not None:
            return [("not", None, self.not_)]
        return []

    @property
    def op(self) -> Literal["all", "any", "not"] | None:
        """``all``, ``any`` or ``not`` for a combined condition; None for a path test."""
        if self.all_ is not None:
            return "all"
        if self.any_ is not None:
            return "any"
        return "not" if self.not_ is not None else None


_ID = r"^[a-z0-9][a-z0-9._-]*$"


class RuleSpec(_Strict):
    """One rule: where a value comes from, how it is transformed and where it goes."""

    id: str | None = Field(None, pattern=_ID)
    """A name a site mapping's ``replace:`` and ``remove:`` can use (else they match target)."""
    target: str
    """FHIR element path inside the resource, e.g. ``identifier[]`` or ``valueQuantity``."""
    from_: str | list[str] | None = Field(None, alias="from")
    """Source path(s); a list passes several fields to one function (``[OBX-5, OBX-6]``).
    ``$name`` reads the resource's ``let:`` variable ``name``."""
    coalesce: list[str] | None = Field(None, min_length=2)
    """Source paths (or ``$variables``) tried in order: the first non-empty one is read."""
    value: Any = None
    """A constant instead of ``from``."""
    reference: str | None = None
    """A resource role: the nearest instance (or, with ``[]``, all instances in scope)."""
    function: str | None = None
    args: dict[str, Any] | None = None
    map: str | None = None
    default: Any = None
    """Value used when the source is empty."""
    when: Condition | None = None
    rules: list[RuleSpec] | None = None
    """Sub-rules that build one element (a dict) for ``target``. With ``from``/``coalesce`` and
    a ``function`` building a complex element, they add to each element it gives instead."""
    each: str | None = None
    """With ``rules:``, build one element per repetition of this field (``PV1-7(*)``), or per
    instance of this segment group inside the resource's scope (``PERSONNEL_RESOURCE``): its
    sub-rules then read that instance's segments (not the resource's ``let:`` variables), and a
    ``reference:`` finds the resource built for that instance first."""
    note: str | None = None
    """Why the rule exists; cite the v2-to-FHIR IG or the v2.5.1 chapter."""

    @model_validator(mode="after")
    def _one_source(self) -> RuleSpec:
        read = self.from_ is not None or self.coalesce is not None
        sources = [
            self.from_ is not None,
            self.coalesce is not None,
            self.value is not None,
            self.reference is not None,
            self.rules is not None and not read,
        ]
        if sum(sources) != 1:
            raise ValueError(
                "a rule needs exactly one of from, coalesce, value, reference or rules"
            )
        if read and self.rules is not None and (self.function is None or self.each is not None):
            raise ValueError(
                "rules: extend the element a function builds from from/coalesce; "
                "give that function, and no each:"
            )
        if self.function and self.map:
            raise ValueError("a rule takes either a function or a map, not both")
        if (self.function or self.map) and self.from_ is None and self.coalesce is None:
            raise ValueError("function and map apply to values read with from or coalesce")
        if self.args is not None and not self.function:
            raise ValueError("args are given to a function; this rule has none")
        return self


class LetSpec(_Strict):
    """A variable: one value computed once per resource instance, read by rules as ``$name``.

    Exactly one of ``from`` (a path, a ``$variable`` defined above, or a list for a function
    reading several, such as ``concat``) or ``coalesce``; optionally a ``function`` returning a
    string or a ``map`` whose values are strings.
    """

    from_: str | list[str] | None = Field(None, alias="from")
    coalesce: list[str] | None = Field(None, min_length=2)
    function: str | None = None
    args: dict[str, Any] | None = None
    map: str | None = None
    note: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> LetSpec:
        if (self.from_ is None) == (self.coalesce is None):
            raise ValueError("a variable needs exactly one of from or coalesce")
        if self.function and self.map:
            raise ValueError("a variable takes either a function or a map, not both")
        if self.args is not None and not self.function:
            raise ValueError("args are given to a function; this variable has none")
        return self


class RequireSpec(_Strict):
    """What each instance of a resource needs from its segments, and why (``reason:``).

    An instance whose ``check`` fails is malformed: built on a group instance or a field
    repetition, that group instance is dropped with a ``segment-dropped`` finding; built on the
    whole message, the message is quarantined (docs/mappings.md, "Malformed segments")::

        require:
          - check: {any: [{path: OBX-2, matches: "[A-Z]{2,3}"}, {path: OBX-11, equals: X}]}
            reason: OBX-2 must be valued unless OBX-11 is X (v2.5.1 §7.4.2.2)
    """

    check: Condition
    reason: str = Field(min_length=1)
    """A sentence naming the fields and the rule they break, never a value; cite the spec."""


class ResourceSpec(_Strict):
    """One FHIR resource built per scope instance (the message, or each group instance)."""

    role: str = Field(pattern=r"^[a-z][a-z0-9_-]*$")
    type: str
    each: str | None = None
    """A group name (one resource per group instance) or a repeating field such as
    ``PV1-7(*)`` (one resource per repetition; inside, ``PV1-7`` reads that repetition)."""
    when: Condition | None = None
    focus: bool = False
    """Listed in MessageHeader.focus."""
    let: dict[str, LetSpec] = {}
    """Variables, computed in order once per instance before the rules; read as ``$name``."""
    require: list[RequireSpec] = []
    """Checked on each instance before its rules run (source paths only, no ``$name``)."""
    rules: list[RuleSpec] = Field(min_length=1)


class InboundSpec(_Strict):
    """An inbound mapping file: an HL7 v2 message to a FHIR message Bundle."""

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*$")
    description: str | None = None
    source: SourceSpec
    groups: dict[str, GroupSpec] = {}
    maps: dict[str, ValueMapSpec] = {}
    resources: list[ResourceSpec] = Field(min_length=1)


class SiteSourceSpec(_Strict):
    """Which messages a site mapping serves: its adapters, and the base's events and versions.

    ``events`` and ``versions`` default to the base's; each must be one the base maps.
    """

    format: Literal["hl7v2"] = "hl7v2"
    adapters: list[str] = Field(min_length=1)
    """Inbound adapter ids (``MapContext.source``) this mapping serves instead of its base."""
    events: list[str] | None = None
    versions: list[Literal[HL7_VERSIONS]] | None = None  # type: ignore[valid-type]


class ResourcePatchSpec(_Strict):
    """A site's change to one resource of its base, by role, or a new resource.

    For a base role: ``remove`` drops rules by id or target, ``replace`` swaps each rule for
    the base rules with its id (or, without an id, its target), ``rules`` appends rules; ``when``
    and ``focus`` override the base's. A role the base lacks is a new resource: give ``type``
    and ``rules`` (and optionally ``each``).
    """

    role: str = Field(pattern=r"^[a-z][a-z0-9_-]*$")
    type: str | None = None
    each: str | None = None
    when: Condition | None = None
    focus: bool | None = None
    remove: list[str] = []
    replace: list[RuleSpec] = []
    rules: list[RuleSpec] = []


class SiteSpec(_Strict):
    """A site mapping: a base mapping (``extends:`` its id) with one hospital's changes.

    Used for the adapters it names; the base keeps serving every other adapter. ``maps`` and
    ``groups`` are added to the base's (a name the base uses replaces the base's entry).
    """

    id: str = Field(pattern=_ID)
    description: str | None = None
    extends: str
    source: SiteSourceSpec
    groups: dict[str, GroupSpec] = {}
    maps: dict[str, ValueMapSpec] = {}
    resources: list[ResourcePatchSpec] = []


class _VersionBounds(_Strict):
    since: Literal[HL7_VERSIONS] | None = None  # type: ignore[valid-type]
    """The first HL7 v2 version this part is written for (inclusive)."""
    until: Literal[HL7_VERSIONS] | None = None  # type: ignore[valid-type]
    """The last HL7 v2 version this part is written for (inclusive)."""

    @model_validator(mode="after")
    def _ordered(self) -> _VersionBounds:
        if (
            self.since
            and self.until
            and HL7_VERSIONS.index(self.since) > HL7_VERSIONS.index(self.until)
        ):
            msg = f"since {self.since} comes after until {self.until}"
            raise ValueError(msg)
        return self


class OutFieldSpec(_VersionBounds):
    """One ER7 field written from the segment's item (a resource or an element).

    Several entries may write the same field: the first one that applies (its versions and
    ``when:``) and gives a value wins, so alternatives are listed in order of preference.
    """

    field: int = Field(ge=1)
    from_: str | None = Field(None, alias="from")
    """Dotted FHIR element path in the segment's item; a list element gives repetitions.
    ``%set_id`` is the item's 1-based position among its siblings (OBX-1, NTE-1)."""
    value: str | None = None
    function: str | None = None
    map: str | None = None
    when: Condition | None = None
    """Element paths of the segment's item (``valueQuantity``), combinable with all/any/not."""
    note: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> OutFieldSpec:
        if (self.from_ is None) == (self.value is None):
            raise ValueError("a field needs exactly one of from or value")
        if self.function and self.map:
            raise ValueError("a field takes either a function or a map, not both")
        return self


class OutSegmentSpec(_VersionBounds):
    """One ER7 segment, written once or once per item, optionally followed by child segments.

    Without ``each`` the segment reads the first resource of type ``resource`` in the Bundle.
    With ``each`` (an element path from the parent segment's item, or ``%bundle.`` for the
    Bundle) it is written once per item the path gives, in order, each followed by its
    ``segments:``; ``resource`` then keeps only items of that type and ``linked_by`` only
    items whose Reference at that path points at the parent's resource.
    """

    segment: str = Field(pattern=r"^[A-Z][A-Z0-9]{2}$")
    resource: str | None = None
    """A resource type in the Bundle (``MessageHeader``, ``Patient``, ``Encounter``)."""
    each: str | None = None
    """``%bundle.entry.resource.ofType(DiagnosticReport)``, ``result.resolve()``, ``note``."""
    linked_by: str | None = None
    """A Reference element path of each item (``subject``) that must point at the parent."""
    required: bool = True
    """Write the segment (with only its set id) even when the resource is absent (no ``each``)."""
    fields: list[OutFieldSpec] = []
    segments: list[OutSegmentSpec] = []
    """Child segments written after each item's segment (an HL7 segment group)."""
    note: str | None = None

    @model_validator(mode="after")
    def _items(self) -> OutSegmentSpec:
        if self.each is None and self.resource is None:
            raise ValueError("a segment needs resource (its first instance) or each (one per item)")
        if self.linked_by is not None and self.each is None:
            raise ValueError("linked_by filters the items of each:; this segment has none")
        if self.segments and self.each is None:
            raise ValueError("child segments: repeat with each item; give the segment each:")
        return self


class OutboundSpec(_Strict):
    """An outbound mapping file: a canonical FHIR message Bundle to an HL7 v2 message."""

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*$")
    description: str | None = None
    target: TargetSpec
    maps: dict[str, ValueMapSpec] = {}
    segments: list[OutSegmentSpec] = Field(min_length=1)
