"""A site's mappings directory is laid over the packaged base set (``broker.mapping.layers``)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from broker.errors import MappingSpecError
from broker.mapping import MapContext, MappingSet
from broker.mapping.lint import lint
from broker.mapping.reload import MappingWatcher
from broker.parsing.hl7v2 import decode, parse
from broker.settings import BASE_MAPPINGS_DIR, REPO_ROOT, Settings
from broker.testing import run_cli, write_adapter
from broker.translate import translate

SAMPLE = (REPO_ROOT / "tests" / "samples" / "hl7v2" / "adt_a01_v251.hl7").read_bytes()
"""PID-8 is F: the base set maps it to female."""

SITE_MAPPING = """\
id: hopital-fes-adt
description: ADT from Hopital Fes - hl7v2-adt with the site's own PID-8 table.
extends: hl7v2-adt
source:
  adapters: [hopital-fes-adt]
resources:
  - role: patient
    replace:
      - {target: gender, from: PID-8, map: fes-sex}
"""
SITE_TABLE = "id: fes-sex\nvalues: {F: unknown, M: unknown}\n"


def gender(roots: Any, source: str = "translate") -> str:
    bundle = json.loads(translate(SAMPLE, to="fhir", mappings_dir=roots, source=source))
    (patient,) = [
        e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient"
    ]
    return str(patient["gender"])


def mapped_gender(mappings: MappingSet, source: str) -> str:
    context = MapContext("env-1", source, received_at=datetime(2024, 1, 1, tzinfo=UTC))
    result = mappings.map_hl7v2(parse(decode(SAMPLE)), context)
    (patient,) = [
        e["resource"] for e in result.bundle["entry"] if e["resource"]["resourceType"] == "Patient"
    ]
    return str(patient["gender"])


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """A site's directory: a site mapping for its adapter and the local table it uses."""
    directory = tmp_path / "site-mappings"
    (directory / "sites").mkdir(parents=True)
    (directory / "tables").mkdir()
    (directory / "sites" / "hopital-fes.yaml").write_text(SITE_MAPPING, encoding="utf-8")
    (directory / "tables" / "fes-sex.yaml").write_text(SITE_TABLE, encoding="utf-8")
    return directory


def test_the_checkout_serves_its_own_mappings_and_a_site_directory_comes_last(site):
    """From a checkout (editable install) the base set is the repository's mappings/ itself."""
    assert BASE_MAPPINGS_DIR.resolve() == (REPO_ROOT / "mappings").resolve()
    assert Settings().mapping_roots == (BASE_MAPPINGS_DIR,)
    assert Settings(mappings_dir=site).mapping_roots == (BASE_MAPPINGS_DIR, site)


def test_a_site_directory_adds_its_site_mapping_and_table_to_the_base_set(site):
    """The site's files load with the base's: its adapter gets its mapping, others the base."""
    roots = Settings(mappings_dir=site).mapping_roots
    assert gender(roots, source="hopital-fes-adt") == "unknown"
    assert gender(roots) == "female"
    with pytest.raises(MappingSpecError, match="no inbound mapping has id 'hl7v2-adt'"):
        MappingSet.load(site)  # alone, the site's directory lacks the mapping it extends


def test_a_site_file_at_a_base_files_path_replaces_it(site):
    """Same relative path in both: the site's file is read and the base's is not."""
    base_table = BASE_MAPPINGS_DIR / "tables" / "hl7-0001-administrative-sex.yaml"
    text = base_table.read_text(encoding="utf-8").replace("F: female", "F: other")
    (site / "tables" / base_table.name).write_text(text, encoding="utf-8")
    assert gender((BASE_MAPPINGS_DIR, site)) == "other"
    assert gender((BASE_MAPPINGS_DIR,)) == "female"


def test_a_site_table_under_another_file_name_cannot_take_a_base_tables_name(site):
    """Only a file at the same path replaces; the same table name elsewhere names both files."""
    text = "id: hl7-0001-administrative-sex\nvalues: {F: other}\n"
    (site / "tables" / "sex.yaml").write_text(text, encoding="utf-8")
    with pytest.raises(MappingSpecError, match="also defined by") as caught:
        MappingSet.load((BASE_MAPPINGS_DIR, site))
    assert caught.value.file == str(site / "tables" / "sex.yaml")


def test_hot_reload_sees_a_file_added_to_the_site_directory(tmp_path):
    """The watcher walks every layer afresh: a new site file serves without a restart."""
    site = tmp_path / "site"
    site.mkdir()
    roots = (BASE_MAPPINGS_DIR, site)
    watcher = MappingWatcher(roots, MappingSet.load(roots), interval_s=0)
    assert mapped_gender(watcher.current(), "hopital-fes-adt") == "female"
    (site / "sites").mkdir()
    (site / "tables").mkdir()
    (site / "sites" / "fes.yaml").write_text(SITE_MAPPING, encoding="utf-8")
    (site / "tables" / "fes-sex.yaml").write_text(SITE_TABLE, encoding="utf-8")
    assert mapped_gender(watcher.current(), "hopital-fes-adt") == "unknown"


def test_lint_over_layers_names_the_site_file(site):
    """Lint reads the layers as load does; a problem names the site's own file and line."""
    assert lint((BASE_MAPPINGS_DIR, site)) == []
    broken = SITE_MAPPING.replace("description:", "descripton:")
    (site / "sites" / "hopital-fes.yaml").write_text(broken, encoding="utf-8")
    (problem,) = lint((BASE_MAPPINGS_DIR, site))
    assert (problem.file, problem.line) == (str(site / "sites" / "hopital-fes.yaml"), 2)


def test_the_cli_lays_mappings_and_the_environment_over_the_base_set(site, tmp_path):
    """`check --mappings DIR` and `mappings lint` with PASSERELLE_MAPPINGS_DIR use both layers."""
    adapters = tmp_path / "adapters"
    write_adapter(
        adapters,
        {
            "id": "hopital-fes-adt",
            "name": "Hopital Fes",
            "direction": "inbound",
            "transport": "mllp",
            "listen": "127.0.0.1:2575",
        },
    )
    checked = run_cli("check", "--adapters", str(adapters), "--mappings", str(site))
    assert (checked.code, checked.stdout.strip()) == (0, "configuration ok"), checked.stderr
    linted = run_cli("mappings", "lint", env={"PASSERELLE_MAPPINGS_DIR": str(site)})
    assert linted.code == 0, linted.stdout + linted.stderr
    missing = run_cli("check", "--adapters", str(adapters), "--mappings", str(tmp_path / "nowhere"))
    assert missing.code == 1
    assert "the mappings directory does not exist" in missing.stderr
