"""`passerelle ping` of a FHIR subscriber registered against a real FHIR R4 server (Medplum's
FHIR router, tests/fhir_server), not the project's own capture."""

from __future__ import annotations

import json
from typing import Any

import pytest

from broker.testing import run_cli, wait_until, write_adapter

pytestmark = pytest.mark.integration


def test_ping_reports_the_real_server_s_software_and_fhir_version(fhir_server: Any, tmp_path):
    """GET [base]/metadata of the real server: HTTP 200, its software's name, FHIR 4.0.1."""
    adapters = tmp_path / "adapters"
    write_adapter(
        adapters,
        {
            "id": "dmp-national",
            "name": "DMP",
            "direction": "outbound",
            "transport": "fhir-rest",
            "insecure_http": True,
            "url": fhir_server.base_url,
            "subscribe": {"events": ["ADT^*"]},
        },
    )
    done = run_cli("ping", "dmp-national", "--json", env={"PASSERELLE_ADAPTERS_DIR": str(adapters)})
    assert done.code == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["target"] == f"{fhir_server.base_url}/metadata"
    assert report["details"]["status"] == 200
    assert report["details"]["fhir_version"] == "4.0.1"
    assert "Medplum" in report["details"]["software"]
    # The server logs the request once it has answered it: a moment after the reply arrived.
    assert wait_until(lambda: "/fhir/metadata" in fhir_server.logs(), 10), fhir_server.logs()


def test_ping_of_a_wrong_base_is_the_server_s_http_error(fhir_server: Any, tmp_path):
    """A base URL the server does not serve: its HTTP status, exit 1, one line."""
    adapters = tmp_path / "adapters"
    write_adapter(
        adapters,
        {
            "id": "dmp-national",
            "name": "DMP",
            "direction": "outbound",
            "transport": "fhir-rest",
            "insecure_http": True,
            "url": fhir_server.base_url.replace("/fhir", "/not-fhir"),
            "subscribe": {"events": ["ADT^*"]},
        },
    )
    done = run_cli("ping", "dmp-national", env={"PASSERELLE_ADAPTERS_DIR": str(adapters)})
    assert done.code == 1
    (line,) = done.stderr.splitlines()
    assert line.startswith("passerelle: dmp-national: ")
    assert "answered HTTP 4" in line
