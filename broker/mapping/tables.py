"""Shared code tables: ``mappings/tables/*.yaml`` and ``*.csv``, used by any mapping's ``map:``.

A table is a value map that several mappings share (HL7 table 0078, a lab's local codes to LOINC).
A rule names it with ``map:`` exactly like a map declared in its own file; a file-local map with
the same name as a table is an error naming both files, never a silent override.

YAML tables have ``id`` (the name), optional ``system``, ``note`` and ``default``, and ``values``.
CSV tables are named after the file (``lab-local-to-loinc.csv`` → ``lab-local-to-loinc``) and
have one of two headers (lines starting with ``#`` are comments):

- ``code,system,target_code,display``: each row maps ``code`` to the FHIR Coding
  ``{system, code: target_code, display}`` (display may be empty);
- ``code,target``: each row maps ``code`` to the string ``target``.

Every problem names the file and line (for CSV, the row's line).
"""

from __future__ import annotations

import csv
import hashlib
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from broker.errors import MappingSpecError
from broker.mapping.spec import SharedTable, TableSpec
from broker.yamlspec import read_yaml, validation_errors

__all__ = ["CODING_HEADER", "PLAIN_HEADER", "load_tables"]

CODING_HEADER = ("code", "system", "target_code", "display")
PLAIN_HEADER = ("code", "target")


def load_tables(
    files: Sequence[Path], problems: list[MappingSpecError] | None = None
) -> dict[str, SharedTable]:
    """Load the table files of a mappings root (``MappingFiles.tables``), by name.

    Args:
        files: the table files, as ``broker.mapping.files.mapping_files`` names them (a file
            overridden by a later layer is not among them).
        problems: when given, every problem is appended to it instead of raised (lint).

    Raises:
        MappingSpecError: the first problem (file, line, what is wrong).
    """
    tables: dict[str, SharedTable] = {}
    for path in files:
        try:
            table = _read_csv(path) if path.suffix == ".csv" else _read_yaml(path)
            other = tables.get(table.name)
            if other is not None:
                line = table.lines.get(("id",), 1)
                reason = (
                    f"table {table.name!r} is also defined by {other.file}; "
                    "expected one table per name"
                )
                raise MappingSpecError(table.file, line, "id", reason)
            sha = hashlib.sha256(path.read_bytes()).hexdigest()
            tables[table.name] = table.model_copy(update={"sha256": sha})
        except MappingSpecError as exc:
            if problems is None:
                raise
            problems.extend(getattr(exc, "problems", None) or [exc])
    return tables


def _read_yaml(path: Path) -> SharedTable:
    file = str(path)
    data, lines = read_yaml(path, MappingSpecError)
    if not isinstance(data, dict):
        raise MappingSpecError(
            file, 1, "", "expected a table: id:, values: and optionally default:"
        )
    try:
        spec = TableSpec.model_validate(data)
    except ValidationError as exc:
        found = validation_errors(exc, file, lines, MappingSpecError)
        first = found[0]
        first.problems = found  # type: ignore[attr-defined]
        raise first from None
    return SharedTable(
        name=spec.id,
        file=file,
        lines=dict(lines),
        system=spec.system,
        note=spec.note,
        values=spec.values,
        default=spec.default,
    )


def _read_csv(path: Path) -> SharedTable:
    file = str(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise MappingSpecError(file, None, "", f"cannot read the file ({exc})") from exc
    reader = csv.reader(io.StringIO(text, newline=""))
    header: tuple[str, ...] = ()
    try:
        for row in reader:
            if row and not row[0].lstrip().startswith("#"):
                header = tuple(h.strip() for h in row)
                break
    except csv.Error as exc:
        raise MappingSpecError(file, reader.line_num, "", f"CSV syntax error: {exc}") from None
    header_line = max(reader.line_num, 1)
    if header not in (CODING_HEADER, PLAIN_HEADER):
        reason = (
            f"the header is {','.join(header) or '(empty)'}; expected "
            f"{','.join(CODING_HEADER)} or {','.join(PLAIN_HEADER)}"
        )
        raise MappingSpecError(file, header_line, "", reason)
    values: dict[str, Any] = {}
    lines: dict[tuple[str | int, ...], int] = {("id",): header_line}
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            raise MappingSpecError(file, reader.line_num, "", f"CSV syntax error: {exc}") from None
        line = reader.line_num
        if not row or all(not cell.strip() for cell in row) or row[0].lstrip().startswith("#"):
            continue
        if len(row) != len(header):
            reason = f"the row has {len(row)} columns; expected {len(header)} ({','.join(header)})"
            raise MappingSpecError(file, line, "", reason)
        cells = [cell.strip() for cell in row]
        code = cells[0]
        if not code:
            raise MappingSpecError(file, line, "code", "the code is empty; expected a code")
        if code in values:
            reason = f"code {code!r} is also on line {lines[('values', code)]}; expected it once"
            raise MappingSpecError(file, line, "code", reason)
        if header == PLAIN_HEADER:
            if not cells[1]:
                raise MappingSpecError(
                    file, line, "target", "the target is empty; expected a value"
                )
            values[code] = cells[1]
        else:
            _, system, target_code, display = cells
            if not system or not target_code:
                reason = "system and target_code are required; expected a code system URI and code"
                raise MappingSpecError(file, line, "", reason)
            coding = {"system": system, "code": target_code}
            if display:
                coding["display"] = display
            values[code] = coding
        lines[("values", code)] = line
    if not values:
        raise MappingSpecError(
            file, header_line, "", "the table has no rows; expected at least one"
        )
    return SharedTable(name=path.stem, file=file, lines=lines, values=values, system=path.stem)
