"""Promises of the order, scheduling and document transforms: EI, instants, MDM bodies."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from pydantic import ValidationError

from broker.mapping.transforms import INBOUND, Env, SourceValue
from broker.parsing.hl7v2 import Message, parse, parse_path

MSH = "MSH|^~\\&|HIS|CHUIS|LIS|LABCHUIS|20240316074500||ORM^O01^ORM_O01|T1|P|2.5.1"


def _message(*segments: str) -> tuple[Message, Env]:
    message = parse("\r".join((MSH, *segments)) + "\r")
    return message, Env(message, "Africa/Casablanca", "test")


def _value(message: Message, path: str, index: int = 1) -> SourceValue | None:
    """The value of ``path`` (``ORC-2``, ``SCH-11.4``) in the ``index``-th segment of its name."""
    p = parse_path(path)
    segment = message.segments_named(p.segment)[index - 1]
    reps = segment.repetitions(p.field)
    if not reps:
        return None
    raw = reps[0]
    if p.component is not None:
        comps = raw.split(segment.delims.component)
        raw = comps[p.component - 1] if p.component <= len(comps) else ""
    return SourceValue(raw, segment, p, 1) if raw else None


def _call(name: str, values: list[SourceValue | None], env: Env, args: Any = None) -> Any:
    transform = INBOUND[name]
    if transform.args is not None:
        args = transform.args.model_validate(args or {})
    return transform.fn(values, env, args)


def _text(attachment: dict[str, Any]) -> str:
    return base64.b64decode(attachment["data"]).decode("utf-8")


class TestEiIdentifier:
    """EI (ORC-2/ORC-3, SCH-1/SCH-2) → Identifier in the assigner's system, typed."""

    def test_namespace_names_the_system_and_type_is_table_0203(self):
        """EI-2 namespace gives the system slug; args.type gives the v2-0203 type."""
        message, env = _message("ORC|NW|ORD-7790^HIS Rabat")
        args = {"system": "https://passerelle.ma/fhir/sid/order-placer/{namespace}", "type": "PLAC"}
        ident = _call("ei_identifier", [_value(message, "ORC-2")], env, args)
        assert ident == {
            "system": "https://passerelle.ma/fhir/sid/order-placer/his-rabat",
            "value": "ORD-7790",
            "type": {
                "coding": [
                    {"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "PLAC"}
                ]
            },
        }

    def test_without_namespace_the_sender_names_the_system(self):
        """An EI without EI-2 falls back to MSH-4 (the sending facility)."""
        message, env = _message("ORC|NW|ORD-7790")
        args = {"system": "urn:x:{namespace}"}
        ident = _call("ei_identifier", [_value(message, "ORC-2")], env, args)
        assert ident == {"system": "urn:x:chuis", "value": "ORD-7790"}

    def test_an_empty_entity_identifier_gives_nothing(self):
        """EI-1 empty (only a namespace): no Identifier, no finding."""
        message, env = _message("ORC|NW|^HIS")
        assert _call("ei_identifier", [_value(message, "ORC-2")], env, {"system": "urn:x"}) is None
        assert env.findings == []

    def test_the_type_must_look_like_a_table_0203_code(self):
        """args.type is checked at load: a lower-case word is refused."""
        with pytest.raises(ValidationError):
            INBOUND["ei_identifier"].args.model_validate({"system": "urn:x", "type": "placer"})  # type: ignore[union-attr]


class TestInstant:
    """DTM → FHIR instant (Appointment.start/end)."""

    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            pytest.param("20240402093000", "2024-04-02T09:30:00+00:00", id="ramadan-offset"),
            pytest.param("202401151030", "2024-01-15T10:30:00+01:00", id="no-seconds"),
            pytest.param("20240115103000+0200", "2024-01-15T10:30:00+02:00", id="sent-offset"),
        ],
    )
    def test_a_time_becomes_an_instant_with_an_offset(self, text, expected):
        """Seconds are filled in and the sender's zone gives the offset."""
        message, env = _message(f"TQ1|1||||||{text}")
        assert _call("instant", [_value(message, "TQ1-7")], env) == expected

    def test_a_tq_component_is_read(self):
        """SCH-11.4 (TQ start date/time, v2.3) is read like TQ1-7."""
        message, env = _message("SCH|A1|B1|||||||||^^30^20240402093000^20240402100000")
        assert _call("instant", [_value(message, "SCH-11.4")], env) == "2024-04-02T09:30:00+00:00"

    @pytest.mark.parametrize("text", ["20240402", "20240402253000"])
    def test_a_date_alone_or_a_bad_time_is_left_out_with_a_finding(self, text):
        """An instant needs a time: the element is dropped and the finding names TQ1-7 only."""
        message, env = _message(f"TQ1|1||||||{text}")
        assert _call("instant", [_value(message, "TQ1-7")], env) is None
        assert [(f.code, f.location) for f in env.findings] == [("invalid-date", "TQ1-7")]
        assert text not in env.findings[0].message


