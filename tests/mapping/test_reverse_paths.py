"""Promises of the outbound engine (broker.mapping.hl7v2_out.reverse) on shapes the real mappings
and samples rarely meet: element paths through lists, indexes and wrong types, several entries
for one field, version bounds and escaping. The expected ER7 is written by hand from the path
grammar in the module docstring; the Bundle is synthetic, no real patient.
"""

from __future__ import annotations

from typing import Any

import pytest

from broker.mapping.hl7v2_out import compile_outbound
from broker.mapping.spec import OutboundSpec

PATIENT = "urn:uuid:00000000-0000-4000-8000-000000000001"
DOCTOR = "urn:uuid:00000000-0000-4000-8000-000000000002"


def _render(fields: list[dict[str, Any]], patient: dict[str, Any], version: str = "2.5.1") -> str:
    """The ZPT segment that ``fields`` write from ``patient`` (the line after MSH)."""
    spec = OutboundSpec.model_validate(
        {
            "id": "out-test",
            "target": {"format": "hl7v2", "events": ["ADT^A01"], "versions": ["2.3", "2.5.1"]},
            "segments": [{"segment": "ZPT", "resource": "Patient", "fields": fields}],
        }
    )
    bundle = {
        "resourceType": "Bundle",
        "entry": [
            {"resource": {"resourceType": "MessageHeader", "eventCoding": {"code": "A01"}}},
            {"fullUrl": PATIENT, "resource": {"resourceType": "Patient", **patient}},
            {
                "fullUrl": DOCTOR,
                "resource": {"resourceType": "Practitioner", "name": [{"family": "BENNIS"}]},
            },
        ],
    }
    text = compile_outbound(spec, "out-test.yaml", {}).render(
        bundle,
        version=version,
        control_id="C1",
        receiving_application="R",
        receiving_facility="",
        sending_application="S",
        sending_facility="",
        charset_code="",
    )
    return text.split("\r")[1]


@pytest.mark.parametrize(
    ("path", "patient", "field"),
    [
        pytest.param("birthDate", {"birthDate": "1962"}, "1962", id="one-element"),
        pytest.param("birthDate", {}, "", id="absent"),
        pytest.param("a.b", {"a": {"b": "x"}}, "x", id="object-then-element"),
        pytest.param("a.b", {"a": "x"}, "", id="element-of-a-string"),
        pytest.param("a.b", {"a": [{"b": "x"}, "y", {"c": "z"}, {"b": "w"}]}, "x~w", id="list"),
        pytest.param("a.b", {"a": [{"b": ["x", None, "y"]}]}, "x~y", id="list-of-lists"),
        pytest.param("a[1].b", {"a": [{"b": "x"}, {"b": "y"}]}, "y", id="index"),
        pytest.param("a[2].b", {"a": [{"b": "x"}]}, "", id="index-past-the-end"),
        pytest.param("a[0].b", {"a": {"b": "x"}}, "x", id="index-0-of-an-object"),
        pytest.param("a[1].b", {"a": {"b": "x"}}, "", id="index-1-of-an-object"),
        pytest.param(
            "a.b[1]",
            {"a": [{"b": ["x", "y"]}, {"b": ["z", "w"]}]},
            "y",
            id="index-of-the-collection",
        ),
        pytest.param(
            "a.where(s = 'on').first().b",
            {"a": [{"s": "off", "b": "x"}, {"s": "on", "b": "y"}, {"s": "on", "b": "z"}]},
            "y",
            id="where-first",
        ),
        pytest.param(
            "a.where(s != 'on').b", {"a": {"s": "off", "b": "x"}}, "x", id="where-on-an-object"
        ),
        pytest.param(
            "p.r.resolve().name.family",
            {"p": [{"r": {"reference": DOCTOR}}, {"r": {"reference": "urn:uuid:x"}}]},
            "BENNIS",
            id="resolve",
        ),
        pytest.param(
            "%bundle.entry.resource.ofType(Practitioner).name.family", {}, "BENNIS", id="bundle"
        ),
        pytest.param("a", {"a": "x|y^z\r\n"}, "x\\F\\y\\S\\z\\.br\\", id="escaped"),
    ],
)
def test_an_element_path_gives_the_repetitions_it_names(
    path: str, patient: dict[str, Any], field: str
) -> None:
    """A path gives every value it reaches, in order, as repetitions; what it cannot reach is
    nothing."""
    expected = f"ZPT|{field}" if field else "ZPT"
    assert _render([{"field": 1, "from": path}], patient) == expected


def test_the_first_entry_that_gives_a_value_writes_the_field() -> None:
    """Entries for one field are tried in order until one gives a value; later fields still
    follow, and empty trailing fields are left out."""
    fields = [
        {"field": 4, "from": "a"},
        {"field": 2, "from": "b"},
        {"field": 4, "from": "c"},
        {"field": 4, "from": "d"},
        {"field": 2, "value": "K"},
        {"field": 9, "from": "e"},
    ]
    assert _render(fields, {"b": "B", "c": "C", "d": "D"}) == "ZPT||B||C"


def test_version_bounds_choose_the_entries() -> None:
    """An entry outside its since/until versions is skipped, so the next one writes the field."""
    fields = [
        {"field": 1, "value": "OLD", "until": "2.3"},
        {"field": 1, "value": "NEW", "since": "2.4"},
        {"field": 3, "value": "X", "since": "2.5.1"},
    ]
    assert _render(fields, {}, "2.3") == "ZPT|OLD"
    assert _render(fields, {}, "2.5.1") == "ZPT|NEW||X"


@pytest.mark.parametrize(
    ("when", "patient", "written"),
    [
        pytest.param({"path": "a", "present": True}, {"a": "x"}, True, id="present"),
        pytest.param({"path": "a", "present": True}, {"a": []}, False, id="empty-list-absent"),
        pytest.param({"path": "a", "present": False}, {}, True, id="absent"),
        pytest.param({"path": "a", "equals": "x"}, {"a": ["x", "y"]}, True, id="equals-first"),
        pytest.param({"path": "a", "equals": "y"}, {"a": ["x", "y"]}, False, id="equals-not-2nd"),
        pytest.param({"path": "a", "in": ["1", "2"]}, {"a": 2}, True, id="in-as-text"),
        pytest.param({"path": "a", "matches": "x+"}, {"a": "xxy"}, False, id="matches-whole"),
        pytest.param(
            {"all": [{"path": "a", "present": True}, {"path": "b", "present": False}]},
            {"a": "x"},
            True,
            id="all",
        ),
        pytest.param(
            {"all": [{"path": "a", "present": True}, {"path": "b", "present": False}]},
            {"a": "x", "b": "y"},
            False,
            id="all-one-fails",
        ),
        pytest.param(
            {"any": [{"path": "a", "present": True}, {"path": "b", "present": True}]},
            {"b": "y"},
            True,
            id="any",
        ),
        pytest.param(
            {"any": [{"path": "a", "present": True}, {"path": "b", "present": True}]},
            {},
            False,
            id="any-none-holds",
        ),
        pytest.param({"not": {"path": "a", "present": True}}, {}, True, id="not"),
    ],
)
def test_when_chooses_whether_an_entry_applies(
    when: dict[str, Any], patient: dict[str, Any], written: bool
) -> None:
    """An entry with ``when:`` writes only when its test on the item holds; ``equals``, ``in``
    and ``matches`` test the first value as text."""
    fields = [{"field": 1, "value": "W", "when": when}, {"field": 1, "value": "-"}]
    assert _render(fields, patient) == ("ZPT|W" if written else "ZPT|-")
