"""HL7 v2 acknowledgments: building (checked by hl7apy) and reading (synthetic data only)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message

from broker.ack import ERROR_CODES, AckReply, build_ack, read_ack, should_acknowledge
from broker.errors import HL7v2ParseError
from broker.parsing.hl7v2 import parse

CASABLANCA = timezone(timedelta(hours=1))
NOW = datetime(2024, 3, 15, 10, 15, 0, tzinfo=CASABLANCA)


def adt(version: str = "2.5.1", control_id: str = "MSG0001", msh2: str = "^~\\&") -> str:
    """A synthetic ADT^A01 from the Rabat hospital's HIS to the lab."""
    f = "|"
    return (
        f"MSH{f}{msh2}{f}HIS{f}CHU-RABAT{f}LABSYS{f}LABO-CENTRAL{f}20240315101500{f}{f}"
        f"ADT^A01^ADT_A01{f}{control_id}{f}P{f}{version}\r"
        "PID|1||MA123456^^^CHU-RABAT||Benjelloun^Youssef||19790203|M\r"
    )


def segments(ack: str) -> list[list[str]]:
    """Split an ACK into segments of fields."""
    assert ack.endswith("\r")
    return [line.split("|") for line in ack[:-1].split("\r")]


VERSIONS = ["2.3", "2.3.1", "2.4", "2.5", "2.5.1"]


class TestBuildAck:
    @pytest.mark.parametrize("version", VERSIONS)
    @pytest.mark.parametrize("code", ["AA", "AE", "AR", "CA", "CE", "CR"])
    def test_hl7apy_parses_every_ack(self, version: str, code: str) -> None:
        """hl7apy reads each ACK with MSA-1 = code and MSA-2 = the request's MSH-10."""
        ack = build_ack(code, parse(adt(version)), text="PID-7 | invalide ^ date", now=NOW)
        message = parse_message(ack, find_groups=False)
        assert message.msh.msh_12.to_er7() == version
        assert message.msa.msa_1.to_er7() == code
        assert message.msa.msa_2.to_er7() == "MSG0001"
        has_err = bool(message.children.get("ERR"))
        assert has_err == (code not in ("AA", "CA"))

    @pytest.mark.parametrize("version", ["2.3.1", "2.4", "2.5", "2.5.1"])
    def test_hl7apy_strict_validation_accepts_error_acks(self, version: str) -> None:
        """An AE ACK passes hl7apy's strict structure validation for its version."""
        ack = build_ack("AE", parse(adt(version)), text="refus", error_location="PID-7")
        parse_message(ack, find_groups=False, validation_level=VALIDATION_LEVEL.STRICT).validate()

    def test_header_answers_the_sender(self) -> None:
        """MSH-3/4 and MSH-5/6 are swapped, MSH-9 is ACK^A01^ACK, MSH-11/12 are echoed."""
        msh = segments(build_ack("AA", parse(adt()), control_id="ACK0001", now=NOW))[0]
        assert msh[2:7] == ["LABSYS", "LABO-CENTRAL", "HIS", "CHU-RABAT", "20240315101500+0100"]
        assert msh[8:12] == ["ACK^A01^ACK", "ACK0001", "P", "2.5.1"]

    def test_header_falls_back_to_our_names(self) -> None:
        """With no MSH-5/6 in the request, MSH-3/4 are our configured names."""
        request = parse("MSH|^~\\&|HIS|CHU-RABAT|||20240315||ADT^A08|MSG0002|T|2.4\r")
        msh = segments(build_ack("AA", request, sending_facility="GHT-FES"))[0]
        assert msh[2:4] == ["PASSERELLE", "GHT-FES"]
        assert msh[10] == "T"

    def test_v23_has_no_message_structure(self) -> None:
        """Before v2.3.1 MSH-9 is ACK^trigger (no MSH-9.3)."""
        assert segments(build_ack("AA", parse(adt("2.3"))))[0][8] == "ACK^A01"

    def test_new_control_id_fits_st20(self) -> None:
        """Without control_id, MSH-10 is a fresh id of at most 20 characters."""
        first = segments(build_ack("AA", parse(adt())))[0][9]
        second = segments(build_ack("AA", parse(adt())))[0][9]
        assert 0 < len(first) <= 20
        assert first != second

    def test_positive_ack_has_no_err(self) -> None:
        """AA carries MSH and MSA only, and no MSA-3 without text."""
        assert [s[:3] for s in segments(build_ack("AA", parse(adt())))[1:]] == [
            ["MSA", "AA", "MSG0001"]
        ]

    def test_err_layout_v25(self) -> None:
        """v2.5+: ERR-2 ERL from the location, ERR-3 table 0357, ERR-4 E, ERR-8 the text."""
        ack = build_ack(
            "AE", parse(adt()), text="date invalide", error_code="102", error_location="PID-7"
        )
        assert segments(ack)[2] == [
            "ERR",
            "",
            "PID^1^7",
            "102^Data type error^HL70357",
            "E",
            "",
            "",
            "",
            "date invalide",
        ]

    def test_err_location_with_component(self) -> None:
        """A location with a component becomes segment^seq^field^rep^component."""
        ack = build_ack("AE", parse(adt()), error_location="PID-3.1")
        assert segments(ack)[2][2] == "PID^1^3^1^1"

    def test_err_layout_before_v25(self) -> None:
        """Before v2.5 the error is ERR-1: segment^seq^field^code&description&HL70357."""
        ack = build_ack("AR", parse(adt("2.4")), error_code="200", error_location="MSH-9")
        assert segments(ack)[2] == ["ERR", "MSH^1^9^200&Unsupported message type&HL70357"]

    def test_error_code_defaults_to_internal_error(self) -> None:
        """An error ACK without error_code reports 0357 code 207."""
        ack = build_ack("AE", parse(adt()))
        assert segments(ack)[2][3] == "207^Application internal error^HL70357"

    def test_text_is_escaped(self) -> None:
        """Delimiters inside the text are escaped (v2.5.1 §2.7), so they cannot split fields."""
        ack = build_ack("AE", parse(adt()), text="PID-7 | attendu ^ AAAAMMJJ & ~ \\")
        msa = segments(ack)[1]
        assert msa[3] == "PID-7 \\F\\ attendu \\S\\ AAAAMMJJ \\T\\ \\R\\ \\E\\"
        assert read_ack(ack).text == "PID-7 | attendu ^ AAAAMMJJ & ~ \\"

    def test_uses_the_request_delimiters(self) -> None:
        """An ACK to a message with unusual encoding characters uses the same ones."""
        request = parse(adt(msh2="$~\\&").replace("ADT^A01^ADT_A01", "ADT$A01$ADT_A01"))
        ack = build_ack("AE", request, text="a$b")
        assert ack.startswith("MSH|$~\\&|")
        assert "|ACK$A01$ACK|" in ack
        assert "MSA|AE|MSG0001|a\\S\\b" in ack
        assert read_ack(ack) == AckReply("AE", "MSG0001", "a$b", "207")

    def test_no_request_gives_v251_ack_with_empty_msa2(self) -> None:
        """For bytes that are not HL7, the ACK is v2.5.1 with an empty MSA-2."""
        ack = build_ack("AR", None, text="not an HL7 message", error_code="100")
        message = parse_message(ack, find_groups=False)
        assert message.msh.msh_12.to_er7() == "2.5.1"
        assert segments(ack)[1][:3] == ["MSA", "AR", ""]
        assert read_ack(ack).error_code == "100"

    @pytest.mark.parametrize(
        ("version", "has_err_3"),
        [
            pytest.param("2.3.1", False, id="2.3.1<2.5"),
            pytest.param("2.4", False, id="2.4<2.5"),
            pytest.param("2.5", True, id="2.5"),
            pytest.param("2.8", True, id="2.8>2.5.1"),
            pytest.param("2.10", True, id="2.10 compares numerically"),
        ],
    )
    def test_version_compare_is_numeric(self, version: str, has_err_3: bool) -> None:
        """Versions compare as number tuples, so 2.8 and 2.10 count as v2.5 or later."""
        err = segments(build_ack("AE", parse(adt(version))))[2]
        assert (len(err) > 3) == has_err_3

    def test_unknown_code_is_refused(self) -> None:
        """A code outside table 0008 is a ValueError."""
        with pytest.raises(ValueError, match="acknowledgment code"):
            build_ack("OK", None)

    def test_table_0357_is_complete(self) -> None:
        """The error table holds the 13 codes of HL7 table 0357."""
        assert sorted(ERROR_CODES, key=int) == [
            "0",
            "100",
            "101",
            "102",
            "103",
            "200",
            "201",
            "202",
            "203",
            "204",
            "205",
            "206",
            "207",
        ]


