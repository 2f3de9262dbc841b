"""Style check of a canonical Bundle: FHIR that reads as FHIR, not as HL7 v2 leftovers.

``check_style(bundle)`` walks every element of a Bundle (a ``dict`` as the mappings produce it)
and reports, each with its FHIR path (``Bundle.entry[3].resource.location[0].location.display``):

``hl7-syntax``
    A string that still carries HL7 v2 encoding:

    - an escape sequence: ``\\F\\ \\S\\ \\T\\ \\R\\ \\E\\ \\H\\ \\N\\``, ``\\Xhh..\\``, ``\\Zxx\\``,
      ``\\Cxxxx\\``, ``\\Mxxxxxx\\`` and the formatting commands ``\\.br\\ \\.sp n\\ \\.in n\\
      \\.ti n\\ \\.sk n\\ \\.fi\\ \\.nf\\ \\.ce\\`` (v2.5.1 §2.7);
    - a component separator ``^`` anywhere, except in a power of ten written ``10^n`` (a unit text
      such as ``10^9/L``);
    - a repetition separator ``~`` or a field separator ``|`` between two non-blank characters
      (``60~120``, ``CARDIO|204``); with a blank on either side they are prose (``~ 5 mg``,
      ``Cardiology | Rabat``), and a whole string ``<absolute URI>|<value>`` is FHIR's token syntax
      (``https://his.example/fhir/bundle|TX-1``, the id of a FHIR input's Bundle), not HL7's;
    - two subcomponent separators ``&`` in one run of non-blank characters (``OMU&9.8&ISO``, an HD
      with its subcomponents); a single ``&`` is prose (``A&E``, which is what ``A\\T\\E`` decodes to).

    Exempt, because their syntax is not HL7's or their content is not text: every element of type
    uri, url or canonical (``system``, ``url``, ``fullUrl``, ``profile``, ``reference``,
    ``Bundle.entry.request`` ``url``/``ifNoneExist``/``ifMatch``/``ifNoneMatch``, endpoints), where a
    conditional ``Patient?identifier=system|value`` legitimately holds ``|``; base64 data
    (``Attachment.data``, ``Binary.data``, ``valueBase64Binary``, ``Signature.data``); the narrative
    ``text.div`` (XHTML, checked by its own rules); ``id`` elements (FHIR ids cannot hold them).
    The partition key is not part of the Bundle and is not checked.

``coding-without-system``
    A Coding with no ``system``: every item of a ``coding`` list (CodeableConcept.coding) and the
    elements of type Coding that R4 resources the mappings write hold directly (``Encounter.class``,
    ``Encounter.classHistory.class``, ``MessageHeader.eventCoding``, ``meta.tag``,
    ``meta.security``, ``DocumentReference.content.format``, ``value[x]`` as ``valueCoding``).

``identifier-without-system``
    An Identifier with no ``system``: every ``identifier`` (a list on resources, one on
    References), ``masterIdentifier`` and ``valueIdentifier``.

The check reads nothing but the Bundle: it does not know the mappings, so it can judge them.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from broker.mapping.loader import MappingSet

__all__ = ["RULES", "StyleFinding", "check_style", "hl7_syntax", "style_of_file"]

RULES = ("hl7-syntax", "coding-without-system", "identifier-without-system")
"""Every rule a StyleFinding can name."""

_ESCAPE = re.compile(
    r"\\(?:[FSTREHN]|X[0-9A-Fa-f]*|Z[^\\]*|C[0-9A-Fa-f]{4}|M[0-9A-Fa-f]{4,6}"
    r"|\.(?:br|fi|nf|ce|sp\s*\d*|in\s*[+-]?\d*|ti\s*[+-]?\d*|sk\s*[+-]?\d*))\\"
)
_POWER_OF_TEN = re.compile(r"\b10\^[+-]?\d+")
_REPETITION_OR_FIELD = re.compile(r"\S[~|]\S")
_SUBCOMPONENTS = re.compile(r"[^\s&]*&[^\s&]*&")
_FHIR_TOKEN = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:[^\s|^~\\]*\|[^\s|^~\\]+")
"""``system|value`` with an absolute URI as system: FHIR's token syntax (a message id built
from a FHIR input's Bundle.identifier, a partition key), not HL7's field separator."""

_URI_ELEMENTS = frozenset(
    {
        "system",
        "url",
        "fullUrl",
        "profile",
        "reference",
        "endpoint",
        "ifNoneExist",
        "ifMatch",
        "ifNoneMatch",
        "implicitRules",
        "instantiatesCanonical",
        "instantiatesUri",
        "valueUri",
        "valueUrl",
        "valueCanonical",
        "valueOid",
        "valueUuid",
    }
)
"""Elements of type uri/url/canonical/oid/uuid: their syntax is not text."""

_BASE64_ELEMENTS = frozenset({"data", "valueBase64Binary"})
"""Attachment.data, Binary.data, Signature.data, valueBase64Binary."""

_CODING_ELEMENTS = frozenset(
    {
        "Encounter.class",
        "Encounter.classHistory.class",
        "MessageHeader.eventCoding",
        "DocumentReference.content.format",
    }
)
"""Elements of type Coding (not CodeableConcept), as ``Type.path`` without indexes."""

_CODING_ANYWHERE = frozenset({"valueCoding", "meta.tag", "meta.security"})
_IDENTIFIER_ELEMENTS = frozenset({"identifier", "masterIdentifier", "valueIdentifier"})


@dataclass(frozen=True)
class StyleFinding:
    """One element that does not read as FHIR.

    Attributes:
        path: the element, from ``Bundle`` (``Bundle.entry[2].resource.code.coding[0]``).
        rule: one of RULES.
        detail: what is wrong: the offending string, or the code/value without a system.
    """

    path: str
    rule: str
    detail: str

    def __str__(self) -> str:
        return f"{self.path}: {self.rule}: {self.detail}"


def hl7_syntax(text: str) -> str | None:
    """What in ``text`` is HL7 v2 syntax (``escape \\T\\``, ``component ^``...), or None."""
    if (m := _ESCAPE.search(text)) is not None:
        return f"escape {m.group(0)}"
    if "^" in _POWER_OF_TEN.sub("", text):
        return "component separator ^"
    if (m := _REPETITION_OR_FIELD.search(text)) is not None and not _FHIR_TOKEN.fullmatch(text):
        kind = "repetition" if m.group(0)[1] == "~" else "field"
        return f"{kind} separator {m.group(0)[1]}"
    if _SUBCOMPONENTS.search(text) is not None:
        return "subcomponent separators &"
    return None


def check_style(bundle: Mapping[str, Any]) -> list[StyleFinding]:
    """Every style finding of ``bundle``, in document order."""
    return list(_walk(bundle, "Bundle", "Bundle", ""))


def _walk(node: Any, path: str, rtype: str, rel: str) -> Iterator[StyleFinding]:
    """Findings of ``node`` at ``path``; ``rtype`` is the enclosing resource's type and
    ``rel`` the path inside it without indexes (``location.location.display``)."""
    if isinstance(node, Mapping):
        if isinstance(node.get("resourceType"), str):
            rtype, rel = node["resourceType"], ""
        yield from _check_object(node, path, rtype, rel)
        for key, value in node.items():
            child_rel = f"{rel}.{key}" if rel else key
            if key in _URI_ELEMENTS or key in _BASE64_ELEMENTS or key in ("id", "div"):
                continue
            if isinstance(value, list):
                for i, item in enumerate(value):
                    yield from _element(item, f"{path}.{key}[{i}]", rtype, child_rel)
            else:
                yield from _element(value, f"{path}.{key}", rtype, child_rel)


def _element(value: Any, path: str, rtype: str, rel: str) -> Iterator[StyleFinding]:
    if isinstance(value, str):
        if (what := hl7_syntax(value)) is not None:
            yield StyleFinding(path, "hl7-syntax", f"{what} in {value!r}")
    elif isinstance(value, Mapping | list):
        yield from _walk(value, path, rtype, rel)


def _check_object(
    node: Mapping[str, Any], path: str, rtype: str, rel: str
) -> Iterator[StyleFinding]:
    """The Coding and Identifier rules for the object ``node`` at ``path``."""
    key = rel.rsplit(".", 1)[-1]
    tail2 = ".".join(rel.split(".")[-2:])
    is_coding = (
        key == "coding"
        or f"{rtype}.{rel}" in _CODING_ELEMENTS
        or key in _CODING_ANYWHERE
        or tail2 in _CODING_ANYWHERE
    )
    if is_coding and not node.get("system"):
        shown = node.get("code") or node.get("display") or "(no code)"
        yield StyleFinding(path, "coding-without-system", f"code {shown!r}")
    if key in _IDENTIFIER_ELEMENTS and not node.get("system"):
        shown = node.get("value") or "(no value)"
        yield StyleFinding(path, "identifier-without-system", f"value {shown!r}")


def style_of_file(mappings: MappingSet, file: Path, adapter: str = "style") -> list[StyleFinding]:
    """Map ``file`` (HL7 v2 ER7, or FHIR R4 JSON when it starts with ``{``) as the pipeline
    does, as if received from ``adapter``, and check the Bundle it gives.

    Raises:
        MessageError: the message is refused (parse error, no mapping, canonical check).
        OSError: the file cannot be read.
    """
    from broker.mapping.golden import CONTEXT
    from broker.mapping.message import FHIR_JSON, HL7V2, map_message
    from broker.parsing.fhir import looks_like_json

    raw = file.read_bytes()
    result = map_message(
        raw,
        mappings,
        source=adapter,
        envelope_id=CONTEXT.envelope_id,
        received_at=CONTEXT.received_at,
        content_type=FHIR_JSON if looks_like_json(raw) else HL7V2,
        full_validation=True,
    )
    return check_style(result.bundle)
