"""Promises of the OBX-5 value transforms: each HL7 v2 value type to its FHIR R4 value[x]."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from broker.canonical import validate_bundle
from broker.mapping import MapContext, MappingSet
from broker.mapping.transforms import INBOUND, Env, SourceValue
from broker.parsing.hl7v2 import parse, parse_path

HANDLED = {"handled": ["NM", "ST", "SN"]}
"""The obx_other_value args of these tests: the types other rules convert."""
MSH = "MSH|^~\\&|LIS|LABCHUIS|PASSERELLE|MS|20240318101500||ORU^R01^ORU_R01|T1|P|2.5.1"


def _obx(value_type: str, value: str, units: str = "") -> tuple[Env, list[SourceValue | None]]:
    """An Env over a one-OBX message and the values of ``[OBX-5, OBX-6, OBX-2]``."""
    message = parse(f"{MSH}\rOBX|1|{value_type}|CODE^Test||{value}|{units}||||||F\r")
    env = Env(message, "Africa/Casablanca", "test")
    obx = message.segments_named("OBX")[0]

    def read(field: int) -> SourceValue | None:
        raw = obx.repetitions(field)[0] if obx.repetitions(field) else ""
        return SourceValue(raw, obx, parse_path(f"OBX-{field}"), 1) if raw else None

    return env, [read(5), read(6), read(2)]


def _call(name: str, values: list[SourceValue | None], env: Env, args: Any = None) -> Any:
    transform = INBOUND[name]
    if transform.args is not None:
        args = transform.args.model_validate(args or {})
    return transform.fn(values[: transform.sources], env, args)


class TestTextLines:
    """ST/TX/FT → valueString."""

    def test_tx_repetitions_are_joined_with_newlines(self) -> None:
        """Every OBX-5 repetition of a TX is one line of the string."""
        env, values = _obx("TX", "Ligne un~Ligne deux~Ligne trois")
        assert _call("text_lines", values, env) == "Ligne un\nLigne deux\nLigne trois"

    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            pytest.param("a\\.br\\b", "a\nb", id="br"),
            pytest.param("a\\.sp\\b", "a\n\nb", id="sp-default"),
            pytest.param("a\\.sp 2\\b", "a\n\n\nb", id="sp-2"),
            pytest.param("a\\.sk 3\\b", "a   b", id="sk-3"),
            pytest.param("\\.ce\\Titre", "Titre", id="ce-leading"),
            pytest.param("\\H\\Important\\N\\ : oui", "Important : oui", id="highlight"),
            pytest.param("\\.in +4\\\\.fi\\texte\\.nf\\", "texte", id="indent-fill"),
            pytest.param("5 \\T\\ 6 \\F\\ 7", "5 & 6 | 7", id="delimiter-escapes"),
        ],
    )
    def test_ft_formatting_commands_are_decoded(self, value: str, expected: str) -> None:
        """FT formatting commands (v2.5.1 §2.7.6) become newlines and spaces, or nothing."""
        env, values = _obx("FT", value)
        assert _call("text_lines", values, env) == expected

    def test_blank_text_is_no_element(self) -> None:
        """Repetitions holding only spaces give no string (FHIR strings are never empty)."""
        env, values = _obx("TX", "  ~ ")
        assert _call("text_lines", values, env) is None


class TestStructuredNumeric:
    """SN → valueQuantity, valueRange, valueRatio or valueString: exactly one applies."""

    SN = ("sn_quantity", "sn_range", "sn_ratio", "sn_text")

    def _all(self, value: str, units: str = "") -> tuple[dict[str, Any], Env]:
        env, values = _obx("SN", value, units)
        results = {name: _call(name, values, env) for name in self.SN}
        return {k: v for k, v in results.items() if v is not None}, env

    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            pytest.param(
                "<^5",
                {
                    "sn_quantity": {
                        "value": 5,
                        "comparator": "<",
                        "unit": "mg/L",
                        "system": "http://unitsofmeasure.org",
                        "code": "mg/L",
                    }
                },
                id="less-than",
            ),
            pytest.param(
                ">=^10.5",
                {
                    "sn_quantity": {
                        "value": 10.5,
                        "comparator": ">=",
                        "unit": "mg/L",
                        "system": "http://unitsofmeasure.org",
                        "code": "mg/L",
                    }
                },
                id="greater-or-equal",
            ),
            pytest.param(
                "=^7",
                {
                    "sn_quantity": {
                        "value": 7,
                        "unit": "mg/L",
                        "system": "http://unitsofmeasure.org",
                        "code": "mg/L",
                    }
                },
                id="equals-is-plain",
            ),
            pytest.param(
                "^10^-^20",
                {
                    "sn_range": {
                        "low": {
                            "value": 10,
                            "unit": "mg/L",
                            "system": "http://unitsofmeasure.org",
                            "code": "mg/L",
                        },
                        "high": {
                            "value": 20,
                            "unit": "mg/L",
                            "system": "http://unitsofmeasure.org",
                            "code": "mg/L",
                        },
                    }
                },
                id="range",
            ),
            pytest.param(
                "^1^:^128",
                {"sn_ratio": {"numerator": {"value": 1}, "denominator": {"value": 128}}},
                id="ratio-colon",
            ),
            pytest.param(
                "^1^/^2",
                {"sn_ratio": {"numerator": {"value": 1}, "denominator": {"value": 2}}},
                id="ratio-slash",
            ),
            pytest.param("^2^+", {"sn_text": "2+"}, id="suffix-plus"),
            pytest.param("<>^5", {"sn_text": "<>5"}, id="not-equal"),
            pytest.param(">^10^-^20", {"sn_text": ">10-20"}, id="comparator-with-range"),
        ],
    )
    def test_one_shape_per_value(self, value: str, expected: dict[str, Any]) -> None:
        """Each SN shape is converted by exactly one function, the others give nothing."""
        results, env = self._all(value, "mg/L^mg/L^UCUM")
        assert results == expected
        assert env.findings == []

    @pytest.mark.parametrize(
        "value",
        [
            pytest.param("<^abc", id="not-a-number"),
            pytest.param("!!^5", id="unknown-comparator"),
            pytest.param("^5^x^6", id="unknown-separator"),
            pytest.param("<", id="no-number"),
        ],
    )
    def test_bad_sn_is_one_finding_without_the_value(self, value: str) -> None:
        """An unreadable SN is left out with one invalid-number finding naming OBX-5 only."""
        results, env = self._all(value)
        assert results == {}
        assert [(f.code, f.location) for f in env.findings] == [("invalid-number", "OBX-5")]
        assert value not in env.findings[0].message


class TestDateValues:
    """DT, TS and DTM → valueDateTime through ``datetime``."""

    @pytest.mark.parametrize(
        ("value_type", "value", "expected"),
        [
            pytest.param("DT", "20240316", "2024-03-16", id="dt-date-precision"),
            pytest.param("TS", "20240318094500+0100", "2024-03-18T09:45:00+01:00", id="ts-offset"),
            pytest.param("TS", "202403180945^M", "2024-03-18T09:45:00+00:00", id="ts-precision"),
            pytest.param("DTM", "20241105091500+0100", "2024-11-05T09:15:00+01:00", id="dtm"),
        ],
    )
    def test_date_values(self, value_type: str, value: str, expected: str) -> None:
        """The sender's offset is kept; without one, the zone in force then (Ramadan 2024: +00)."""
        env, values = _obx(value_type, value)
        assert _call("datetime", values, env) == expected


