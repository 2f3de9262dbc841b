"""The fast ER7 tokenizer: charsets, delimiters, escapes, paths and what counts as unreadable."""

from __future__ import annotations

import pytest

from broker.errors import HL7v2ParseError
from broker.parsing.hl7v2 import (
    DEFAULT,
    Delimiters,
    decode,
    escape,
    parse,
    parse_path,
    unescape,
)

ADT = (
    "MSH|^~\\&|HIS|CHU-RABAT|PASSERELLE|MA-DMP|20250301101500||ADT^A01^ADT_A01|C1|P|2.5.1|||||MAR|UNICODE UTF-8\r"
    "EVN|A01|20250301101500\r"
    "PID|1||IPP0000001^^^CHU-RABAT^PI~BE123456^^^MA^NNMAR||EL AMRANI^Fatima~العمراني^فاطمة||19800101|F\r"
    "ZPI|custom|segment\r"
    "PV1|1|I|CARDIO^101^1"
)


class TestParse:
    def test_reads_the_header(self):
        """MSH-9, MSH-10 and MSH-12 are exposed by name."""
        message = parse(ADT)
        assert (message.event, message.control_id, message.version) == ("ADT^A01", "C1", "2.5.1")
        assert message.structure == "ADT_A01"
        assert (message.sending_application, message.sending_facility) == ("HIS", "CHU-RABAT")

    def test_paths_select_repetitions_components_and_segments(self):
        """PID-3(*).1 reads every identifier; PID-5(2).1 the Arabic-script family name."""
        message = parse(ADT)
        assert message.get_all("PID-3(*).1") == ["IPP0000001", "BE123456"]
        assert message.get("PID-3(2).5") == "NNMAR"
        assert message.get("PID-5(2).1") == "العمراني"
        assert message.get("PV1-3.2") == "101"
        assert message.get("MSH-2") == "^~\\&"

    def test_unknown_and_z_segments_are_kept(self):
        """Z-segments are tokenized like any other, in their place."""
        message = parse(ADT)
        assert [s.name for s in message.segments] == ["MSH", "EVN", "PID", "ZPI", "PV1"]
        assert message.get("ZPI-2") == "segment"

    def test_lf_separated_segments_are_accepted(self):
        """Senders that use LF instead of CR are read the same way."""
        assert len(parse(ADT.replace("\r", "\n")).segments) == 5

    def test_custom_delimiters_are_honoured(self):
        """Encoding characters come from MSH-1 and MSH-2, not from defaults."""
        message = parse("MSH#*!\\@#A#B#C#D#20250101##ADT*A04#X9#P#2.4\rPID#1##ID1*@*@*AUTH")
        assert message.event == "ADT^A04"
        assert message.get("PID-3.4") == "AUTH"

    def test_usual_delimiters_are_the_default_object(self):
        """``|^~\\&`` gives DEFAULT itself (``escape`` skips its lookup); others their own."""
        assert parse(ADT).delims is DEFAULT
        custom = parse("MSH|^~|A|B|C|D|20250101||ADT^A04|X9|P|2.4").delims
        assert custom == Delimiters(escape="", subcomponent="&")
        assert parse("MSH|^~|A|B|C|D|20250101||ADT^A04|X9|P|2.4").delims is custom

    def test_blank_lines_are_skipped_and_names_still_checked(self):
        """Whitespace-only lines between segments are skipped; a bad name after them is not."""
        message = parse(ADT.replace("\rZPI", "\r \t\r\rZPI"))
        assert [s.name for s in message.segments] == ["MSH", "EVN", "PID", "ZPI", "PV1"]
        with pytest.raises(HL7v2ParseError) as info:
            parse(ADT.replace("\rZPI", "\r  \rzpi"))
        assert info.value.location == "segment 4"

    @pytest.mark.parametrize(
        ("text", "location"),
        [
            pytest.param("hello world", "MSH", id="no-msh"),
            pytest.param("MSH|^", "MSH-2", id="short-msh"),
            pytest.param("MSH|AB~\\&|X|Y", "MSH-2", id="alnum-encoding-chars"),
            pytest.param("MSH|^~\\&|A|B|C|D|20250101||||P|2.5", "MSH-9", id="no-message-type"),
            pytest.param(
                "MSH|^~\\&|A|B|C|D|20250101||ADT^A01||P|2.5", "MSH-10", id="no-control-id"
            ),
        ],
    )
    def test_unreadable_messages_name_the_location(self, text, location):
        """A message that cannot be read at all is a ParseError that says where."""
        with pytest.raises(HL7v2ParseError) as info:
            parse(text)
        assert info.value.location == location


