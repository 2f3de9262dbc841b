"""Where compilation is: the file, its line map and versions, and the problems it has found.

Every compile step (source paths, target paths, rules) raises ``SpecProblem`` through
``Where.error``, which finds the line of the nearest key; lint collects them all with
``Where.attempt`` instead of stopping at the first.
"""

from __future__ import annotations

import typing
from collections.abc import Callable
from dataclasses import dataclass, field

from broker.errors import MappingSpecError
from broker.yamlspec import LineMap

__all__ = ["Key", "SpecProblem", "Where", "dotted"]

Key = tuple[str | int, ...]


def dotted(key: Key) -> str:
    """``("resources", 0, "rules", 2)`` → ``resources[0].rules[2]``."""
    dotted = ""
    for part in key:
        dotted += f"[{part}]" if isinstance(part, int) else (f".{part}" if dotted else part)
    return dotted


class SpecProblem(MappingSpecError):
    """A MappingSpecError that keeps its key path as a tuple (lint turns it into a column)."""

    def __init__(self, file: str, line: int | None, path: Key, reason: str) -> None:
        super().__init__(file, line, dotted(path), reason)
        self.path = path


_T = typing.TypeVar("_T")


@dataclass(frozen=True)
class Where:
    """Where compilation is: the file, its line map and versions, and what it has seen.

    ``problems`` is None when loading (the first problem raises) and a list when linting
    (``attempt`` records each problem and compilation goes on with the next part).
    """

    file: str
    lines: LineMap
    versions: tuple[str, ...] = ()
    problems: list[SpecProblem] | None = None
    reads: set[tuple[str, int]] = field(default_factory=set)
    """(segment, field) of every source path compiled: what the unmapped report leaves out."""
    variables: frozenset[str] = frozenset()
    """The ``let:`` variables rules may read as ``$name`` here."""

    def error(self, key: Key, reason: str) -> SpecProblem:
        line = None
        for end in range(len(key), -1, -1):
            if key[:end] in self.lines:
                line = self.lines[key[:end]]
                break
        return SpecProblem(self.file, line, key, reason)

    def attempt(self, compile_part: Callable[[], _T]) -> _T | None:
        """Run one part of the compilation; when linting, record its problem and go on."""
        if self.problems is None:
            return compile_part()
        try:
            return compile_part()
        except SpecProblem as exc:
            if not any(p.path == exc.path and p.reason == exc.reason for p in self.problems):
                self.problems.append(exc)
            return None
