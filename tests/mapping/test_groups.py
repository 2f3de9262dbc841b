"""Promises of segment groups whose instances start at the first of several segments.

Synthetic messages only (Moroccan test patients, no real data).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from broker.errors import MappingSpecError
from broker.mapping import MapContext, MappingSet
from broker.mapping.hl7v2_in.scopes import Scope, group_scopes
from broker.mapping.spec import GroupSpec
from broker.parsing.hl7v2 import parse

MSH = "MSH|^~\\&|LIS|LABCHUIS|PASSERELLE|MS|20240316091000||{type}|{id}|P|{version}"
PID = "PID|1||BE123456^^^MA^NNMAR~IPP0042317^^^CHUIS^PI||EL AMRANI^Fatima^^^^^L||19620312|F"


def obr(n: int, filler: str) -> str:
    return f"OBR|{n}|ORD-{n}|{filler}|2345-7^Glucose^LN|||20240316080000" + "|" * 18 + "F"


def chunks(starts: str | list[str], names: list[str], members: list[str] | None = None) -> Any:
    """The segment names of each instance of one group over a message of ``names``."""
    text = "\r".join(["MSH|^~\\&|A|B|C|D|20240101||ORU^R01|1|P|2.5.1", *names]) + "\r"
    root = Scope(None, parse(text).segments, None)
    groups = {"G": GroupSpec(starts=starts, members=members)}
    return [[s.name for s in scope.segments] for scope in group_scopes(groups, ["G"], root)["G"]]


def resources(result: Any, kind: str) -> list[dict[str, Any]]:
    return [e["resource"] for e in result.bundle["entry"] if e["resource"]["resourceType"] == kind]


def identifiers(resource: dict[str, Any]) -> dict[str, str]:
    # The order key (issue 8) has no type; PLAC and FILL are the IG's identifiers.
    return {
        i["type"]["coding"][0]["code"]: i["value"]
        for i in resource.get("identifier", [])
        if "type" in i
    }


class TestStarts:
    """``starts: [ORC, OBR]``: a later start continues an instance that has not seen it yet."""

    @pytest.mark.parametrize(
        ("names", "expected"),
        [
            pytest.param(["ORC", "OBR", "OBX"], [["ORC", "OBR", "OBX"]], id="orc-then-obr"),
            pytest.param(["OBR", "OBR"], [["OBR"], ["OBR"]], id="obr-obr"),
            pytest.param(
                ["OBR", "OBX", "ORC", "OBR"], [["OBR", "OBX"], ["ORC", "OBR"]], id="orc-begins"
            ),
            pytest.param(["ORC", "ORC", "OBR"], [["ORC"], ["ORC", "OBR"]], id="orc-orc"),
            pytest.param(["PID", "ORC", "OBR"], [["ORC", "OBR"]], id="leading-segments-outside"),
        ],
    )
    def test_instances(self, names: list[str], expected: list[list[str]]) -> None:
        """Instances follow the HL7 v2 abstract syntax ``[ORC] OBR ...``."""
        assert chunks(["ORC", "OBR"], names) == expected

    def test_one_start_is_unchanged(self) -> None:
        """``starts: OBR`` still begins an instance at every OBR."""
        assert chunks("OBR", ["ORC", "OBR", "OBX", "OBR"]) == [["OBR", "OBX"], ["OBR"]]

    def test_members_between_starts(self) -> None:
        """VXU ORDER: ORC [TQ1] RXA, with members listed, stays one instance."""
        names = ["ORC", "TQ1", "RXA", "RXR", "ORC", "RXA"]
        got = chunks(["ORC", "RXA"], names, members=["TQ1", "RXR"])
        assert got == [["ORC", "TQ1", "RXA", "RXR"], ["ORC", "RXA"]]

    @pytest.mark.parametrize(
        "starts", [pytest.param([], id="empty"), ["ORC", "orc"], ["OBR", "OBR"], "OB"]
    )
    def test_bad_starts_are_refused(self, starts: Any) -> None:
        """starts is a segment name or a list of distinct ones."""
        with pytest.raises(ValidationError):
            GroupSpec(starts=starts)


class TestORU:
    """ORU^R01 ORDER_OBSERVATION begins at ORC when one precedes OBR (v2.5.1 §7.3.1)."""

    def test_orc_numbers_go_to_their_own_order(self, mappings: MappingSet, ctx: MapContext) -> None:
        """ORC-2/ORC-3 fill the ServiceRequest identifiers; an order without ORC uses OBR-2/3."""
        text = "\r".join(
            [
                MSH.format(type="ORU^R01^ORU_R01", id="GRP1", version="2.5.1"),
                PID,
                obr(1, "LAB-1"),
                "OBX|1|NM|2345-7^Glucose^LN||5.4|mmol/L||||||F",
                "ORC|RE|PLC-9^CHUIS|FIL-9^LABCHUIS",
                obr(2, "LAB-2"),
                "OBX|1|NM|2345-7^Glucose^LN||6.1|mmol/L||||||F",
            ]
        )
        result = mappings.map_hl7v2(parse(text + "\r"), ctx)
        first, second = resources(result, "ServiceRequest")
        assert identifiers(first) == {"PLAC": "ORD-1", "FILL": "LAB-1"}
        assert identifiers(second) == {"PLAC": "PLC-9", "FILL": "FIL-9"}
        reports = resources(result, "DiagnosticReport")
        assert [len(r["result"]) for r in reports] == [1, 1]


class TestVXU:
    """VXU^V04 ORDER begins at ORC: ORC-3 identifies the Immunization it precedes."""

    def test_filler_number_per_administration(self, mappings: MappingSet, ctx: MapContext) -> None:
        """Each RXA's own ORC-3 is its Immunization.identifier (FILL); no ORC, no identifier."""
        text = "\r".join(
            [
                MSH.format(type="VXU^V04^VXU_V04", id="GRP2", version="2.5.1"),
                PID,
                "ORC|RE||VAX-1^CSAGADIR",
                "RXA|0|1|20240322100500|20240322100500|08^Hep B^CVX|0.5|mL^mL^UCUM",
                "RXA|0|1|20230916|20230916|19^BCG^CVX|999",
                "ORC|RE||VAX-3^CSAGADIR",
                "TQ1|1",
                "RXA|0|1|20240322101000|20240322101000|116^rotavirus^CVX|999",
            ]
        )
        result = mappings.map_hl7v2(parse(text + "\r"), ctx)
        found = [identifiers(i) for i in resources(result, "Immunization")]
        assert found == [{"FILL": "VAX-1"}, {}, {"FILL": "VAX-3"}]


