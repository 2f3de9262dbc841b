"""Load a YAML file into a strict pydantic model; every error names file, line and key."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from broker.errors import SpecError

__all__ = ["LineMap", "beside_registration", "load_model", "parse_yaml", "read_yaml"]

_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
"""libyaml's parser when PyYAML has it: the pure-Python one took most of a mappings load
(2.3 of 2.7 s for 16 files, measured), paid at every start-up, reload and ``lint``."""

M = TypeVar("M", bound=BaseModel)
LineMap = dict[tuple[str | int, ...], int]
"""Key path inside the document → 1-based line of the value at that path."""


def _walk(node: yaml.Node, path: tuple[str | int, ...], lines: LineMap) -> None:
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value
            # A key's own line for "unknown key" errors; its value's line for bad values.
            lines[(*path, key, "__key__")] = key_node.start_mark.line + 1
            _walk(value_node, (*path, key), lines)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _walk(item, (*path, index), lines)


def parse_yaml(text: str) -> tuple[yaml.Node | None, Any]:
    """Parse YAML once: the node tree (for line and column numbers) and the data built from it.

    Raises:
        yaml.YAMLError: a syntax error (``MarkedYAMLError`` with its line and column).
    """
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    finally:
        loader.dispose()
    return node, data


def read_yaml(path: Path, error: type[SpecError] = SpecError) -> tuple[Any, LineMap]:
    """Parse a YAML file and return its data and a line map of every key path.

    Raises:
        SpecError (or ``error``): on unreadable files and YAML syntax errors, with the line.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise error(str(path), None, "", f"cannot read the file ({exc})") from exc
    try:
        node, data = parse_yaml(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        reason = f"YAML syntax error: {exc.problem or exc.context}"
        raise error(str(path), line, "", reason) from exc
    except yaml.YAMLError as exc:
        raise error(str(path), None, "", f"YAML syntax error: {exc}") from exc
    lines: LineMap = {}
    if node is not None:
        _walk(node, (), lines)
    return data, lines


def _dotted(loc: tuple[str | int, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _line_for(loc: tuple[str | int, ...], lines: LineMap, unknown_key: bool) -> int | None:
    if unknown_key and (*loc, "__key__") in lines:
        return lines[(*loc, "__key__")]
    for end in range(len(loc), -1, -1):
        if loc[:end] in lines:
            return lines[loc[:end]]
    return None


def validation_errors(
    exc: ValidationError, file: str, lines: LineMap, error: type[SpecError]
) -> list[SpecError]:
    """Translate every pydantic error into a SpecError with file, line and key path."""
    found = []
    for err in exc.errors():
        # Pydantic puts union member and validator names into loc; keep the document's own keys.
        loc: tuple[str | int, ...] = ()
        for part in err["loc"]:
            if (*loc, part) in lines or part == err["loc"][-1]:
                loc = (*loc, part)
        unknown = err["type"] == "extra_forbidden"
        if unknown:
            reason = "unknown key; check its spelling against the documented keys"
        else:
            reason = err["msg"]
        found.append(error(file, _line_for(loc, lines, unknown), _dotted(loc), reason))
    return found


def load_model(path: Path, model: type[M], error: type[SpecError] = SpecError) -> M:
    """Read ``path`` and validate it as ``model``.

    Validators find ``path`` as ``file`` in their validation context (relative paths in the
    document are read from its directory).

    Raises:
        SpecError (or ``error``): the first problem, naming file, line and key; every problem is
            listed in its ``problems`` attribute.
    """
    data, lines = read_yaml(path, error)
    if not isinstance(data, dict):
        raise error(str(path), 1, "", "expected a mapping of keys at the top of the file")
    try:
        return model.model_validate(data, context={"file": path})
    except ValidationError as exc:
        problems = validation_errors(exc, str(path), lines, error)
        first = problems[0]
        first.problems = problems  # type: ignore[attr-defined]
        raise first from None


def beside_registration(
    value: Path, context: dict[str, Any] | None, *, must_exist: bool = False
) -> Path:
    """A path a registration names: relative ones are read from the registration file's
    directory (``file`` in the validation context of :func:`load_model`), else from the working
    directory; ``~`` expanded.

    Raises:
        ValueError: with ``must_exist``, no file there (pydantic reports it at its line).
    """
    value = value.expanduser()
    if not value.is_absolute():
        file = (context or {}).get("file")
        value = (Path(file).parent if file is not None else Path.cwd()) / value
    if not must_exist:
        return value
    if not value.is_file():
        msg = (
            f"no such file {str(value)!r} (a relative path is read from the registration "
            "file's directory)"
        )
        raise ValueError(msg)
    return value.resolve()
