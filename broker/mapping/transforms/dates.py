"""Dates and times: HL7 DT and DTM (v2.5.1 §2A.21, §2A.22) to FHIR date, dateTime and instant."""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import date, datetime, timedelta
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict

from broker.mapping.transforms.base import Env, SourceValue, Transform, first_value

__all__ = [
    "EARLIEST_BIRTH_YEAR",
    "TRANSFORMS",
    "fn_date",
    "fn_datetime",
    "fn_instant",
    "hl7_date",
    "hl7_datetime",
]


_DTM = re.compile(
    r"^(\d{4})(?:(\d{2})(?:(\d{2})(?:(\d{2})(?:(\d{2})(?:(\d{2})(?:\.(\d{1,4}))?)?)?)?)?)?"
    r"([+-]\d{4})?$"
)


@lru_cache(maxsize=16)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


@lru_cache(maxsize=64)
def _offset(minutes: int) -> str:
    sign = "+" if minutes >= 0 else "-"
    minutes = abs(minutes)
    return f"{sign}{minutes // 60:02d}:{minutes % 60:02d}"


def hl7_date(text: str) -> str | None:
    """Convert an HL7 DT/DTM to a FHIR ``date`` keeping its precision; ``None`` when invalid.

    A DTM's time part is dropped (PID-7 is often sent as DTM). Year 0000 and impossible
    calendar days are invalid; unusual but real dates (year 1013) are kept.
    """
    m = _DTM.match(text.strip())
    if not m:
        return None
    return _day_part(m.group(1), m.group(2), m.group(3))


def _day_part(year: str, month: str | None, day: str | None) -> str | None:
    """The FHIR date of a DT/DTM's year, month and day as ``_DTM`` matched them, or None."""
    if year == "0000":
        return None
    try:
        if day and month:  # _DTM matches a day only after a month
            date(int(year), int(month), int(day))
            return f"{year}-{month}-{day}"
        if month:
            if not 1 <= int(month) <= 12:
                return None
            return f"{year}-{month}"
    except ValueError:
        return None
    return year


def hl7_datetime(text: str, timezone: str) -> str | None:
    """Convert an HL7 DTM to a FHIR ``dateTime``; a time always carries an offset.

    The offset is the one sent in the value, else the one in force in ``timezone`` at that
    local time (FHIR R4 §2.24.0.1 dateTime: "If hours and minutes are specified, a time zone
    SHALL be populated").
    """
    m = _DTM.match(text.strip())
    if not m:
        return None
    year, month, day, hour, minute, second, frac, tz = m.groups()
    day_part = _day_part(year, month, day)
    if day_part is None:
        return None
    if hour is None:
        return day_part
    if not day:
        return None  # an hour without a day cannot be a FHIR dateTime
    h, mi, s = int(hour), int(minute or 0), int(second or 0)
    if h > 23 or mi > 59 or s > 59:
        return None
    if tz:
        offset_min = (1 if tz[0] == "+" else -1) * (int(tz[1:3]) * 60 + int(tz[3:5]))
        if int(tz[3:5]) > 59 or abs(offset_min) > 14 * 60:
            return None
    else:
        local = datetime(int(year), int(month), int(day), h, mi, s)
        delta = _zone(timezone).utcoffset(local) or timedelta(0)
        offset_min = round(delta.total_seconds() / 60)
    fraction = f".{frac}" if frac else ""
    return f"{day_part}T{h:02d}:{mi:02d}:{s:02d}{fraction}{_offset(offset_min)}"


class _DateArgs(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    birth: bool = False
    """A birth date (PID-7): a year before ``EARLIEST_BIRTH_YEAR`` or a day after the message
    was received is an ``implausible-date`` finding; the date, valid as a date, is kept."""


EARLIEST_BIRTH_YEAR = 1900
"""A birth date before this year is implausible for a living patient (docs/mappings.md)."""


def fn_date(values: Sequence[SourceValue | None], env: Env, args: Any) -> str | None:
    """DT/DTM → FHIR date (PID-7 → Patient.birthDate); with ``birth: true``, plausibility checked."""
    v = first_value(values)
    if v is None:
        return None
    # TS (v2.3-v2.5.1) is DTM^degree of precision: the time is component 1.
    result = hl7_date(v.comp(1))
    if result is None:
        env.warn(
            "invalid-date",
            v,
            "the value is not a valid HL7 DT/DTM date "
            "(expected YYYY[MM[DD]] with a real calendar day); the element was left out",
        )
    elif isinstance(args, _DateArgs) and args.birth:
        _check_birth(result, v, env)
    return result


def _check_birth(result: str, v: SourceValue, env: Env) -> None:
    """An ``implausible-date`` warning for a birth before 1900 or after the message's arrival."""
    year = int(result[:4])
    received = env.received_at
    # A partial date (YYYY or YYYY-MM) is in the future only when all of it is.
    future = received is not None and result > received.date().isoformat()[: len(result)]
    if year < EARLIEST_BIRTH_YEAR:
        reason = f"the birth date is before {EARLIEST_BIRTH_YEAR}"
    elif future:
        reason = "the birth date is after the message was received"
    else:
        return
    env.warn(
        "implausible-date",
        v,
        f"{reason}; the date was kept as sent (valid as a date): check it with the sender",
    )


def fn_datetime(values: Sequence[SourceValue | None], env: Env, args: Any) -> str | None:
    """DTM → FHIR dateTime with the sender's offset (PV1-44 → Encounter.period.start)."""
    v = first_value(values)
    if v is None:
        return None
    result = hl7_datetime(v.comp(1), env.timezone)
    if result is None:
        env.warn(
            "invalid-date",
            v,
            "the value is not a valid HL7 DTM (expected "
            "YYYY[MM[DD[HH[MM[SS]]]]][+/-ZZZZ]); the element was left out",
        )
    return result


def fn_instant(values: Sequence[SourceValue | None], env: Env, args: Any) -> str | None:
    """DTM with at least a day and an hour → FHIR instant (SCH-11.4, TQ1-7 → Appointment.start).

    An instant is precise to the second with an offset: missing minutes and seconds are zero and
    the offset is the sender's (as ``datetime``). A date alone is left out with a finding.
    """
    v = first_value(values)
    if v is None:
        return None
    result = hl7_datetime(v.comp(1), env.timezone)
    if result is None or "T" not in result:
        env.warn(
            "invalid-date",
            v,
            "the value is not an HL7 DTM with a time (expected YYYYMMDDHH[MM[SS]][+/-ZZZZ] for "
            "a FHIR instant); the element was left out",
        )
        return None
    return result


TRANSFORMS: dict[str, Transform] = {
    "date": Transform(fn_date, "date", args=_DateArgs),
    "datetime": Transform(fn_datetime, "dateTime"),
    "instant": Transform(fn_instant, "instant"),
}
"""The dates transforms by the name a rule's ``function:`` uses."""
