"""Loading mappings/fhir/: problems name file and line, lint names the column, reload sees edits."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest

from broker.errors import MappingSpecError
from broker.mapping import MapContext, MappingSet
from broker.mapping.lint import lint
from broker.mapping.reload import MappingWatcher

ROOT = Path(__file__).resolve().parents[3] / "mappings"
BASE = """\
id: fhir-r4
event-system: https://passerelle.ma/fhir/CodeSystem/fhir-inbound-event
resources:
  Patient:
    require:
      - {check: identifier.exists(), reason: a patient needs an identifier}
  Observation:
    patient: subject
"""


def root_with(tmp_path: Path, text: str, site: str | None = None) -> Path:
    """A mappings root: the real tables, one FHIR file, no HL7 mapping."""
    shutil.copytree(ROOT / "tables", tmp_path / "tables")
    (tmp_path / "fhir").mkdir()
    (tmp_path / "fhir" / "r4.yaml").write_text(text, encoding="utf-8")
    if site is not None:
        (tmp_path / "fhir" / "site.yaml").write_text(site, encoding="utf-8")
    return tmp_path


class TestLoad:
    def test_the_real_files_load_with_ten_types_and_the_site(self) -> None:
        """mappings/fhir/ declares the ten resource types of the issue and CHU Rabat's site."""
        fhir = MappingSet.load(ROOT).fhir
        assert fhir is not None
        assert sorted(fhir.types) == sorted(
            [
                "Patient",
                "Encounter",
                "Observation",
                "DiagnosticReport",
                "ServiceRequest",
                "Condition",
                "AllergyIntolerance",
                "Immunization",
                "Appointment",
                "DocumentReference",
            ]
        )
        assert set(fhir.sites) == {"chu-rabat-fhir"}

    def test_a_fhirpath_error_names_file_line_and_key(self, tmp_path: Path) -> None:
        """Load stops at the first problem, naming where it is."""
        root = root_with(tmp_path, BASE.replace("patient: subject", "patient: subject.("))
        with pytest.raises(MappingSpecError) as caught:
            MappingSet.load(root)
        assert caught.value.file.endswith("r4.yaml")
        assert caught.value.line == 8
        assert caught.value.key == "resources.Observation.patient"

    def test_an_unknown_table_is_refused(self, tmp_path: Path) -> None:
        """codes: must name a shared table of mappings/tables/."""
        text = BASE + "normalise:\n  codes:\n    - {system: https://x.ma/lab, table: nope}\n"
        with pytest.raises(MappingSpecError, match="no shared table 'nope'"):
            MappingSet.load(root_with(tmp_path, text))

    def test_a_site_of_an_unknown_base_is_refused(self, tmp_path: Path) -> None:
        """extends: names the base file's id."""
        site = "id: s\nextends: other\nadapters: [a]\nnormalise: {}\n"
        with pytest.raises(MappingSpecError, match="no FHIR inbound file has id 'other'"):
            MappingSet.load(root_with(tmp_path, BASE, site))

    def test_without_the_folder_fhir_input_is_refused(self, tmp_path: Path) -> None:
        """No mappings/fhir/: a clear NoMappingError, not a crash."""
        from broker.errors import NoMappingError

        shutil.copytree(ROOT / "tables", tmp_path / "tables")
        mappings = MappingSet.load(tmp_path)
        ctx = MapContext("e", "a", received_at=datetime(2024, 1, 1, tzinfo=UTC))
        with pytest.raises(NoMappingError, match="mappings/fhir/ is missing"):
            mappings.map_fhir({"resourceType": "Patient"}, ctx)


class TestLint:
    def test_every_problem_is_reported_at_its_column(self, tmp_path: Path) -> None:
        """FHIRPath syntax at its column inside the value, type names, system URIs."""
        text = (
            BASE.replace("patient: subject", "patient: subject.foo()")
            + "  Observatoin:\n    patient: subject\n"
            + "normalise:\n  identifier-systems:\n    cin: https://passerelle.ma/fhir/sid/cin\n"
        )
        root = root_with(tmp_path, text)
        found = [(p.line, p.col, p.reason.split(":")[0]) for p in lint(root)]
        assert found == [
            (8, 22, "resources.Observation.patient"),
            (9, 3, "resources.Observatoin"),
            (13, 5, "normalise.identifier-systems.cin"),
        ]

    def test_a_single_fhir_file_is_linted(self, tmp_path: Path) -> None:
        """``passerelle mappings lint mappings/fhir/r4.yaml`` checks that file."""
        root = root_with(tmp_path, BASE.replace("identifier.exists()", "identifier.exists("))
        (problem,) = lint(root / "fhir" / "r4.yaml")
        assert problem.line == 6
        assert "not valid FHIRPath" in problem.reason

    def test_the_real_files_are_clean(self) -> None:
        """mappings/fhir/ lints clean."""
        assert [p for p in lint(ROOT) if "/fhir/" in p.file] == []


class TestReload:
    def test_a_changed_fhir_file_is_picked_up(self, tmp_path: Path) -> None:
        """The watcher reloads when a file of mappings/fhir/ changes; a broken edit is refused."""
        root = root_with(tmp_path, BASE)
        watcher = MappingWatcher(root, MappingSet.load(root), interval_s=0)
        fhir = watcher.current().fhir
        assert fhir is not None
        assert "Condition" not in fhir.types
        (root / "fhir" / "r4.yaml").write_text(
            BASE + "  Condition:\n    patient: subject\n", encoding="utf-8"
        )
        fhir = watcher.current().fhir
        assert fhir is not None
        assert "Condition" in fhir.types
        (root / "fhir" / "r4.yaml").write_text(
            BASE + "  Condition:\n    patient: (\n", encoding="utf-8"
        )
        fhir = watcher.current().fhir
        assert fhir is not None
        assert "Condition" in fhir.types  # the previous set keeps serving