class TestReadAck:
    @pytest.mark.parametrize("version", VERSIONS)
    def test_round_trip(self, version: str) -> None:
        """read_ack reads back what build_ack wrote, in every version."""
        ack = build_ack("AE", parse(adt(version)), text="refusé", error_code="103")
        assert read_ack(ack.encode("utf-8")) == AckReply("AE", "MSG0001", "refusé", "103")

    def test_positive_ack_from_a_peer(self) -> None:
        """A minimal AA from a legacy peer with LF separators is read."""
        reply = b"MSH|^~\\&|LAB|LABO||HIS|20240315||ACK|L1|P|2.3\nMSA|AA|MSG0001\n"
        reply_read = read_ack(reply)
        assert reply_read == AckReply("AA", "MSG0001", "", None)
        assert reply_read.accepted

    def test_missing_msa_is_a_parse_error(self) -> None:
        """A reply without MSA is an HL7v2ParseError located at MSA-1."""
        with pytest.raises(HL7v2ParseError) as caught:
            read_ack(b"MSH|^~\\&|LAB|LABO||HIS|20240315||ACK|L1|P|2.5.1\r")
        assert caught.value.location == "MSA-1"

    def test_latin1_reply(self) -> None:
        """A charset other than UTF-8 can be named for the reply's bytes."""
        reply = "MSH|^~\\&|LAB\rMSA|AE|MSG0001|donnée refusée\r".encode("latin-1")
        assert read_ack(reply, charset="latin-1").text == "donnée refusée"


class TestShouldAcknowledge:
    @pytest.mark.parametrize(
        ("condition", "accepted", "expected"),
        [
            pytest.param("AL", True, True, id="AL-success"),
            pytest.param("AL", False, True, id="AL-error"),
            pytest.param("NE", True, False, id="NE-success"),
            pytest.param("NE", False, False, id="NE-error"),
            pytest.param("ER", True, False, id="ER-success"),
            pytest.param("ER", False, True, id="ER-error"),
            pytest.param("SU", True, True, id="SU-success"),
            pytest.param("SU", False, False, id="SU-error"),
            pytest.param("", True, True, id="empty-success"),
            pytest.param("", False, True, id="empty-error"),
            pytest.param(" su ", False, False, id="case-and-spaces"),
        ],
    )
    def test_table_0155(self, condition: str, accepted: bool, expected: bool) -> None:
        """HL7 table 0155 (MSH-15/16): AL always, NE never, ER on error, SU on success, empty always."""
        assert should_acknowledge(condition, accepted) is expected