class TestDocumentAttachment:
    """MDM^T02 OBX body → DocumentReference.content.attachment."""

    def test_tx_lines_are_joined_as_utf8_text(self):
        """Each OBX TX is a line; the text keeps Arabic and accented letters, base64 of UTF-8."""
        message, env = _message(
            "TXA|1|DS|TX",
            "OBX|1|TX|||Compte rendu\\T\\suivi||||||F",
            "OBX|2|TX|||تقرير الخروج||||||F",
            "NTE|1||relu",
            "OBX|3|TX|||Évolution favorable.||||||F",
        )
        attachment = _call("document_attachment", [_value(message, "OBX-5")], env)
        assert attachment["contentType"] == "text/plain; charset=utf-8"
        assert _text(attachment) == "Compte rendu&suivi\nتقرير الخروج\nÉvolution favorable."
        assert attachment["size"] == len(_text(attachment).encode("utf-8"))

    def test_ft_formatting_and_repetitions_become_newlines(self):
        """FT \\.br\\ and each OBX-5 repetition start a new line."""
        message, env = _message("OBX|1|FT|||Ligne 1\\.br\\Ligne 2~Ligne 3||||||F")
        attachment = _call("document_attachment", [_value(message, "OBX-5")], env)
        assert _text(attachment) == "Ligne 1\nLigne 2\nLigne 3"

    def test_the_body_stops_at_the_first_segment_that_is_not_obx_or_nte(self):
        """A later OBX (after another segment) is not part of this document."""
        message, env = _message("OBX|1|TX|||Corps||||||F", "ZDS|1", "OBX|2|TX|||Autre||||||F")
        attachment = _call("document_attachment", [_value(message, "OBX-5")], env)
        assert _text(attachment) == "Corps"

    def test_an_ed_keeps_its_base64_data_and_mime_type(self):
        """An ED's Base64 data is kept as sent, with the MIME type of ED-2/ED-3."""
        pdf = base64.b64encode(b"%PDF-1.4 synthetic").decode()
        message, env = _message(f"OBX|1|ED|||DPI^AP^PDF^Base64^{pdf}||||||F")
        attachment = _call("document_attachment", [_value(message, "OBX-5")], env)
        assert attachment["contentType"] == "application/pdf"
        assert attachment["data"] == pdf
        assert env.findings == []

    def test_an_ed_with_other_parts_keeps_the_ed_with_a_finding(self):
        """TX beside an ED: the ED is the attachment, and a finding says the rest was left out."""
        pdf = base64.b64encode(b"%PDF-1.4").decode()
        message, env = _message(
            "OBX|1|TX|||Voir pièce jointe||||||F", f"OBX|2|ED|||DPI^AP^PDF^Base64^{pdf}||||||F"
        )
        attachment = _call("document_attachment", [_value(message, "OBX-5")], env)
        assert attachment["data"] == pdf
        assert [(f.code, f.location) for f in env.findings] == [
            ("extra-document-content", "OBX[1]-5")
        ]

    def test_an_ed_that_does_not_decode_is_left_out_with_a_finding(self):
        """Bad base64: no attachment (the DocumentReference is then refused), a finding, no value."""
        message, env = _message("OBX|1|ED|||DPI^AP^PDF^Base64^not base64!||||||F")
        assert _call("document_attachment", [_value(message, "OBX-5")], env) is None
        assert [f.code for f in env.findings] == ["invalid-attachment"]

    def test_a_blank_or_non_text_body_gives_nothing(self):
        """Only blank TX lines, or a coded OBX: no attachment."""
        message, env = _message("OBX|1|TX|||   ||||||F", "OBX|2|CE|||X^Y||||||F")
        assert _call("document_attachment", [_value(message, "OBX-5")], env) is None
