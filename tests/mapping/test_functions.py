"""Promises of the named transforms: HL7 v2 data types to valid FHIR values."""

from __future__ import annotations

import pytest

from broker.mapping.transforms import INBOUND, OUTBOUND, Env, SourceValue, hl7_date, hl7_datetime
from broker.mapping.transforms.names import CIN_SYSTEM, V2_0203
from broker.mapping.transforms.outbound import pl_parts
from broker.mapping.transforms.strings import plain_text
from broker.parsing.hl7v2 import DEFAULT, parse, parse_path


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


# --- FHIR that reads as FHIR (issue 12): no HL7 syntax, every Coding and Identifier a system ---

MSH = "MSH|^~\\&|HIS|CHUIS|PASSERELLE|MS|20240315103000||ADT^A01^ADT_A01|M1|P|2.5.1"


def _value(segment_line: str, path: str) -> tuple[Env, SourceValue]:
    """The Env of a message made of MSH and ``segment_line``, and the value at ``path`` (a field)."""
    message = parse(f"{MSH}\r{segment_line}\r")
    env = Env(message, "Africa/Casablanca", "chu-test")
    p = parse_path(path)
    segment = message.segments_named(p.segment)[0]
    return env, SourceValue(segment.repetitions(p.field)[0], segment, p, 1)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param("ligne 1\\.br\\ligne 2", "ligne 1\nligne 2", id="line-break"),
        pytest.param("\\H\\Important\\N\\ : oui", "Important : oui", id="highlight"),
        pytest.param("a\\F\\b\\S\\c\\T\\d\\R\\e\\E\\f", "a|b^c&d~e\\f", id="delimiters-as-data"),
        pytest.param("caf\\XE9\\", "café", id="hex"),
        pytest.param("x\\Z42\\y", "xy", id="local-escape-dropped"),
        pytest.param("DOC-1^CHUIS^IM^JPEG", "DOC-1 CHUIS IM JPEG", id="components-as-words"),
        pytest.param("a&b^c", "a b c", id="subcomponents-as-words"),
        pytest.param("\\.sp 1\\fin", "\n\nfin", id="ft-space-command"),
    ],
)
def test_plain_text_has_no_hl7_syntax(raw: str, expected: str) -> None:
    """plain_text decodes FT/TX escapes and turns delimiters into spaces: no HL7 syntax remains."""
    assert plain_text(raw, DEFAULT) == expected


@pytest.mark.parametrize(
    ("pl", "display", "parts"),
    [
        pytest.param(
            "CARDIO^204^1^CHUIS", "CARDIO, room 204, bed 1", ["CARDIO", "204", "1"], id="full"
        ),
        pytest.param("CONSULT^2", "CONSULT, room 2", ["CONSULT", "2", ""], id="no-bed"),
        pytest.param("LDR^^01", "LDR, bed 01", ["LDR", "", "01"], id="no-room"),
        pytest.param("^204^1", "room 204, bed 1", ["", "204", "1"], id="no-point-of-care"),
        pytest.param(
            "HUH AE OMU&9.8&ISO^OMU B^Bed 03",
            "HUH AE OMU, room OMU B, bed Bed 03",
            ["HUH AE OMU", "OMU B", "Bed 03"],
            id="hd-point-of-care",
        ),
    ],
)
def test_location_display_is_text_and_reverses_to_pl(
    pl: str, display: str, parts: list[str]
) -> None:
    """PV1-3 → a display without carets, from which out_pl rebuilds PL-1..3 exactly."""
    env, v = _value(f"PV1|1|I|{pl}", "PV1-3")
    element = INBOUND["pl_location"].fn([v], env, None)
    assert element == {"location": {"display": display}}
    assert pl_parts(display) == parts
    assert OUTBOUND["pl"](element, DEFAULT) == "^".join(parts).rstrip("^")


