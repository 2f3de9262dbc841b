"""Quantities: NM values with OBX-6 units (v2.5.1 §2A.48) to FHIR Quantity, and reference ranges."""

from __future__ import annotations

import csv
import re
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from broker.mapping.transforms.base import Env, SourceValue, Transform
from broker.mapping.transforms.codes import UCUM, is_code
from broker.mapping.transforms.strings import plain_text
from broker.settings import BASE_MAPPINGS_DIR

__all__ = [
    "TRANSFORMS",
    "UCUM_UNITS",
    "check_unit",
    "fn_quantity",
    "fn_reference_range",
    "parse_number",
    "quantity_units",
    "unit_properties",
]


# Common laboratory units that are already valid UCUM codes when the sender leaves CE-3 empty.
UCUM_UNITS = frozenset(
    {
        "%",
        "g/L",
        "g/dL",
        "mg/dL",
        "mg/L",
        "mmol/L",
        "umol/L",
        "nmol/L",
        "pmol/L",
        "mol/L",
        "U/L",
        "IU/L",
        "[IU]/L",
        "mL/min",
        "10*9/L",
        "10*12/L",
        "10*3/uL",
        "10*6/uL",
        "fL",
        "pg",
        "s",
        "min",
        "h",
        "mm[Hg]",
        "kg",
        "g",
        "cm",
        "m",
        "Cel",
        "/min",
        "mEq/L",
        "ng/mL",
        "ug/L",
        "mIU/L",
        "mU/L",
        "mm/h",
        "L/L",
        "1",
    }
)


_NUMBER = re.compile(r"^\s*(<=|>=|<|>)?\s*([+-]?(?:\d+(?:\.\d*)?|\.\d+))\s*$")


def parse_number(text: str) -> tuple[str | None, int | float] | None:
    """An NM value with its optional comparator (``<``, ``>=``...), or None when not a number."""
    m = _NUMBER.match(text)
    if not m:
        return None
    digits = m.group(2)
    number: int | float = float(digits) if "." in digits else int(digits)
    return m.group(1), number


def quantity_units(units: SourceValue | None) -> dict[str, Any]:
    """The Quantity unit elements of an OBX-6 CE: ``unit``, and UCUM ``system``/``code`` when valid."""
    if units is None:
        return {}
    code, text, system = units.comp(1).strip(), units.comp(2).strip(), units.comp(3).strip()
    out: dict[str, Any] = {}
    if code or text:
        out["unit"] = text or code
    if code and is_code(code) and (system == "UCUM" or (not system and code in UCUM_UNITS)):
        out["system"] = UCUM
        out["code"] = code
    return out


def fn_quantity(values: Sequence[SourceValue | None], env: Env, args: Any) -> dict[str, Any] | None:
    """NM (OBX-5) + CE units (OBX-6) → Quantity, UCUM-coded when the unit is UCUM.

    With a third source, the observation's code (OBX-3), a LOINC code whose property the unit
    contradicts (a mass concentration in mmol/L) is a ``unit-mismatch`` warning
    (``check_unit``); the value is kept as sent.
    """
    v = values[0] if values else None
    if v is None:
        return None
    parsed = parse_number(v.text)
    if parsed is None:
        env.warn("invalid-number", v, "the value is not an HL7 NM number; the element was left out")
        return None
    comparator, number = parsed
    quantity: dict[str, Any] = {"value": number}
    if comparator:
        quantity["comparator"] = comparator
    units = values[1] if len(values) > 1 else None
    quantity.update(quantity_units(units))
    code = values[2] if len(values) > 2 else None
    if units is not None and code is not None:
        check_unit(code, units, env)
    return quantity


def _table_csv(name: str) -> dict[str, str]:
    """A ``code,target`` table of the base mapping set (``mappings/tables/<name>.csv``)."""
    text = (BASE_MAPPINGS_DIR / "tables" / f"{name}.csv").read_text(encoding="utf-8")
    rows = csv.reader(line for line in text.splitlines() if not line.startswith("#"))
    next(rows, None)  # the header
    return {row[0]: row[1] for row in rows if len(row) == 2}


