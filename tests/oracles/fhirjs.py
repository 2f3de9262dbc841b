"""FHIR.js (npm ``fhir`` 4.12.0) as a test oracle: many Bundles validated in one node process.

``tests/fhir_server/validate_bundles.mjs`` does the validating; this module finds node (a skip
with the reason when it or FHIR.js is missing, a failure under ``CI=true``, as the real FHIR
server's fixtures do) and passes the Bundles through a temporary file. It imports nothing from
``broker``: FHIR.js is the validator that is not the product's fhir.resources models.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

__all__ = ["FHIR_SERVER_DIR", "node_with_fhirjs", "validate"]

FHIR_SERVER_DIR = Path(__file__).resolve().parents[1] / "fhir_server"
VALIDATOR = FHIR_SERVER_DIR / "validate_bundles.mjs"
_NEEDED = (
    "the independent FHIR validation needs Node.js >= 20 and the packages of tests/fhir_server "
    "(Debian: apt-get install nodejs npm; then `make tests/fhir_server/node_modules/.installed`"
    " or `make test`)"
)


def node_with_fhirjs() -> str:
    """The node binary, FHIR.js installed; else a skip with the reason (a failure under CI=true)."""
    node = shutil.which("node")
    problem = None
    if node is None:
        problem = f"node is not on PATH: {_NEEDED}"
    elif not (FHIR_SERVER_DIR / "node_modules" / "fhir").is_dir():
        problem = f"FHIR.js is not installed in {FHIR_SERVER_DIR}: {_NEEDED}"
    if problem is not None or node is None:
        if os.environ.get("CI") == "true":
            pytest.fail(problem)
        pytest.skip(problem)
    return node


def validate(bundles: dict[str, dict[str, Any]], workdir: Path) -> dict[str, list[dict[str, str]]]:
    """FHIR.js's errors by Bundle name (only the Bundles with errors), from one node process.

    Each error has ``resource`` (``Bundle.entry[i].resource (Type/id)``), ``location`` (a FHIR
    path such as ``Patient.gender``) and ``message``.
    """
    node = node_with_fhirjs()
    path = workdir / "bundles.json"
    items = [{"name": name, "bundle": bundle} for name, bundle in bundles.items()]
    path.write_text(json.dumps(items), encoding="utf-8")
    result = subprocess.run(
        [node, str(VALIDATOR), str(path)],
        cwd=FHIR_SERVER_DIR,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, f"{VALIDATOR.name} failed:\n{result.stderr}"
    report = json.loads(result.stdout)
    assert report["validated"] == len(items), f"validated {report['validated']} of {len(items)}"
    return {failure["name"]: failure["errors"] for failure in report["failures"]}