class TestRuleGroupLoop:
    """A rule's ``each: GROUP`` builds one element per group instance, reading its segments."""

    def test_siu_participant_reads_its_own_aip(self, mappings: MappingSet, ctx: MapContext) -> None:
        """Each AIP's AIP-4 role goes to the participant built from the same AIP's AIP-3."""
        text = "\r".join(
            [
                MSH.format(type="SIU^S12^SIU_S12", id="GRP3", version="2.5.1"),
                "SCH|RDV-1^CHUIS|RDV-1^CHUIS|||||||30|min|^^30^20240402093000^20240402100000"
                "|||||||||||||||Booked",
                PID,
                "RGS|1|A",
                "AIP|1|A|12345^BENNANI^Youssef^^^Dr^^^CHUIS|D^Médecin^99CHUIS",
                "NTE|1||Salle 2",
                "AIP|2|A|INF01^ALAOUI^Samira^^^^^^CHUIS",
                "AIP|3|A|INF02^IDRISSI^Amina^^^^^^CHUIS|N^Infirmière^99CHUIS",
            ]
        )
        result = mappings.map_hl7v2(parse(text + "\r"), ctx)
        (appointment,) = resources(result, "Appointment")
        people = [p for p in appointment["participant"] if p["actor"].get("type") == "Practitioner"]
        got = [
            (p["actor"]["identifier"]["value"], [t["coding"][0]["code"] for t in p.get("type", [])])
            for p in people
        ]
        assert got == [("12345", ["D"]), ("INF01", []), ("INF02", ["N"])]

    def test_unknown_group_is_a_load_error(self, tmp_path: Any) -> None:
        """each: naming no declared group is refused at load, naming the rule's key."""
        root = tmp_path / "mappings"
        shutil.copytree(Path(__file__).resolve().parents[2] / "mappings", root)
        siu = root / "hl7v2" / "siu.yaml"
        siu.write_text(
            siu.read_text(encoding="utf-8").replace(
                "each: PERSONNEL_RESOURCE", "each: PERSONEL_RESOURCE"
            ),
            encoding="utf-8",
        )
        with pytest.raises(MappingSpecError, match=r"each.*no group 'PERSONEL_RESOURCE'"):
            MappingSet.load(root)
