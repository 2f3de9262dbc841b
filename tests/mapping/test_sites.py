"""Promises of site mappings (``extends:``): per-adapter overrides of a base mapping."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest

from broker.errors import MappingSpecError
from broker.mapping import MapContext, MappingSet
from broker.mapping.lint import lint
from broker.parsing.hl7v2 import decode, parse

ROOT = Path(__file__).resolve().parents[2]
ZSEG = ROOT / "tests" / "samples" / "hl7v2" / "adt_a01_zsegments.hl7"


def _ctx(source: str) -> MapContext:
    return MapContext("env-site", source, received_at=datetime(2024, 3, 15, tzinfo=UTC))


def _patient(mappings: MappingSet, source: str) -> dict[str, object]:
    result = mappings.map_hl7v2(parse(decode(ZSEG.read_bytes())), _ctx(source))
    patient: dict[str, object] = result.bundle["entry"][1]["resource"]
    return patient


def _root(tmp_path: Path, site: str) -> Path:
    (tmp_path / "hl7v2").mkdir()
    shutil.copy(ROOT / "mappings" / "hl7v2" / "adt.yaml", tmp_path / "hl7v2" / "adt.yaml")
    shutil.copytree(ROOT / "mappings" / "tables", tmp_path / "tables")  # adt.yaml's shared maps
    (tmp_path / "sites").mkdir()
    (tmp_path / "sites" / "site.yaml").write_text(site, encoding="utf-8")
    return tmp_path


class TestSiteSelection:
    def test_the_site_mapping_serves_its_adapter(self, mappings: MappingSet) -> None:
        """A message from chu-rabat-adt gets the ZPI-3 member number; the base's rules still run."""
        patient = _patient(mappings, "chu-rabat-adt")
        systems = [i.get("system") for i in patient["identifier"]]  # type: ignore[attr-defined]
        assert "https://passerelle.ma/fhir/sid/cnops-member" in systems
        assert "https://passerelle.ma/fhir/sid/cin" in systems
        assert patient["gender"] == "female"

    def test_other_adapters_keep_the_base(self, mappings: MappingSet) -> None:
        """Any other adapter maps the same message with the base: ZPI is not read."""
        patient = _patient(mappings, "another-hospital")
        systems = [i.get("system") for i in patient["identifier"]]  # type: ignore[attr-defined]
        assert "https://passerelle.ma/fhir/sid/cnops-member" not in systems

    def test_the_result_names_site_and_base(self, mappings: MappingSet) -> None:
        """MapResult.mappings records the site mapping and the base it extends, with hashes."""
        result = mappings.map_hl7v2(parse(decode(ZSEG.read_bytes())), _ctx("chu-rabat-adt"))
        assert [m.id for m in result.mappings] == [
            "chu-rabat-adt",
            "hl7v2-adt",
            "table:hl7-0001-administrative-sex",  # the base's shared tables, with their hashes
            "table:hl7-0004-patient-class",
        ]

    def test_unmapped_follows_the_adapter(self, mappings: MappingSet) -> None:
        """ZPI-3 is read for the site's adapter only."""
        message = parse(decode(ZSEG.read_bytes()))
        assert "ZPI-3" not in mappings.unmapped(message, "chu-rabat-adt")
        assert "ZPI-3" in mappings.unmapped(message)

    def test_supports_with_an_adapter(self, mappings: MappingSet) -> None:
        """supports() answers for the base without an adapter and for the site with one."""
        assert mappings.supports("ADT^A01", "2.5.1")
        assert mappings.supports("ADT^A01", "2.5.1", "chu-rabat-adt")


class TestPatches:
    def test_remove_and_replace(self, tmp_path: Path) -> None:
        """remove: drops rules by id, replace: swaps a rule by target, for the site only."""
        site = """
id: site
extends: hl7v2-adt
source: {adapters: [site]}
resources:
  - role: patient
    remove: [business-phone, "address[]"]
    replace:
      - {target: gender, value: unknown}
"""
        mappings = MappingSet.load(_root(tmp_path, site))
        patient = _patient(mappings, "site")
        assert patient["gender"] == "unknown"
        assert "address" not in patient
        assert "address" in _patient(mappings, "base")

    def test_a_new_resource(self, tmp_path: Path) -> None:
        """A role the base lacks adds a resource, and may reference the base's roles."""
        site = """
id: site
extends: hl7v2-adt
source: {adapters: [site]}
resources:
  - role: vip-flag
    type: Flag
    when: {path: ZVI-2, equals: VIP}
    rules:
      - {target: status, value: active}
      - {target: code.text, from: ZVI-2.1}
      - {target: subject, reference: patient}
"""
        mappings = MappingSet.load(_root(tmp_path, site))
        result = mappings.map_hl7v2(parse(decode(ZSEG.read_bytes())), _ctx("site"))
        kinds = [e["resource"]["resourceType"] for e in result.bundle["entry"]]
        assert kinds[-1] == "Flag"


@pytest.mark.parametrize(
    ("site", "expected"),
    [
        pytest.param(
            "id: site\nextends: nope\nsource: {adapters: [a]}\n",
            "site.yaml:2:10: extends: no inbound mapping has id 'nope'",
            id="unknown-base",
        ),
        pytest.param(
            "id: site\nextends: hl7v2-adt\nsource: {adapters: [a]}\nresources:\n"
            "  - role: patient\n    remove: [nothing]\n",
            "site.yaml:6:14: resources[0].remove[0]: no rule of role 'patient' in hl7v2-adt",
            id="remove-no-match",
        ),
        pytest.param(
            "id: site\nextends: site\nsource: {adapters: [a]}\n",
            "site.yaml:2:10: extends: mappings extend each other in a cycle: site -> site",
            id="cycle",
        ),
    ],
)
def test_lint_checks_extends(tmp_path: Path, site: str, expected: str) -> None:
    """Lint names an unknown base, a rule that matches nothing and a cycle, at the value."""
    root = _root(tmp_path, site)
    found = [str(p) for p in lint(root)]
    assert any(expected in p for p in found), found
    with pytest.raises(MappingSpecError):
        MappingSet.load(root)


def test_the_real_mappings_lint_clean() -> None:
    """mappings/ (with its site file) has no lint problem, alone or as one site file."""
    assert lint(ROOT / "mappings") == []
    assert lint(ROOT / "mappings" / "sites" / "chu-rabat.yaml") == []
