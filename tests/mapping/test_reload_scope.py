"""Hot reload covers every file of the mappings root (issue 3, item 4), not only hl7v2/.

The FHIR inbound files (``fhir/``), site mappings (``sites/``) and shared tables
(``tables/*.csv``, ``*.yaml``) are reloaded like the HL7 v2 mappings; a set with a lint finding
is refused with a ``mappings.rejected`` event naming file, line and problem, and the previous set
keeps serving; every canonical message records the id and content hash of each mapping (and
table) that produced it. tests/integration/test_hot_reload.py runs the same on the real stack.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from broker.mapping.golden import CONTEXT
from broker.mapping.loader import MappingSet
from broker.mapping.reload import MappingWatcher
from broker.parsing.hl7v2 import decode, parse
from broker.testing import wait_until

ROOT = Path(__file__).resolve().parents[2]


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def told(logs: list[MutableMapping[str, Any]]) -> list[MutableMapping[str, Any]]:
    """The entries above debug: a test run alone captures debug lines too (``audit.unsent``
    where no trail is configured), one run after others gets the level they configured."""
    return [entry for entry in logs if entry.get("log_level") != "debug"]


def append(path: Path, text: str) -> None:
    path.write_text(path.read_text(encoding="utf-8") + text, encoding="utf-8")


@pytest.fixture(name="root")
def fixture_root(tmp_path: Path) -> Path:
    root = tmp_path / "mappings"
    shutil.copytree(ROOT / "mappings", root)
    return root


@pytest.fixture(name="watcher")
def fixture_watcher(root: Path) -> MappingWatcher:
    # interval 0: every call looks at the files (the default looks at most once a second).
    return MappingWatcher(root, MappingSet.load(root), interval_s=0)


def test_tables_fhir_and_site_files_are_reloaded(root: Path, watcher: MappingWatcher) -> None:
    """A changed table, FHIR file and site file serve at the next look; messages record them."""
    before = watcher.current()
    table = root / "tables" / "lab-local-to-loinc.csv"
    append(table, "CA,http://loinc.org,17861-6,Calcium [Mass/volume] in Serum or Plasma\n")
    fhir = root / "fhir" / "r4.yaml"
    append(fhir, "# reviewed\n")
    site = root / "sites" / "chu-rabat.yaml"
    append(site, "# reviewed\n")

    with capture_logs() as logs:
        after = watcher.current()
    assert after is not before
    assert [entry["event"] for entry in told(logs)] == ["mappings.reloaded"]
    assert after.fhir is not None
    assert after.fhir.sha256 == sha(fhir)
    assert after.fhir.tables["lab-local-to-loinc"].values["CA"]["code"] == "17861-6"
    assert {ref.id: ref.sha256 for ref in after.refs}["chu-rabat-adt"] == sha(site)

    case = root / "tests" / "oru_r01_value_types_v251.hl7"
    result = after.map_hl7v2(parse(decode(case.read_bytes())), CONTEXT)
    recorded = {ref.id: ref.sha256 for ref in result.mappings}
    assert recorded["hl7v2-oru-r01"] == sha(root / "hl7v2" / "oru_r01.yaml")
    assert recorded["table:lab-local-to-loinc"] == sha(table)


@pytest.mark.parametrize(
    ("file", "change", "problem"),
    [
        # Loading would take the last 'adapters'; lint refuses the duplicate key.
        ("fhir/sites/chu-rabat-fhir.yaml", "adapters: [other]\n", "duplicate key 'adapters'"),
        ("tables/lab-local-to-loinc.csv", "CA,http://loinc.org\n", "the row has 2 columns"),
        ("sites/chu-rabat.yaml", "extends: hl7v2-nothing\n", "duplicate key 'extends'"),
    ],
    ids=["fhir-site", "table", "site"],
)
def test_a_set_failing_lint_is_refused_and_the_previous_serves(
    root: Path, watcher: MappingWatcher, file: str, change: str, problem: str
) -> None:
    before = watcher.current()
    assert watcher.rejected is None
    append(root / file, change)
    with capture_logs() as logs:
        assert watcher.current() is before
    [event] = told(logs)
    # Kept for the console's overview: the last refused reload, where and why.
    assert watcher.rejected is not None
    assert (watcher.rejected.file, watcher.rejected.line) == (event["file"], event["line"])
    assert problem in watcher.rejected.reason
    assert event["event"] == "mappings.rejected"
    assert event["file"] == str(root / file)
    assert event["line"] == len((root / file).read_text(encoding="utf-8").splitlines())
    assert problem in event["reason"]
    # Nothing changed since: no second attempt, the previous set still serves.
    with capture_logs() as logs:
        assert watcher.current() is before
    assert told(logs) == []


def test_a_started_watcher_reloads_in_its_own_thread(root: Path) -> None:
    """After start() the listener's event loop never lints or loads: current() only reads."""
    watcher = MappingWatcher(root, MappingSet.load(root), interval_s=0.1)
    watcher.start()
    try:
        before = watcher.current()
        append(root / "sites" / "chu-rabat.yaml", "# reviewed\n")
        # Generous bound: lint + load take a few seconds on a busy 2-core machine.
        assert wait_until(lambda: watcher.current() is not before, timeout=30)
        assert {r.id: r.sha256 for r in watcher.current().refs}["chu-rabat-adt"] == sha(
            root / "sites" / "chu-rabat.yaml"
        )
    finally:
        watcher.stop()
