"""Promises about our own synthetic samples: what they send agrees with itself once mapped.

A sample that contradicts itself (a mass LOINC term valued in mmol/L) teaches the wrong thing to
every test built on it; until 2026-12-02 (issue 12) four ORU samples did. The LOINC property
check (``unit-mismatch``, mappings/tables/loinc-property.csv) is the judge here.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.errors import HL7v2ParseError, NoMappingError
from broker.mapping import MappingSet
from broker.mapping.golden import CONTEXT
from broker.parsing.hl7v2 import decode, parse

SAMPLES = Path(__file__).resolve().parents[1] / "samples" / "hl7v2"

# Deliberately unmappable (tests/samples/SOURCES.md): broken MSH or an event without a mapping.
UNMAPPABLE = {
    "adt_a17_unsupported.hl7": NoMappingError,
    "broken_encoding_chars.hl7": HL7v2ParseError,
    "broken_missing_msh10.hl7": HL7v2ParseError,
    "broken_no_msh.hl7": HL7v2ParseError,
}
MAPPED = sorted(p.name for p in SAMPLES.glob("*.hl7") if p.name not in UNMAPPABLE)


@pytest.mark.parametrize("name", MAPPED)
def test_sample_sends_units_that_agree_with_its_loinc_codes(
    mappings: MappingSet, name: str
) -> None:
    """Mapping the sample gives no unit-mismatch: each LOINC property matches its OBX-6 unit."""
    result = mappings.map_hl7v2(parse(decode((SAMPLES / name).read_bytes())), CONTEXT)
    mismatches = [(f.location, f.message) for f in result.findings if f.code == "unit-mismatch"]
    assert mismatches == []


@pytest.mark.parametrize("name", sorted(UNMAPPABLE))
def test_only_the_deliberately_broken_samples_are_left_out(mappings: MappingSet, name: str) -> None:
    """Each sample the check above skips really cannot be mapped (so none is skipped by mistake)."""
    with pytest.raises(UNMAPPABLE[name]):
        mappings.map_hl7v2(parse(decode((SAMPLES / name).read_bytes())), CONTEXT)
