"""Where mapping files come from: the packaged base set, and a site's directory laid over it.

A mappings root is one directory or several *layers* of them (``MappingRoots``), the base
first. A file is known by its path relative to its layer (``hl7v2/adt.yaml``,
``tables/hl7-0001-administrative-sex.yaml``). When two layers hold the same relative path, the
last layer's file is read and the other is not: a site replaces a base file by writing its own
at the same place, and adds files anywhere else (``sites/``, ``tables/``, ``fhir/sites/``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path, PurePath
from typing import TypeAlias

__all__ = ["MappingRoots", "layers", "overlay"]

MappingRoots: TypeAlias = Path | Sequence[Path]
"""One mappings directory, or layers of them with the base first."""


def layers(roots: MappingRoots) -> tuple[Path, ...]:
    """The layers of ``roots``, base first, each directory once."""
    given = (roots,) if isinstance(roots, Path) else tuple(roots)
    found: dict[Path, Path] = {}
    for root in given:
        found.setdefault(root.resolve(), root)
    return tuple(found.values())


def overlay(
    roots: MappingRoots, folder: str = "", suffixes: tuple[str, ...] = (".yaml",)
) -> dict[PurePath, Path]:
    """Every file ending in one of ``suffixes`` under ``folder`` of each layer.

    Returns:
        Path relative to its layer → the file read for it (the last layer's), sorted by the
        relative path. Layers without ``folder`` add nothing.
    """
    found: dict[PurePath, Path] = {}
    for root in layers(roots):
        directory = root / folder if folder else root
        if not directory.is_dir():
            continue
        for path in directory.rglob("*"):
            if path.suffix in suffixes and path.is_file():
                found[path.relative_to(root)] = path
    return dict(sorted(found.items()))