class TestEncapsulatedData:
    """ED → Attachment for the DocumentReference an R4 Observation points to."""

    PDF = b"%PDF-1.4\n%%EOF\n"

    def test_base64_pdf(self) -> None:
        """Base64 data is kept byte for byte, with the MIME type of AP/PDF (tables 0191, 0291)."""
        data = base64.b64encode(self.PDF).decode()
        env, values = _obx("ED", f"^AP^PDF^Base64^{data}")
        assert _call("ed_attachment", values, env) == {
            "contentType": "application/pdf",
            "data": data,
            "size": len(self.PDF),
        }

    def test_mime_names_and_hex(self) -> None:
        """MIME names in ED-2/ED-3 are used as they are; Hex data is re-encoded as base64."""
        env, values = _obx("ED", f"^image^png^Hex^{self.PDF.hex()}")
        result = _call("ed_attachment", values, env)
        assert result["contentType"] == "image/png"
        assert base64.b64decode(result["data"]) == self.PDF

    def test_ascii_text(self) -> None:
        """ED-4 A (no encoding) text is unescaped and stored as UTF-8 base64."""
        env, values = _obx("ED", "^TEXT^PLAIN^A^Compte rendu \\T\\ conclusion")
        result = _call("ed_attachment", values, env)
        assert base64.b64decode(result["data"]).decode() == "Compte rendu & conclusion"
        assert result["contentType"] == "text/plain"

    def test_unknown_type_keeps_the_data(self) -> None:
        """An unknown ED-2/ED-3 gives application/octet-stream (att-1) and an unknown-code."""
        data = base64.b64encode(self.PDF).decode()
        env, values = _obx("ED", f"^ZZ^QQ^Base64^{data}")
        result = _call("ed_attachment", values, env)
        assert result["data"] == data
        assert result["contentType"] == "application/octet-stream"
        assert [f.code for f in env.findings] == ["unknown-code"]

    @pytest.mark.parametrize(
        "value",
        [
            pytest.param("^AP^PDF^Base64^not*base64", id="bad-base64"),
            pytest.param("^AP^PDF^Hex^XYZ", id="bad-hex"),
            pytest.param("^AP^PDF^UU^begin 644", id="unknown-encoding"),
            pytest.param("^AP^PDF^Base64^", id="no-data"),
        ],
    )
    def test_undecodable_data_is_a_finding(self, value: str) -> None:
        """Empty or undecodable data is left out with an invalid-attachment finding at OBX-5."""
        env, values = _obx("ED", value)
        assert _call("ed_attachment", values, env) is None
        assert [(f.code, f.location) for f in env.findings] == [("invalid-attachment", "OBX-5")]


