"""The one walk over a mappings root: which files are mappings, shared tables and FHIR inbound files.

``MappingSet.load`` and ``passerelle mappings lint`` both read the files this walk names, so lint
checks exactly what loading reads. A root (or its layers, ``broker.mapping.layers``) holds:

- ``tables/**/*.yaml``, ``*.yml`` and ``*.csv``: shared code tables (``broker.mapping.tables``);
- ``fhir/**/*.yaml``: the FHIR inbound files (``broker.mapping.fhir_in``);
- ``tests/``: golden cases (``broker.mapping.golden``), never a mapping;
- every other ``*.yaml``: an inbound, site or outbound HL7 v2 mapping.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from broker.mapping.layers import MappingRoots, layers, overlay

__all__ = ["FHIR_DIR", "TABLES_DIR", "TESTS_DIR", "MappingFiles", "mapping_files"]

TABLES_DIR = "tables"
"""The folder of a mappings root that holds shared tables (not mapping files)."""
FHIR_DIR = "fhir"
"""The folder of a mappings root that holds the FHIR inbound files."""
TESTS_DIR = "tests"
"""The folder of a mappings root that holds the golden cases."""
TABLE_SUFFIXES = (".yaml", ".yml", ".csv")
"""What a shared table file may end with."""


@dataclass(frozen=True)
class MappingFiles:
    """The files of a mappings root by kind, each sorted by its path relative to its layer.

    When two layers hold the same relative path, only the last layer's file is named.

    Attributes:
        roots: the layers walked, base first.
        tables: the shared table files under ``tables/``.
        mappings: the HL7 v2 mapping files (inbound, site and outbound).
        fhir: the FHIR inbound files under ``fhir/``.
    """

    roots: tuple[Path, ...]
    tables: tuple[Path, ...]
    mappings: tuple[Path, ...]
    fhir: tuple[Path, ...]


def mapping_files(roots: MappingRoots) -> MappingFiles:
    """Walk ``roots`` once and sort its files into tables, mappings and FHIR inbound files."""
    tables: list[Path] = []
    mappings: list[Path] = []
    fhir: list[Path] = []
    for relative, path in overlay(roots, suffixes=TABLE_SUFFIXES).items():
        top = relative.parts[0]
        if top == TABLES_DIR:
            tables.append(path)
        elif path.suffix != ".yaml" or top == TESTS_DIR:
            continue
        elif top == FHIR_DIR:
            fhir.append(path)
        else:
            mappings.append(path)
    return MappingFiles(layers(roots), tuple(tables), tuple(mappings), tuple(fhir))
