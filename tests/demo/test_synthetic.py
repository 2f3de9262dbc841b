"""Tests of the synthetic Moroccan patients and HL7 v2 messages."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import replace
from datetime import date, datetime

import pytest
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message

from broker.parsing.hl7v2 import decode, parse
from passerelle_demo import synthetic
from passerelle_demo.synthetic import MOROCCO_TZ, Patient, adt, oru_r01, patients, stream

CIN_RE = re.compile(r"^[A-Z]{1,2}\d{5,6}$")


@pytest.fixture(name="people")
def fixture_people() -> list[Patient]:
    return patients(50, seed=11)


class TestPatients:
    def test_same_seed_same_patients(self) -> None:
        """The same seed gives the same patients; another seed gives others."""
        assert patients(20, seed=3) == patients(20, seed=3)
        assert patients(20, seed=3) != patients(20, seed=4)

    def test_identifiers_have_the_real_shapes(self, people: list[Patient]) -> None:
        """IPPs are IPP + 7 digits, CINs 1-2 letters + 5-6 digits, phones +2126 + 8 digits."""
        for p in people:
            assert re.fullmatch(r"IPP\d{7}", p.ipp)
            assert p.cin is None or CIN_RE.fullmatch(p.cin)
            assert re.fullmatch(r"\+2126\d{8}", p.phone)
            assert p.insurer in {"CNSS", "CNOPS"}
            assert p.insurance_number.isdigit()
            assert p.sex in {"F", "M"}

    def test_identifiers_are_unique(self) -> None:
        """No two patients of one call share an IPP or a CIN."""
        people = patients(2_000, seed=5)
        assert len({p.ipp for p in people}) == 2_000
        cins = [p.cin for p in people if p.cin]
        assert len(set(cins)) == len(cins)

    def test_names_come_in_both_scripts(self, people: list[Patient]) -> None:
        """Each Latin-script name is paired with its Arabic-script spelling from the same list."""
        family = dict(synthetic.FAMILY_NAMES)
        given = dict(synthetic.FEMALE_GIVEN_NAMES + synthetic.MALE_GIVEN_NAMES)
        for p in people:
            assert family[p.family] == p.family_ar
            assert given[p.given] == p.given_ar
            assert re.search(r"[\u0600-\u06ff]", p.family_ar + p.given_ar)

    def test_only_minors_lack_a_cin(self) -> None:
        """Patients under 18 carry no national identity card number; adults always do."""
        people = patients(300, seed=9, minors=0.5)
        for p in people:
            minor = (date(2025, 1, 1) - p.birth_date).days < 18 * 365
            assert (p.cin is None) == minor
        assert any(p.cin is None for p in people)

    def test_addresses_are_moroccan_cities_with_postal_codes(self, people: list[Patient]) -> None:
        """Every address is in a listed city with that city's postal code."""
        codes = {c.name: c.postal_code for c in synthetic.CITIES}
        for p in people:
            assert codes[p.city] == p.postal_code