class TestOtherValueTypes:
    """An OBX-2 no rule converts keeps OBX-5 as text, with a finding."""

    def _call(self, value_type: str, value: str) -> tuple[Any, Env]:
        env, (obx5, _, obx2) = _obx(value_type, value)
        return _call("obx_other_value", [obx5, obx2], env, HANDLED), env

    def test_handled_type_gives_nothing(self) -> None:
        """A type another rule converts is left to that rule, silently."""
        result, env = self._call("NM", "5.4")
        assert result is None
        assert env.findings == []

    def test_unknown_type_is_kept_with_a_finding(self) -> None:
        """An RP (or any unconverted type) is kept as valueString and named at OBX-2."""
        result, env = self._call("RP", "DOC-42^CHUIS^IM^JPEG")
        assert result == "DOC-42 CHUIS IM JPEG"  # its components as text, no HL7 delimiter
        assert [(f.code, f.location) for f in env.findings] == [("unsupported-value-type", "OBX-2")]

    def test_missing_type_is_a_finding(self) -> None:
        """A value without OBX-2 is kept too, the finding says OBX-2 gives no type."""
        result, env = self._call("", "texte libre")
        assert result == "texte libre"
        assert env.findings[0].code == "unsupported-value-type"
        assert "no value type" in env.findings[0].message