@lru_cache(maxsize=1)
def unit_properties() -> tuple[dict[str, str], dict[str, frozenset[str]]]:
    """LOINC code → property, and UCUM unit → the properties it can express (mappings/tables)."""
    loinc = _table_csv("loinc-property")
    units = {unit: frozenset(p.split()) for unit, p in _table_csv("ucum-unit-property").items()}
    return loinc, units


def check_unit(code: SourceValue, units: SourceValue, env: Env) -> None:
    """A ``unit-mismatch`` warning when OBX-3's LOINC property and OBX-6's unit disagree.

    OBX-3's LOINC coding is its first or alternate triplet with coding system LN; a code or a
    unit missing from the tables (``loinc-property.csv``, ``ucum-unit-property.csv``) is not
    judged. The finding names the property and the unit's kind, never the value.
    """
    loinc_property, unit_property = unit_properties()
    unit = units.comp(1).strip()
    expressed = unit_property.get(unit)
    if expressed is None:
        return
    for base in (1, 4):
        if code.comp(base + 2).strip() != "LN":
            continue
        expected = loinc_property.get(code.comp(base).strip())
        if expected is not None and expected not in expressed:
            env.warn(
                "unit-mismatch",
                units,
                f"the LOINC code in OBX-3 measures {expected} ({_PROPERTY_NAMES.get(expected, '')}) "
                f"but the OBX-6 unit measures {'/'.join(sorted(expressed))}; the value was kept: "
                "the code or the unit is wrong (mappings/tables/loinc-property.csv)",
            )
            return


_PROPERTY_NAMES = {
    "MCnc": "mass concentration",
    "SCnc": "substance (molar) concentration",
    "NCnc": "number concentration",
    "CCnc": "catalytic concentration",
    "ACnc": "arbitrary concentration",
    "MFr": "mass fraction",
    "VFr": "volume fraction",
    "EntVol": "entitic volume",
    "EntMass": "entitic mass",
    "Pres": "pressure",
    "Vel": "velocity",
}


_RANGE = re.compile(r"^\s*([+-]?\d+(?:\.\d+)?)\s*-\s*([+-]?\d+(?:\.\d+)?)\s*$")


def fn_reference_range(
    values: Sequence[SourceValue | None], env: Env, args: Any
) -> dict[str, Any] | None:
    """OBX-7 references range (``3.5-5.0``, ``<5``, ``>10``) + OBX-6 units → referenceRange.

    OBX-7 is ST, but some senders send it as a composite (``35-150^35^150``: the text, then
    low and high, as the v2.x SN/NR types): the first component is the range, and the
    others give low and high when it cannot be read. No HL7 syntax reaches ``text``.
    """
    v = values[0] if values else None
    if v is None:
        return None
    text = " ".join(plain_text(v.comp_raw(1), v.delims).split())
    units = quantity_units(values[1] if len(values) > 1 else None)
    found: dict[str, Any] = {}
    m = _RANGE.match(text)
    parsed = parse_number(text)
    if m:
        low, high = parse_number(m.group(1)), parse_number(m.group(2))
        assert low is not None
        assert high is not None
        found = {"low": {"value": low[1], **units}, "high": {"value": high[1], **units}}
    elif parsed and parsed[0] in ("<", "<="):
        found = {"high": {"value": parsed[1], **units}}
    elif parsed and parsed[0] in (">", ">="):
        found = {"low": {"value": parsed[1], **units}}
    else:
        for key, number in (("low", parse_number(v.comp(2))), ("high", parse_number(v.comp(3)))):
            if number is not None and not number[0]:
                found[key] = {"value": number[1], **units}
    composite = v.delims.component in v.raw
    if text and (composite or not found):
        found["text"] = text
    return found or None


TRANSFORMS: dict[str, Transform] = {
    "quantity": Transform(fn_quantity, "Quantity", sources=3),
    "reference_range": Transform(fn_reference_range, "ObservationReferenceRange", sources=2),
}
"""The quantities transforms by the name a rule's ``function:`` uses."""