@pytest.mark.parametrize(
    ("cwe", "systems"),
    [
        pytest.param(
            "GLY^Glycemie^L", ["urn:passerelle:adapter:chu-test:code:obx-3"], id="L-by-field"
        ),
        pytest.param(
            "GLY^Glycemie", ["urn:passerelle:adapter:chu-test:code:obx-3"], id="none-by-field"
        ),
        pytest.param(
            "D^Medecin^99CHUIS", ["urn:passerelle:adapter:chu-test:code:99chuis"], id="99zzz"
        ),
        pytest.param("2345-7^Glucose^LN", ["http://loinc.org"], id="loinc"),
        pytest.param(
            "H^High^HL70078", ["http://terminology.hl7.org/CodeSystem/v2-0078"], id="hl7-table"
        ),
        pytest.param("08^HepB^CVX", ["http://hl7.org/fhir/sid/cvx"], id="cvx"),
        pytest.param(
            "1554-5^GLUCOSE^POST 12H CFST:MCNC:PT:SER/PLAS:QN",
            ["urn:passerelle:adapter:chu-test:code:obx-3"],
            id="not-a-0396-name-by-field",
        ),
        pytest.param(
            "165747007^RhD+^SCT^POS^Positif^L",
            ["http://snomed.info/sct", "urn:passerelle:adapter:chu-test:code:obx-3"],
            id="alternate-local",
        ),
    ],
)
def test_every_coding_has_a_system(cwe: str, systems: list[str]) -> None:
    """A CWE coding gets its terminology URI, else the adapter's local code system (identity.local_code_system)."""
    env, v = _value(f"OBX|1|CWE|{cwe}", "OBX-3")
    concept = INBOUND["codeable_concept"].fn([v], env, None)
    assert [c.get("system") for c in concept["coding"]] == systems
    assert [f.code for f in env.findings if f.code != "unknown-coding-system"] == []


def test_an_unknown_named_coding_system_is_local_with_an_info_finding() -> None:
    """A coding system with no known URI (NIP002) is written local, and named at its field."""
    env, v = _value(
        "RXA|0|1|20240101|20240101|08^HepB^CVX|||||||||||||00^Parental decision^NIP002", "RXA-18"
    )
    concept = INBOUND["codeable_concept"].fn([v], env, None)
    assert concept["coding"][0]["system"] == "urn:passerelle:adapter:chu-test:code:nip002"
    assert [(f.severity, f.code, f.location) for f in env.findings] == [
        ("info", "unknown-coding-system", "RXA-18")
    ]


@pytest.mark.parametrize(
    ("cx", "type_coding"),
    [
        pytest.param(
            "BE123456^^^MA^NNMAR", {"system": V2_0203, "code": "NI"}, id="cin-nnmar-is-ni"
        ),
        pytest.param("X1^^^FR^NNFRA", {"system": V2_0203, "code": "NI"}, id="any-nnxxx-is-ni"),
        pytest.param("IPP1^^^CHUIS^PI", {"system": V2_0203, "code": "PI"}, id="hl7-code"),
        pytest.param(
            "M1^^^CNOPS^MUT",
            {"system": "urn:passerelle:adapter:chu-test:code:pid-3-5", "code": "MUT"},
            id="local-type",
        ),
    ],
)
def test_identifier_type_is_a_v2_0203_code_or_local(cx: str, type_coding: dict[str, str]) -> None:
    """CX-5 → Identifier.type: NNxxx (no v2-0203 code) is NI, a table 0203 code keeps v2-0203, another code is local."""
    env, v = _value(f"PID|1||{cx}", "PID-3")
    ident = INBOUND["cx_identifier"].fn([v], env, None)
    assert ident["type"] == {"coding": [type_coding]}
    assert ident["system"]


def test_the_cin_goes_back_to_hl7_as_nnmar() -> None:
    """out_cx writes the CIN (typed NI in FHIR) with CX-5 NNMAR and CX-4 MA, as HL7 v2 senders do."""
    ident = {
        "system": CIN_SYSTEM,
        "value": "BE123456",
        "type": {"coding": [{"system": V2_0203, "code": "NI"}]},
    }
    assert OUTBOUND["cx"](ident, DEFAULT) == "BE123456^^^MA^NNMAR"


