"""Target side of a mapping: FHIR element paths checked against the fhir.resources R4B models.

A target path (``identifier[]``, ``period.start``) is resolved at load to its steps, the FHIR
type of the element it writes and its value set; ``put`` writes values along those steps.
"""

from __future__ import annotations

import difflib
import typing
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, TypeAdapter, ValidationError

from broker.mapping.where import Key, Where

__all__ = [
    "Step",
    "Target",
    "close_type",
    "compile_target",
    "fhir_model",
    "put",
    "requirements",
    "resource_base",
]


def fhir_model(type_name: str) -> type[BaseModel] | None:
    """The fhir.resources R4B model class for a resource or element type name, if any."""
    from fhir.resources.R4B import get_fhir_model_class

    try:
        model: type[BaseModel] = get_fhir_model_class(type_name)
    except (KeyError, ValueError, ImportError, AttributeError):
        return None
    return model


def resource_base() -> type[BaseModel]:
    from fhir.resources.R4B.resource import Resource

    base: type[BaseModel] = Resource
    return base


def _element_type(annotation: Any) -> tuple[bool, str | None]:
    """(is a list, element type name or None for primitives) of a fhir.resources field."""
    is_list = False
    name: str | None = None
    stack = [annotation]
    while stack:
        current = stack.pop()
        origin = typing.get_origin(current)
        if origin in (list, typing.List):  # noqa: UP006 - fhir.resources annotates with typing.List
            is_list = True
        if (
            isinstance(current, type)
            and current.__name__.endswith("Type")
            and current.__module__ == "abc"
        ):
            name = current.__name__[:-4]
        stack.extend(typing.get_args(current))
    return is_list, name


Step = tuple[str, bool]


_PRIMITIVE_COMPATIBLE = {
    "string": frozenset({"string", "markdown"}),
    "code": frozenset({"code", "string"}),
    "date": frozenset({"date", "dateTime"}),
}


def _primitive_name(annotation: Any) -> str | None:
    stack = [annotation]
    while stack:
        current = stack.pop()
        for meta in getattr(current, "__metadata__", ()):
            name = type(meta).__name__
            return name[:1].lower() + name[1:]
        stack.extend(typing.get_args(current))
    return None


@dataclass(frozen=True)
class Target:
    """A checked target path: its steps and the FHIR type of the element it writes."""

    steps: tuple[Step, ...]
    model: type[BaseModel] | None
    type_name: str | None
    is_list: bool
    annotation: Any
    enum: frozenset[str] | None

    def accepts(self, returns: str) -> bool:
        if self.type_name is None:
            return True
        return self.type_name == returns or self.type_name in _PRIMITIVE_COMPATIBLE.get(returns, ())

    def check_constant(self, value: Any, where: Where, key: Key) -> None:
        """Validate a constant from the YAML (value:, default:, a map value) at load."""
        if self.annotation is None:
            return
        try:
            TypeAdapter(self.annotation).validate_python([value] if self.is_list else value)
        except ValidationError as exc:
            reason = exc.errors(include_url=False, include_input=False)[0]["msg"]
            msg = f"the value is not a valid FHIR {self.type_name} for this element: {reason}"
            raise where.error(key, msg) from None
        if self.enum is not None and value not in self.enum:
            allowed = ", ".join(sorted(self.enum))
            raise where.error(key, f"{value!r} is not in the element's value set ({allowed})")


