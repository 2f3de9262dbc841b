"""Promises of the named transforms: HL7 v2 data types to valid FHIR values."""

from __future__ import annotations

import pytest

from broker.mapping.functions import hl7_date, hl7_datetime


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("19620312", "1962-03-12", id="day"),
        pytest.param("196203", "1962-03", id="month"),
        pytest.param("1962", "1962", id="year"),
        pytest.param("196203121030", "1962-03-12", id="dtm-truncated"),
        pytest.param("10130612", "1013-06-12", id="year-1013"),
        pytest.param("19620352", None, id="day-52"),
        pytest.param("19620229", None, id="not-leap"),
        pytest.param("00000101", None, id="year-0"),
        pytest.param("1962-03-12", None, id="iso-not-hl7"),
    ],
)
def test_hl7_date(text: str, expected: str | None) -> None:
    """DT/DTM become FHIR dates at their precision; impossible dates become None."""
    assert hl7_date(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("20240115103000", "2024-01-15T10:30:00+01:00", id="winter-offset"),
        pytest.param("20240320103000", "2024-03-20T10:30:00+00:00", id="ramadan-offset"),
        pytest.param("202401151030", "2024-01-15T10:30:00+01:00", id="no-seconds"),
        pytest.param("2024011510", "2024-01-15T10:00:00+01:00", id="hour-only"),
        pytest.param("20240115103000+0200", "2024-01-15T10:30:00+02:00", id="sent-offset"),
        pytest.param("20240115103000.25", "2024-01-15T10:30:00.25+01:00", id="fraction"),
        pytest.param("20240115", "2024-01-15", id="date-only"),
        pytest.param("20240115250000", None, id="hour-25"),
    ],
)
def test_hl7_datetime(text: str, expected: str | None) -> None:
    """A DTM with a time always gets an offset: its own or the sender's zone at that moment."""
    assert hl7_datetime(text, "Africa/Casablanca") == expected
