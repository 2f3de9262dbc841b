"""Validation of the canonical FHIR R4 message Bundle with fhir.resources (R4B models).

Each resource is validated exactly once, with its own model's ``model_validate``; the Bundle
shell is validated without its resources so they are not validated a second time. The caller
keeps the plain dict it passed in (ARCHITECTURE §5: never serialise through the models twice).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from pydantic import BaseModel, ValidationError

from broker.errors import CanonicalError

__all__ = ["validate_bundle"]


@lru_cache(maxsize=64)
def _model(resource_type: str) -> type[BaseModel] | None:
    from fhir.resources.R4B import get_fhir_model_class

    try:
        model: type[BaseModel] = get_fhir_model_class(resource_type)
    except (KeyError, ValueError, ImportError, AttributeError):
        return None
    return model


@lru_cache(maxsize=64)
def _bindings(model: type[BaseModel]) -> dict[str, frozenset[str]]:
    # fhir.resources lists a code's required-binding values in json_schema_extra but does not
    # enforce them; a trailing "+" marks an open list, which is left unchecked.
    found = {}
    for name, info in model.model_fields.items():
        extra = info.json_schema_extra
        values = extra.get("enum_values") if isinstance(extra, dict) else None
        if isinstance(values, list) and values and "+" not in values:
            found[info.alias or name] = frozenset(str(v) for v in values)
    return found


def _dotted(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part == "class_fhir":
            out += ".class"
        else:
            out += f".{part}"
    return out


def _check(model: type[BaseModel], data: dict[str, Any], where: str) -> None:
    try:
        model.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False)
        first = errors[0]
        # pydantic's messages state the expectation, not the input; the input is never quoted.
        msg = f"{where}{_dotted(tuple(first['loc']))} is not valid FHIR R4: {first['msg']}"
        if len(errors) > 1:
            msg += f" (and {len(errors) - 1} more problem(s))"
        raise CanonicalError(msg, location=f"{where}{_dotted(tuple(first['loc']))}") from None
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        msg = f"{where} could not be validated as FHIR R4 ({type(exc).__name__})"
        raise CanonicalError(msg, location=where) from exc


def _references(node: Any, found: list[str]) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "reference" and isinstance(value, str):
                found.append(value)
            elif isinstance(value, dict | list):
                _references(value, found)
    elif isinstance(node, list):
        for item in node:
            _references(item, found)


def validate_bundle(bundle: dict[str, Any]) -> None:
    """Check that ``bundle`` is a valid FHIR R4 message Bundle that Passerelle can route.

    Checks: FHIR R4 validity of the Bundle and of each resource (fhir.resources R4B models),
    ``type`` message, a MessageHeader first, every ``fullUrl`` is ``urn:uuid:<resource id>``, and
    every ``urn:uuid:`` reference points to an entry of the Bundle.

    Raises:
        CanonicalError: naming the element (``Bundle.entry[2].resource.birthDate``), never its
            value.
    """
    try:
        _validate_bundle(bundle)
    except RecursionError:
        # A hand-edited Bundle (dead-letter edit-and-replay) can nest deeper than the models'
        # recursive validation can follow; that is bad input, not a server fault (issue 8).
        msg = "the Bundle is nested too deeply to be validated as FHIR R4"
        raise CanonicalError(msg, location="Bundle") from None


def _validate_bundle(bundle: dict[str, Any]) -> None:
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        raise CanonicalError("the canonical message must be a FHIR Bundle", location="Bundle")
    if bundle.get("type") != "message":
        raise CanonicalError("Bundle.type must be 'message'", location="Bundle.type")
    entries = bundle.get("entry")
    if not isinstance(entries, list) or not entries:
        raise CanonicalError(
            "a message Bundle needs entries, the MessageHeader first", location="Bundle.entry"
        )
    shell_entries = []
    urls = set()
    for index, entry in enumerate(entries):
        where = f"Bundle.entry[{index}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("resource"), dict):
            msg = f"{where} has no resource"
            raise CanonicalError(msg, location=where)
        resource = entry["resource"]
        if index == 0 and resource.get("resourceType") != "MessageHeader":
            raise CanonicalError(
                "the first entry of a message Bundle must be the MessageHeader",
                location="Bundle.entry[0].resource",
            )
        if entry.get("fullUrl") != f"urn:uuid:{resource.get('id')}":
            msg = f"{where}.fullUrl must be urn:uuid:<resource id>"
            raise CanonicalError(msg, location=f"{where}.fullUrl")
        urls.add(entry["fullUrl"])
        shell_entries.append({k: v for k, v in entry.items() if k != "resource"})
    bundle_model = _model("Bundle")
    assert bundle_model is not None
    _check(bundle_model, {**bundle, "entry": shell_entries}, "Bundle")
    for index, entry in enumerate(entries):
        resource = entry["resource"]
        where = f"Bundle.entry[{index}].resource"
        model = _model(str(resource.get("resourceType")))
        if model is None:
            msg = f"{where}.resourceType is not a FHIR R4 resource type"
            raise CanonicalError(
                msg,
                location=f"{where}.resourceType",
            )
        _check(model, resource, where)
        for element, allowed in _bindings(model).items():
            value = resource.get(element)
            # A repeating code (AllergyIntolerance.category, 0..*) is checked item by item.
            values = value if isinstance(value, list) else [value]
            if value is not None and any(v not in allowed for v in values):
                msg = f"{where}.{element} is not a code of its required FHIR R4 value set"
                raise CanonicalError(msg, location=f"{where}.{element}")
        refs: list[str] = []
        _references(resource, refs)
        for ref in refs:
            if ref.startswith("urn:uuid:") and ref not in urls:
                msg = f"{where} refers to urn:uuid: that is not an entry of the Bundle"
                raise CanonicalError(msg, location=where)