def compile_target(text: str, model: type[BaseModel] | None, where: Where, key: Key) -> Target:
    steps: list[Step] = []
    parts = text.split(".")
    type_name: str | None = None
    is_list = False
    annotation: Any = None
    enum: frozenset[str] | None = None
    for index, part in enumerate(parts):
        append = part.endswith("[]")
        name = part[:-2] if append else part
        if not name.isidentifier():
            raise where.error(
                key,
                f"{text!r} is not an element path; "
                "expected names such as identifier[] or period.start",
            )
        if append and index != len(parts) - 1:
            raise where.error(
                key,
                f"{text!r}: only the last element may end with []; build list items with rules:",
            )
        steps.append((name, append))
        if model is None:
            type_name, annotation, enum = None, None, None
            continue
        fields = {(f.alias or n): f for n, f in model.model_fields.items()}
        info = fields.get(name)
        if info is None or name in ("resourceType", "fhir_comments") or name.endswith("__ext"):
            names = [
                n for n in fields if n[0] != "_" and n not in ("resourceType", "fhir_comments")
            ]
            close = difflib.get_close_matches(name, names, n=3)
            expected = " or ".join(close) if close else f"an element of {model.__name__}"
            reason = f"{model.__name__} has no element {name!r} (FHIR R4); expected {expected}"
            raise where.error(key, reason)
        is_list, complex_name = _element_type(info.annotation)
        if is_list and not append:
            raise where.error(key, f"{model.__name__}.{name} repeats; write {name}[] to add to it")
        if append and not is_list:
            raise where.error(key, f"{model.__name__}.{name} does not repeat; drop the []")
        if complex_name is None and index != len(parts) - 1:
            raise where.error(key, f"{text!r}: {name} is a primitive and has no elements")
        model = fhir_model(complex_name) if complex_name else None
        type_name = complex_name or _primitive_name(info.annotation)
        annotation = info.annotation
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        values = extra.get("enum_values")
        enum = (
            frozenset(str(v) for v in values)
            if isinstance(values, list) and values and "+" not in values
            else None
        )
    return Target(tuple(steps), model, type_name, is_list, annotation, enum)


def requirements(model: type[BaseModel]) -> tuple[tuple[str, ...], tuple[tuple[str, ...], ...]]:
    """The required elements of a FHIR model and its choice groups ``value[x]`` (aliases).

    fhir.resources marks the two kinds of 1..1 (or 1..*) element differently: a primitive
    (``status``) carries ``element_required`` (its value may instead sit in ``_status``), a
    complex one (``Observation.code``, ``DocumentReference.content``) is a required pydantic
    field. Both are required here: reading only the first let a DocumentReference without
    content through the per-message check.
    """
    required: list[str] = []
    choices: dict[str, list[str]] = {}
    for name, info in model.model_fields.items():
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        alias = info.alias or name
        if extra.get("element_required") or (info.is_required() and alias != "resourceType"):
            required.append(alias)
        prefix = extra.get("one_of_many")
        if isinstance(prefix, str):
            choices.setdefault(prefix, []).append(alias)
    return tuple(required), tuple(tuple(group) for group in choices.values())


def put(target: dict[str, Any], steps: tuple[Step, ...], values: list[Any]) -> None:
    node = target
    for name, _ in steps[:-1]:
        child = node.get(name)
        if not isinstance(child, dict):
            child = {}
            node[name] = child
        node = child
    name, append = steps[-1]
    if append:
        existing = node.get(name)
        if isinstance(existing, list):
            existing.extend(values)
        else:
            node[name] = list(values)
    else:
        node[name] = values[0]


def close_type(name: str) -> str:
    """The R4B resource types spelt like ``name`` (for a misspelt ``type:``)."""
    import pkgutil

    import fhir.resources.R4B as r4b

    modules = [m.name for m in pkgutil.iter_modules(r4b.__path__)]
    names = []
    for module in difflib.get_close_matches(name.lower(), modules, n=3):
        model = _fhir_model_by_module(module)
        if model is not None and issubclass(model, resource_base()):
            names.append(model.__name__)
    return " or ".join(names) if names else "a resource type such as Patient or Observation"


def _fhir_model_by_module(module: str) -> type[BaseModel] | None:
    """The model class a fhir.resources R4B module defines under its own name, if any."""
    import importlib

    loaded = importlib.import_module(f"fhir.resources.R4B.{module}")
    for value in vars(loaded).values():
        if isinstance(value, type) and value.__name__.lower() == module:
            found: type[BaseModel] = value
            return found
    return None