class TestDecode:
    def test_msh18_chooses_the_charset(self):
        """8859/1 in MSH-18 decodes latin-1 bytes even when the adapter says UTF-8."""
        raw = "MSH|^~\\&|A|B|C|D|20250101||ADT^A01|1|P|2.3.1|||||MAR|8859/1\rPID|1||X||Fès".encode(
            "latin-1"
        )
        assert decode(raw, "utf-8").endswith("Fès")

    def test_adapter_charset_applies_when_msh18_is_empty(self):
        """Without MSH-18, the adapter's charset setting is used."""
        raw = "MSH|^~\\&|A|B|C|D|20250101||ADT^A01|1|P|2.3\rPID|1||X||Salé".encode("latin-1")
        assert decode(raw, "latin-1").endswith("Salé")

    def test_invalid_bytes_are_an_error_never_replacement_characters(self):
        """Latin-1 bytes in a UTF-8 message are refused with the byte offset."""
        raw = (
            "MSH|^~\\&|A|B|C|D|20250101||ADT^A01|1|P|2.5|||||MAR|UNICODE UTF-8\rPID|1||Fès".encode(
                "latin-1"
            )
        )
        with pytest.raises(HL7v2ParseError, match="not valid utf-8"):
            decode(raw, "utf-8")

    def test_unknown_msh18_is_an_error(self):
        """An MSH-18 outside HL7 table 0211 is refused, not guessed."""
        raw = b"MSH|^~\\&|A|B|C|D|20250101||ADT^A01|1|P|2.5|||||MAR|KLINGON\r"
        with pytest.raises(HL7v2ParseError, match="unknown character set"):
            decode(raw)


class TestEscapes:
    @pytest.mark.parametrize(
        ("raw", "value"),
        [
            pytest.param("A\\F\\B", "A|B", id="field"),
            pytest.param("A\\S\\B", "A^B", id="component"),
            pytest.param("A\\T\\B", "A&B", id="subcomponent"),
            pytest.param("A\\R\\B", "A~B", id="repetition"),
            pytest.param("A\\E\\B", "A\\B", id="escape"),
            pytest.param("l1\\.br\\l2", "l1\nl2", id="line-break"),
            pytest.param("\\X41\\", "A", id="hex"),
        ],
    )
    def test_unescape(self, raw, value):
        """HL7 escape sequences (v2.5.1 §2.7) resolve to their characters."""
        assert unescape(raw) == value

    def test_escape_round_trips(self):
        """Escaping then unescaping a value with every delimiter gives it back."""
        value = "a|b^c&d~e\\f"
        assert unescape(escape(value)) == value
        assert "|" not in escape(value)

    def test_escape_follows_the_message_delimiters(self):
        """With ``#`` as the field separator and ``!`` as the escape character, those are
        escaped, and a ``|`` (an ordinary character there) is left alone."""
        delims = Delimiters(field="#", component="^", repetition="~", escape="!", subcomponent="&")
        assert escape("a#b|c!d\re", delims) == "a!F!b|c!E!d!.br!e"
        assert escape("plain | text", delims) == "plain | text"

    def test_component_escape_is_resolved_through_paths(self):
        """A value read by path is unescaped with the message's own delimiters."""
        message = parse("MSH|^~\\&|A|B|C|D|1||ADT^A01|1|P|2.5\rNTE|1||Na\\S\\K ratio")
        assert message.get("NTE-3") == "Na^K ratio"
        assert Delimiters().msh2 == "^~\\&"


class TestPaths:
    def test_grammar(self):
        """Segment index, repetition, component and subcomponent parse into a Path."""
        path = parse_path("OBX(2)-5(*).1.2")
        assert (
            path.segment,
            path.segment_index,
            path.field,
            path.repetition,
            path.component,
            path.sub,
        ) == ("OBX", 2, 5, None, 1, 2)

    @pytest.mark.parametrize("bad", ["PID3", "pid-3", "PID-0", "PID-3.0", "PID-3(0)"])
    def test_bad_paths_explain_the_grammar(self, bad):
        """A malformed path is refused with the expected form in the message."""
        with pytest.raises(ValueError, match=r"PID|numbers start at 1"):
            parse_path(bad)
