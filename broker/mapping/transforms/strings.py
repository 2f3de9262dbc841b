"""Strings: ER7 text to plain FHIR strings, and the string transforms (concat, split, regex,
upper, lower, trim)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from broker.mapping.transforms.base import Env, SourceValue, Transform, first_value
from broker.parsing.hl7v2 import Delimiters, unescape

__all__ = [
    "TRANSFORMS",
    "fn_concat",
    "fn_lower",
    "fn_regex",
    "fn_split",
    "fn_string",
    "fn_trim",
    "fn_upper",
    "formatted_text",
    "plain_text",
]


def fn_string(values: Sequence[SourceValue | None], env: Env, args: Any) -> str | None:
    """ST/TX/FT/ID → FHIR string, as plain text (``plain_text``) and trimmed; ``None`` when blank."""
    v = first_value(values)
    text = plain_text(v.raw, v.delims).strip() if v is not None else ""
    return text or None


# Each reads the whole value unescaped (read a component with a path such as PID-5.1) and gives a
# FHIR string, or None when nothing is left (FHIR strings are never empty).


def _text(v: SourceValue | None) -> str:
    return plain_text(v.raw, v.delims).strip() if v is not None else ""


class _ConcatArgs(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    separator: str = " "
    """Put between the values present; empty values are skipped, never doubled separators."""


def fn_concat(values: Sequence[SourceValue | None], env: Env, args: Any) -> str | None:
    """Join the non-empty values of several source paths with ``separator``."""
    sep = args.separator if isinstance(args, _ConcatArgs) else " "
    parts = [t for t in (_text(v) for v in values) if t]
    return sep.join(parts) or None


class _SplitArgs(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    separator: str = Field(min_length=1)
    index: int = 1
    """Which part, from 1; negative counts from the end (-1 is the last part)."""

    @field_validator("index")
    @classmethod
    def _not_zero(cls, value: int) -> int:
        if value == 0:
            raise ValueError("parts are numbered from 1 (or from -1 at the end); 0 is no part")
        return value


def fn_split(values: Sequence[SourceValue | None], env: Env, args: Any) -> str | None:
    """The ``index``-th part of the value split on ``separator``, trimmed; None when absent."""
    assert isinstance(args, _SplitArgs)  # validated at load: split requires args
    text = _text(first_value(values))
    parts = text.split(args.separator) if text else []
    index = args.index - 1 if args.index > 0 else args.index
    if not -len(parts) <= index < len(parts):
        return None
    return parts[index].strip() or None


class _RegexArgs(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)
    pattern: re.Pattern[str]
    """A Python regular expression, compiled at load; ``search`` finds the first match."""
    group: int | str = 1
    """The group to keep: a number (0 is the whole match) or a (?P<name>...) name."""

    @field_validator("pattern", mode="before")
    @classmethod
    def _compile(cls, value: Any) -> re.Pattern[str]:
        if not isinstance(value, str):
            raise ValueError("expected the pattern as a string")
        try:
            return re.compile(value)
        except re.error as exc:
            where = f" at position {exc.pos}" if exc.pos is not None else ""
            msg = f"invalid regular expression: {exc.msg}{where}; expected a Python regex"
            raise ValueError(msg) from None

    @model_validator(mode="after")
    def _group_exists(self) -> _RegexArgs:
        group, pattern = self.group, self.pattern
        if isinstance(group, int) and not 0 <= group <= pattern.groups:
            msg = f"the pattern has {pattern.groups} group(s); expected group 0 to {pattern.groups}"
            raise ValueError(msg)
        if isinstance(group, str) and group not in pattern.groupindex:
            names = ", ".join(pattern.groupindex) or "(none)"
            msg = f"the pattern has no group named {group!r}; expected one of {names}"
            raise ValueError(msg)
        return self


def fn_regex(values: Sequence[SourceValue | None], env: Env, args: Any) -> str | None:
    """The ``group`` of the first match of ``pattern`` in the value; None when it does not match."""
    assert isinstance(args, _RegexArgs)  # validated at load: regex requires args
    text = _text(first_value(values))
    found = args.pattern.search(text) if text else None
    if found is None:
        return None
    kept = found.group(args.group)
    return (kept.strip() or None) if kept else None


def fn_upper(values: Sequence[SourceValue | None], env: Env, args: Any) -> str | None:
    """The value in upper case, trimmed."""
    return _text(first_value(values)).upper() or None


def fn_lower(values: Sequence[SourceValue | None], env: Env, args: Any) -> str | None:
    """The value in lower case, trimmed."""
    return _text(first_value(values)).lower() or None


def fn_trim(values: Sequence[SourceValue | None], env: Env, args: Any) -> str | None:
    """The value without leading and trailing spaces, inner runs of spaces made single."""
    return " ".join(_text(first_value(values)).split()) or None


# The v2-to-FHIR IG OBX → Observation map picks value[x] by OBX-2; each function below serves the
# rows of one OBX-2 type and the ORU mapping guards each rule with ``when: {path: OBX-2, ...}``.

# FT formatting commands (v2.5.1 §2.7.6) that ``unescape`` keeps as sent: line and space commands
# become newlines and spaces; fill, indent and centring have no meaning in a FHIR string.
_FT_COMMAND = re.compile(r"\.(sp|sk|in|ti|ce|fi|nf)\s*([+-]?\d*)")


# Escapes plain text has no use for (v2.5.1 §2.7.2-§2.7.6): locally defined (\Zxx\), character
# set switches (\Cxxyy\, \Mxxyyzz\: the text is already decoded) and unknown formatting
# commands. Kept, they would reach FHIR strings as HL7 syntax.
_DROPPED_ESCAPE = re.compile(r"^(?:Z.*|C[0-9A-Fa-f]{4}|M[0-9A-Fa-f]{4,6}|\.(?!br$).*)$")


def plain_text(raw: str, delims: Delimiters) -> str:
    """One field repetition (or component) as sent → plain text for a FHIR string.

    Components and subcomponents are joined with a space (an ST field sent with carets, an RP
    pointer), FT formatting commands and escapes are decoded (``\\.br\\`` newline, ``\\H\\``
    and ``\\N\\`` dropped, ``\\F\\ \\S\\ \\T\\ \\R\\ \\E\\`` the delimiter they
    stand for, ``\\Xhh\\`` its bytes) and escapes with no meaning in plain text are dropped:
    no HL7 syntax reaches a FHIR string.
    """
    if delims.component not in raw and delims.subcomponent not in raw:
        return formatted_text(raw, delims)
    parts = (p for c in raw.split(delims.component) for p in c.split(delims.subcomponent))
    return " ".join(t for t in (formatted_text(p, delims).strip() for p in parts) if t)


def formatted_text(raw: str, delims: Delimiters) -> str:
    """One FT/TX repetition as plain text: formatting commands decoded, then escapes resolved."""
    esc = delims.escape
    if not esc or esc not in raw:
        return raw
    e = re.escape(esc)

    def command(match: re.Match[str]) -> str:
        inner = _FT_COMMAND.fullmatch(match.group(1))
        if inner is None:
            if _DROPPED_ESCAPE.match(match.group(1)):
                return ""  # \Zxx\ local, \Cxxyy\ \Mxxyyzz\ character-set switches, \.xx\
            return match.group(0)  # \F\, \.br\, \Xhh\ ...: resolved by unescape below
        name, number = inner.groups()
        count = int(number) if number.lstrip("+-") else 1
        if name == "sp":
            return "\n" * (max(count, 1) + 1)  # end the line, then skip count blank lines
        if name == "sk":
            return " " * max(count, 1)
        if name == "ce":
            return "\n"
        return ""

    return unescape(re.sub(f"{e}([^{e}]*){e}", command, raw), delims)


TRANSFORMS: dict[str, Transform] = {
    "string": Transform(fn_string, "string"),
    "concat": Transform(fn_concat, "string", sources=9, args=_ConcatArgs, optional=True),
    "split": Transform(fn_split, "string", args=_SplitArgs),
    "regex": Transform(fn_regex, "string", args=_RegexArgs),
    "upper": Transform(fn_upper, "string"),
    "lower": Transform(fn_lower, "string"),
    "trim": Transform(fn_trim, "string"),
}
"""The strings transforms by the name a rule's ``function:`` uses."""