class TestAdt:
    @pytest.mark.parametrize("event", ["A01", "A03", "A04", "A08"])
    def test_segments_and_header(self, people: list[Patient], event: str) -> None:
        """An ADT message has MSH, EVN, PID, PV1 and IN1, and MSH-9/MSH-10 as asked."""
        msg = parse(adt(people[0], event, control_id="CTRL1"))
        assert [s.name for s in msg.segments] == ["MSH", "EVN", "PID", "PV1", "IN1"]
        assert msg.event == f"ADT^{event}"
        assert msg.control_id == "CTRL1"
        assert msg.version == "2.5.1"
        assert msg.get("MSH-18") == "UNICODE UTF-8"

    def test_pid_carries_ipp_cin_and_both_scripts(self, people: list[Patient]) -> None:
        """PID-3 holds the IPP (PI) and the CIN (NNMAR); PID-5 the Latin then the Arabic name."""
        p = next(p for p in people if p.cin)
        msg = parse(adt(p, control_id="C"))
        assert msg.get("PID-3(1).1") == p.ipp
        assert msg.get("PID-3(1).4") == "CHU-RABAT"
        assert msg.get("PID-3(1).5") == "PI"
        assert msg.get("PID-3(2).1") == p.cin
        assert msg.get("PID-3(2).5") == "NNMAR"
        assert msg.get_all("PID-5(*).1") == [p.family, p.family_ar]
        assert msg.get_all("PID-5(*).2") == [p.given, p.given_ar]
        assert msg.get("PID-7") == p.birth_date.strftime("%Y%m%d")
        assert msg.get("PID-8") == p.sex
        assert msg.get("PID-11.5") == p.postal_code
        assert msg.get("PID-13.1") == p.phone

    def test_visit_and_insurance(self, people: list[Patient]) -> None:
        """PV1 has class, ward^room^bed, attending doctor, visit number, admit time; IN1 the AMO."""
        p = people[0]
        msg = parse(adt(p, "A04", control_id="C"))
        assert msg.get("PV1-2") in {"I", "O", "E"}
        assert len(msg.first("PV1").components(3)) == 3  # type: ignore[union-attr]
        assert msg.get("PV1-7.1").startswith("MED")
        assert msg.get("PV1-19")
        assert msg.get("PV1-44")
        assert msg.get("IN1-3") == p.insurer
        assert msg.get("IN1-36") == p.insurance_number

    def test_delimiters_in_values_are_escaped(self, people: list[Patient]) -> None:
        """Values holding | ^ ~ \\ & are escaped in ER7 and read back unchanged."""
        odd = replace(people[0], street="3 Rue A|B^C~D\\E & F", family="O^BRIEN")
        text = adt(odd, control_id="C")
        msg = parse(text)
        assert msg.get("PID-11.1") == "3 Rue A|B^C~D\\E & F"
        assert msg.get("PID-5.1") == "O^BRIEN"
        assert "\\T\\" in text
        assert "\\F\\" in text

    def test_same_inputs_same_text(self, people: list[Patient]) -> None:
        """The same patient, event and control id give byte-identical messages."""
        assert adt(people[1], control_id="X") == adt(people[1], control_id="X")

    def test_when_sets_msh7_with_offset(self, people: list[Patient]) -> None:
        """A given time is written to MSH-7 and EVN-2 with its UTC offset."""
        when = datetime(2025, 3, 4, 10, 30, tzinfo=MOROCCO_TZ)
        msg = parse(adt(people[0], control_id="C", when=when))
        assert msg.get("MSH-7") == "20250304103000+0100"
        assert msg.get("EVN-2") == "20250304103000+0100"

    def test_version_23_is_valid_23(self, people: list[Patient]) -> None:
        """v2.3 has no MSH-9.3, declares MSH-18 UNICODE and sends one PID-5 name."""
        text = adt(people[0], control_id="C", version="2.3")
        msg = parse(text)
        assert msg.get("MSH-9.3") == ""
        assert msg.get("MSH-18") == "UNICODE"
        assert len(msg.get_all("PID-5(*).1")) == 1
        assert decode(text.encode("utf-8")) == text

    def test_unknown_event_is_refused(self, people: list[Patient]) -> None:
        """An unsupported trigger event is a ValueError naming it."""
        with pytest.raises(ValueError, match="A99"):
            adt(people[0], "A99", control_id="C")


