"""FHIRPath expressions of the FHIR inbound files, checked and compiled once at load (fhirpathpy).

fhirpathpy's own ``parse`` recovers from syntax errors silently and reports unknown functions
only when they run, so ``compile_path`` first parses with its ANTLR grammar and a listener that
stops at the first error, then checks every function name against fhirpathpy's table.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import fhirpathpy
from antlr4 import CommonTokenStream, InputStream, Token  # type: ignore[import-untyped]
from antlr4.error.ErrorListener import ErrorListener  # type: ignore[import-untyped]
from fhirpathpy.engine.invocations import invocation_registry
from fhirpathpy.models import models
from fhirpathpy.parser import parse
from fhirpathpy.parser.generated.FHIRPathLexer import FHIRPathLexer
from fhirpathpy.parser.generated.FHIRPathParser import FHIRPathParser

__all__ = ["Expression", "FHIRPathSyntaxError", "compile_path"]

_R4 = models["r4"]


class FHIRPathSyntaxError(ValueError):
    """An expression that is not FHIRPath; ``column`` is 1-based inside the expression."""

    def __init__(self, reason: str, column: int) -> None:
        self.reason = reason
        self.column = column
        super().__init__(f"column {column}: {reason}")


class _Stop(ErrorListener):  # type: ignore[misc]  # antlr4 has no type hints
    def syntaxError(
        self, recognizer: Any, offending: Any, line: int, column: int, msg: str, e: Any
    ) -> None:
        # ANTLR lists every token it could expect; the offending token and column say enough.
        short = msg.split(" expecting {")[0]
        reason = f"not valid FHIRPath ({short})"
        raise FHIRPathSyntaxError(reason, column + 1)


def _check_syntax(text: str) -> None:
    lexer = FHIRPathLexer(InputStream(text))
    lexer.removeErrorListeners()
    lexer.addErrorListener(_Stop())
    parser = FHIRPathParser(CommonTokenStream(lexer))
    parser.removeErrorListeners()
    parser.addErrorListener(_Stop())
    parser.expression()
    extra = parser.getCurrentToken()
    if extra.type != Token.EOF:
        reason = f"not valid FHIRPath (unexpected {extra.text!r} after a complete expression)"
        raise FHIRPathSyntaxError(reason, extra.column + 1)


def _functions(node: Any, found: list[str]) -> None:
    if isinstance(node, dict):
        if node.get("type") == "Functn":
            children = node.get("children") or []
            if children and children[0].get("type") == "Identifier":
                found.append(str(children[0].get("text")))
        for child in node.get("children") or []:
            _functions(child, found)


@dataclass(frozen=True)
class Expression:
    """A compiled FHIRPath expression: ``path(resource)`` is the list of its results."""

    text: str
    _run: Callable[..., list[Any]]

    def __call__(self, resource: dict[str, Any]) -> list[Any]:
        """Evaluate on ``resource``; fhirpathpy errors are ``ValueError`` naming the expression."""
        try:
            return list(self._run(resource, None))
        except Exception as exc:  # fhirpathpy raises bare Exception for evaluation failures
            msg = f"FHIRPath {self.text!r} failed ({type(exc).__name__})"
            raise ValueError(msg) from exc


def compile_path(text: str) -> Expression:
    """Check ``text`` and compile it for the R4 model.

    Raises:
        FHIRPathSyntaxError: a syntax error or an unknown function, with its column.
    """
    _check_syntax(text)
    names: list[str] = []
    _functions(parse(text), names)  # type: ignore[no-untyped-call]
    for name in names:
        if name not in invocation_registry:
            column = text.find(f"{name}(") + 1
            reason = f"{name}() is not a FHIRPath function"
            raise FHIRPathSyntaxError(reason, max(column, 1))
    return Expression(text, fhirpathpy.compile(text, model=_R4))