class TestOruMapping:
    """The ORU^R01 mapping end to end: one value[x] per OBX, findings instead of failures."""

    HEAD = (
        f"{MSH}\r"
        "PID|1||BE123456^^^MA^NNMAR||EL AMRANI^Fatima||19620312|F\r"
        "NTE|1||Note patient\r"
        "OBR|1|ORD-1|LAB-1|BILAN^Bilan|||20240318073000\r"
        "NTE|1||Note commande\r"
    )

    def _map(self, mappings: MappingSet, ctx: MapContext, obx: str) -> tuple[list[Any], list[Any]]:
        result = mappings.map_hl7v2(parse(self.HEAD + obx), ctx)
        validate_bundle(result.bundle)
        resources = [e["resource"] for e in result.bundle["entry"]]
        # HEAD's patient NTE is always reported (test_notes_follow_their_segment checks it).
        patient_note = ("unmapped-note", "NTE[1]-3")
        return resources, [f for f in result.findings if (f.code, f.location) != patient_note]

    @staticmethod
    def _of(resources: list[Any], kind: str) -> list[Any]:
        return [r for r in resources if r["resourceType"] == kind]

    @pytest.mark.parametrize(
        ("obx", "element"),
        [
            pytest.param("OBX|1|NM|X^X||5||||||F\r", "valueQuantity", id="nm"),
            pytest.param("OBX|1|SN|X^X||^1^:^8||||||F\r", "valueRatio", id="sn-ratio"),
            pytest.param("OBX|1|SN|X^X||^1^-^8||||||F\r", "valueRange", id="sn-range"),
            pytest.param("OBX|1|TX|X^X||a~b||||||F\r", "valueString", id="tx"),
            pytest.param("OBX|1|CNE|X^X||P^Positif||||||F\r", "valueCodeableConcept", id="cne"),
            pytest.param("OBX|1|DTM|X^X||20240318||||||F\r", "valueDateTime", id="dtm"),
        ],
    )
    def test_one_value_per_type(
        self, mappings: MappingSet, ctx: MapContext, obx: str, element: str
    ) -> None:
        """Each OBX-2 gives exactly its value[x] element and no finding."""
        resources, findings = self._map(mappings, ctx, obx)
        (observation,) = self._of(resources, "Observation")
        assert [k for k in observation if k.startswith("value")] == [element]
        assert not findings

    def test_notes_follow_their_segment(self, mappings: MappingSet, ctx: MapContext) -> None:
        """NTE after OBR goes to the ServiceRequest, after OBX to the Observation, after PID to an unmapped-note warning."""
        message = parse(self.HEAD + "OBX|1|ST|X^X||ok||||||F\rNTE|1||Note résultat\r")
        result = mappings.map_hl7v2(message, ctx)
        assert [(f.severity, f.code, f.location) for f in result.findings] == [
            ("warning", "unmapped-note", "NTE[1]-3")
        ]
        assert "Note patient" not in result.findings[0].message
        resources = [e["resource"] for e in result.bundle["entry"]]
        (order,) = self._of(resources, "ServiceRequest")
        (observation,) = self._of(resources, "Observation")
        (report,) = self._of(resources, "DiagnosticReport")
        assert order["note"] == [{"text": "Note commande"}]
        assert observation["note"] == [{"text": "Note résultat"}]
        assert report["basedOn"] == [{"reference": f"urn:uuid:{order['id']}"}]
        assert "Note patient" not in str(resources)

    def test_ed_goes_to_a_document_reference(self, mappings: MappingSet, ctx: MapContext) -> None:
        """An ED result is a DocumentReference the Observation is derived from."""
        data = base64.b64encode(b"%PDF-1.4\n").decode()
        resources, findings = self._map(
            mappings, ctx, f"OBX|1|ED|X^X||^AP^PDF^Base64^{data}||||||F\r"
        )
        (document,) = self._of(resources, "DocumentReference")
        (observation,) = self._of(resources, "Observation")
        assert document["content"][0]["attachment"]["data"] == data
        assert observation["derivedFrom"] == [{"reference": f"urn:uuid:{document['id']}"}]
        assert not findings

    @pytest.mark.parametrize(
        ("obx", "code"),
        [
            pytest.param(
                "OBX|1|ZZ|X^X||texte||||||F\r", "unsupported-value-type", id="unknown-type"
            ),
            pytest.param("OBX|1|SN|X^X||<^abc||||||F\r", "invalid-number", id="bad-sn"),
            pytest.param(
                "OBX|1|ED|X^X||^AP^PDF^Base64^@@||||||F\r", "invalid-attachment", id="bad-ed"
            ),
            pytest.param(
                "OBX|1|ED|X^X||^AP^PDF^Base64^||||||F\r", "invalid-attachment", id="ed-no-data"
            ),
        ],
    )
    def test_bad_values_are_findings(
        self, mappings: MappingSet, ctx: MapContext, obx: str, code: str
    ) -> None:
        """A value that cannot be converted is a finding, never an exception."""
        _, findings = self._map(mappings, ctx, obx)
        assert [f.code for f in findings] == [code]

    def test_ed_without_value_is_still_valid(self, mappings: MappingSet, ctx: MapContext) -> None:
        """An ED without a usable value still gives a valid DocumentReference (titled)."""
        for obx in ("OBX|1|ED|X^X||||||||P\r", "OBX|1|ED|X^X||^AP^PDF^Base64^@@||||||F\r"):
            resources, _ = self._map(mappings, ctx, obx)
            (document,) = self._of(resources, "DocumentReference")
            assert document["content"] == [
                {
                    "attachment": {
                        "title": "ED value missing or not decodable (see the mapping findings)"
                    }
                }
            ]


def _obx_line(line: str) -> tuple[Env, dict[int, SourceValue | None]]:
    """An Env over a message with one given OBX, and that OBX's fields by number."""
    message = parse(f"{MSH}\r{line}\r")
    env = Env(message, "Africa/Casablanca", "test")
    obx = message.segments_named("OBX")[0]

    def read(field: int) -> SourceValue | None:
        raw = obx.repetitions(field)[0] if obx.repetitions(field) else ""
        return SourceValue(raw, obx, parse_path(f"OBX-{field}"), 1) if raw else None

    return env, {n: read(n) for n in (3, 5, 6, 7)}