@pytest.mark.parametrize(
    ("function", "element", "expected"),
    [
        pytest.param(
            "xpn",
            {"family": "EL^AMRANI", "given": ["Fatima", "Zahra|Z"], "use": "official"},
            "EL\\S\\AMRANI^Fatima^Zahra\\F\\Z^^^^L",
            id="xpn",
        ),
        pytest.param(
            "xad",
            {"line": ["12 rue Oued Ziz", "Bloc A&B"], "city": "Rabat~Salé"},
            "12 rue Oued Ziz^Bloc A\\T\\B^Rabat\\R\\Salé",
            id="xad",
        ),
        pytest.param(
            "cx",
            {"value": "IPP\\1", "assigner": {"display": "CHU\rRABAT"}},
            "IPP\\E\\1^^^CHU\\.br\\RABAT",
            id="cx",
        ),
        pytest.param(
            "pl", {"location": {"display": "CARDIO|2, room 204"}}, "CARDIO\\F\\2^204", id="pl"
        ),
        pytest.param(
            "xcn",
            {"identifier": [{"value": "MED^1"}], "name": [{"family": "BENNIS", "given": []}]},
            "MED\\S\\1^BENNIS",
            id="xcn",
        ),
    ],
)
def test_outbound_components_are_escaped_one_by_one(
    function: str, element: dict[str, object], expected: str
) -> None:
    """A delimiter inside a component is escaped (v2.5.1 §2.7.1); the separators between
    components are not, and trailing empty components are left out."""
    assert OUTBOUND[function](element, DEFAULT) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param(5, "5", id="integer"),
        pytest.param(-12, "-12", id="negative"),
        pytest.param(5.4, "5.4", id="decimal"),
        pytest.param(5.0, "5.0", id="decimal-kept-precision"),
        pytest.param(1e-07, "0.0000001", id="small-no-exponent"),
        pytest.param(1e16, "10000000000000000", id="large-no-exponent"),
        pytest.param("0.50", "0.50", id="text"),
        pytest.param(True, "", id="boolean"),
        pytest.param("", "", id="empty"),
        pytest.param("abc", "", id="not-a-number"),
    ],
)
def test_out_number_writes_nm_without_exponent(value: object, expected: str) -> None:
    """A FHIR number becomes HL7 NM: optional sign, digits and one point, never an exponent
    (v2.5.1 §2A.47); what is not a number is left empty."""
    assert OUTBOUND["number"](value, DEFAULT) == expected


@pytest.mark.parametrize(
    ("raw", "reads", "expected"),
    [
        pytest.param("A^B^^D", [(1, 1), (2, 1), (3, 1), (5, 1), (1, 2)], ["A", "B", "", "", ""]),
        pytest.param("A&a2^B", [(1, 1), (1, 2), (1, 3), (2, 1)], ["A", "a2", "", "B"]),
        pytest.param("A\\S\\x^B", [(1, 1), (2, 1), (2, 2)], ["A^x", "B", ""]),
        pytest.param("A\\T\\x&y^B", [(1, 1), (1, 2)], ["A&x", "y"]),
    ],
)
def test_comp_reads_components_subcomponents_and_escapes(
    raw: str, reads: list[tuple[int, int]], expected: list[str]
) -> None:
    """A value without subcomponent or escape characters gives its components as they are."""
    _, value = _value("PID|1||X", "PID-3")
    value = SourceValue(raw, value.segment, value.path, 1)
    assert [value.comp(number, sub) for number, sub in reads] == expected


def test_comp_without_an_escape_character_keeps_backslashes() -> None:
    """MSH-2 of two characters has no escape character: a backslash is data."""
    message = parse("MSH|^~|A|B|C|D|20250101||ADT^A01|C1|P|2.5\rPID|1||X\\S\\Y^Z&z")
    segment = message.segments[1]
    value = SourceValue(segment.fields[3], segment, parse_path("PID-3"), 1)
    assert (value.comp(1), value.comp(2), value.comp(2, 2)) == ("X\\S\\Y", "Z", "z")


@pytest.mark.parametrize(
    "constant",
    [
        pytest.param("male", id="string"),
        pytest.param(7, id="number"),
        pytest.param({"system": "http://x", "code": "A", "display": "a"}, id="coding"),
        pytest.param({"coding": [{"system": "http://x", "code": "A"}], "text": "a"}, id="nested"),
        pytest.param([{"code": "A"}, "B", [1, {"c": [2]}]], id="list"),
    ],
)
def test_a_copier_gives_equal_copies_that_share_nothing(constant: object) -> None:
    """Each copy of a map entry or value: constant is equal to it and changes nothing in it."""
    from broker.mapping.hl7v2_in.rules import clone, copier

    original = clone(constant)
    copy = copier(constant)
    first, second = copy(), copy()
    assert first == second == constant
    if isinstance(first, dict):
        first["code"] = "changed"
        first.get("coding", [{}])[0]["code"] = "changed"
    elif isinstance(first, list):
        first[0]["code"] = "changed"
        first[2][1]["c"].append(3)
    assert constant == original
    assert second == original