class TestOruR01:
    def test_results_are_loinc_ucum_with_ranges_and_flags(self, people: list[Patient]) -> None:
        """Each OBX is NM, LOINC-coded, with a UCUM unit, a range, an N/H/L flag and status F."""
        msg = parse(oru_r01(people[0], control_id="C", n_obx=20))
        obx = msg.segments_named("OBX")
        assert len(obx) == 20
        for seg in obx:
            assert seg.value(2) == "NM"
            assert seg.value(3, 3) == "LN"
            assert seg.value(6, 3) == "UCUM"
            assert seg.value(7)
            assert seg.value(8) in {"N", "H", "L"}
            assert seg.value(11) == "F"
            float(seg.value(5))
        assert msg.get("OBR(1)-4.1") == "58410-2"
        assert msg.get("OBX(1)-3.1") == "718-7"

    def test_flags_agree_with_ranges(self) -> None:
        """OBX-8 is H above, L below and N inside the OBX-7 range."""
        for p in patients(30, seed=2):
            for seg in parse(oru_r01(p, control_id="C", n_obx=26)).segments_named("OBX"):
                value, rng, flag = float(seg.value(5)), seg.value(7), seg.value(8)
                if rng.startswith("<"):
                    expected = "H" if value > float(rng[1:]) else "N"
                elif rng.startswith(">"):
                    expected = "L" if value < float(rng[1:]) else "N"
                else:
                    low, high = map(float, rng.split("-"))
                    expected = "L" if value < low else "H" if value > high else "N"
                assert flag == expected

    def test_one_obr_per_panel(self, people: list[Patient]) -> None:
        """Results are grouped under one ORC and one OBR per LOINC panel."""
        msg = parse(oru_r01(people[0], control_id="C", n_obx=26))
        assert [s.value(4) for s in msg.segments_named("OBR")] == list(synthetic.PANELS)
        assert len(msg.segments_named("ORC")) == len(synthetic.PANELS)

    def test_needs_one_obx(self, people: list[Patient]) -> None:
        """n_obx below 1 is refused."""
        with pytest.raises(ValueError, match="n_obx"):
            oru_r01(people[0], control_id="C", n_obx=0)


class TestConformance:
    @pytest.mark.parametrize("version", ["2.3.1", "2.4", "2.5", "2.5.1"])
    def test_hl7apy_strict_validation_passes(self, people: list[Patient], version: str) -> None:
        """hl7apy validates ADT and ORU^R01 strictly against the declared version's structures."""
        for text in (
            adt(people[0], "A01", control_id="C", version=version),
            adt(people[0], "A03", control_id="C", version=version),
            oru_r01(people[0], control_id="C", n_obx=26, version=version),
        ):
            message = parse_message(
                text, validation_level=VALIDATION_LEVEL.STRICT, find_groups=True
            )
            message.validate()

    def test_hl7apy_reads_23_a01(self, people: list[Patient]) -> None:
        """hl7apy validates a v2.3 ADT^A01 strictly (v2.3 has no MSH-9.3 for other events)."""
        text = adt(people[0], "A01", control_id="C", version="2.3")
        parse_message(text, validation_level=VALIDATION_LEVEL.STRICT, find_groups=True).validate()


class TestStream:
    def test_control_ids_are_unique_and_count_is_exact(self) -> None:
        """A stream yields exactly n messages with distinct MSH-10."""
        items = list(stream(500, seed=1))
        assert len(items) == 500
        assert len({parse(er7).control_id for _, _, er7 in items}) == 500

    def test_event_matches_message_and_mix(self) -> None:
        """The yielded event is the message's MSH-9, drawn only from the mix."""
        items = list(stream(300, seed=2, mix={"ADT^A01": 1, "ORU^R01": 3}, n_obx=3))
        for _, event, er7 in items:
            assert parse(er7).event == event
        counts = Counter(event for _, event, _ in items)
        assert set(counts) == {"ADT^A01", "ORU^R01"}
        assert counts["ORU^R01"] > counts["ADT^A01"]

    def test_patients_recur(self) -> None:
        """Several messages concern the same patient, so per-patient order can be checked."""
        items = list(stream(200, seed=3, n_patients=10))
        assert len({p.ipp for p, _, _ in items}) <= 10

    def test_deterministic(self) -> None:
        """The same arguments give the same messages."""
        assert list(stream(50, seed=4)) == list(stream(50, seed=4))

    def test_unknown_event_in_mix_is_refused(self) -> None:
        """A mix naming an unsupported event is a ValueError."""
        with pytest.raises(ValueError, match="SIU"):
            list(stream(5, seed=1, mix={"SIU^S12": 1}))