class TestUnitMatchesLoinc:
    """quantity with OBX-3: a LOINC code and a unit of another kind are a unit-mismatch warning."""

    @pytest.mark.parametrize(
        ("code", "units", "mismatch"),
        [
            pytest.param(
                "2345-7^Glucose^LN", "mmol/L^mmol/L^UCUM", True, id="mass-loinc-molar-unit"
            ),
            pytest.param(
                "14749-6^Glucose^LN", "mmol/L^mmol/L^UCUM", False, id="molar-loinc-molar-unit"
            ),
            pytest.param("2345-7^Glucose^LN", "g/L^g/L^UCUM", False, id="mass-loinc-mass-unit"),
            pytest.param("14682-9^Creat^LN", "mg/L", True, id="molar-loinc-mass-unit"),
            pytest.param("GLY^Gly^L^2345-7^Glucose^LN", "mmol/L", True, id="alternate-loinc"),
            pytest.param("GLY^Gly^L", "mmol/L", False, id="local-code-not-judged"),
            pytest.param("4548-4^HbA1c^LN", "%", False, id="fraction-in-percent"),
            pytest.param("2345-7^Glucose^LN", "furlong", False, id="unknown-unit-not-judged"),
        ],
    )
    def test_mismatch_is_a_warning_and_the_value_is_kept(
        self, code: str, units: str, mismatch: bool
    ) -> None:
        """A LOINC property (loinc-property.csv) the OBX-6 unit cannot express is a warning at OBX-6; the value stays."""
        env, f = _obx_line(f"OBX|1|NM|{code}||5.4|{units}||||||F")
        quantity = _call("quantity", [f[5], f[6], f[3]], env)
        assert quantity["value"] == 5.4
        found = [(x.severity, x.code, x.location) for x in env.findings]
        assert found == ([("warning", "unit-mismatch", "OBX-6")] if mismatch else [])
        assert all("5.4" not in x.message for x in env.findings)

    def test_every_local_table_row_agrees_with_the_units_the_samples_use(self) -> None:
        """Each lab-local-to-loinc row's LOINC has a property, and the local code's sample units express it."""
        from broker.mapping.transforms.quantities import unit_properties
        from broker.settings import BASE_MAPPINGS_DIR

        loinc, units = unit_properties()
        rows = [
            line.split(",")
            for line in (BASE_MAPPINGS_DIR / "tables" / "lab-local-to-loinc.csv")
            .read_text(encoding="utf-8")
            .splitlines()
            if line and not line.startswith(("#", "code,"))
        ]
        # The units the samples (mappings/tests, tests/samples) send these local codes in.
        sample_units = {
            "GLY": "mmol/L",
            "CREA": "umol/L",
            "UREE": "mmol/L",
            "K": "mmol/L",
            "HB": "g/dL",
            "CRP": "mg/L",
            "HBA1C": "%",
            "PLQ": "10*9/L",
        }
        for code, _, target, _ in rows:
            assert target in loinc, f"{code}: {target} has no property in loinc-property.csv"
        for code, unit in sample_units.items():
            target = next(r[2] for r in rows if r[0] == code)
            assert loinc[target] in units[unit], (code, target, unit)


class TestReferenceRange:
    """OBX-7 → referenceRange: low/high Quantities, no HL7 delimiter in its text."""

    @pytest.mark.parametrize(
        ("obx7", "expected"),
        [
            pytest.param("3.9-6.1", {"low": 3.9, "high": 6.1}, id="plain-range"),
            pytest.param(
                "35-150^35^150", {"low": 35, "high": 150, "text": "35-150"}, id="composite"
            ),
            pytest.param("^35^150", {"low": 35, "high": 150}, id="components-only"),
            pytest.param("<5", {"high": 5}, id="below"),
            pytest.param("négatif", {"text": "négatif"}, id="text"),
            pytest.param("neg\\S\\pos^^", {"text": "neg^pos"}, id="escaped-caret-is-data"),
        ],
    )
    def test_range_is_low_high_and_clean_text(self, obx7: str, expected: dict[str, Any]) -> None:
        """Numbers become low/high in OBX-6's unit; a composite's first component is the text."""
        env, f = _obx_line(f"OBX|1|NM|X^X||5|mg/L^mg/L^UCUM|{obx7}|||||F")
        found = _call("reference_range", [f[7], f[6]], env)
        flat = {k: (v["value"] if isinstance(v, dict) else v) for k, v in found.items()}
        assert flat == expected
        for key in ("low", "high"):
            if key in found:
                assert found[key]["code"] == "mg/L"
