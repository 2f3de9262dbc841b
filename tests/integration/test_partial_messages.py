"""Keep the good part of a flawed message, on the real stack (issue 8, item 7).

The 50-OBX ORU^R01 sample with four malformed OBX goes in over MLLP; its 46 good results must
reach the FHIR capture subscriber, and each dropped OBX must be visible in the API: on the
message (``GET /api/messages/{id}``) and in the adapter's report (``GET /api/unmapped/{id}``).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import pytest

from broker.ack import read_ack
from broker.adapters.mllp import MllpClient
from broker.settings import REPO_ROOT
from broker.testing import wait_until
from passerelle_demo.loopback import API_TOKEN

pytestmark = pytest.mark.integration

SAMPLE = REPO_ROOT / "tests" / "samples" / "hl7v2" / "oru_r01_50obx_malformed.hl7"
OBX = "PATIENT_RESULT/ORDER_OBSERVATION/OBSERVATION/OBX"


def _api(stack: Any, path: str) -> Any:
    request = urllib.request.Request(
        f"http://127.0.0.1:{stack.settings.http_port}{path}",
        headers={"Authorization": f"Bearer {API_TOKEN}"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


def _dropped_count(stack: Any) -> int | None:
    """The adapter's dropped-segment total, or None while the API is not answering yet."""
    try:
        return int(_api(stack, "/api/unmapped/chu-rabat-adt")["segments_dropped"])
    except urllib.error.URLError:
        return None


def test_the_good_results_arrive_and_the_dropped_ones_are_visible(stack):
    """AA; 46 Observations in one transaction to the FHIR server; 4 findings in the API."""
    text = SAMPLE.read_bytes().decode("utf-8").replace("|LAB04021|", "|PARTIAL0001|", 1)
    codes = [
        obx.split("|")[3].split("^")[0]
        for obx in text.split("\r")
        if obx.startswith("OBX|") and obx.split("|")[2] == "NM" and obx.split("|")[3]
    ]
    assert wait_until(lambda: _dropped_count(stack) is not None, 60), stack.logs()
    dropped_before = _dropped_count(stack) or 0
    received_before = stack.fhir.count
    with MllpClient("127.0.0.1", stack.inbound_port, timeout=10) as client:
        assert read_ack(client.send(text.encode("utf-8"))).code == "AA"

    def delivered() -> list[dict[str, Any]]:
        return [
            bundle
            for bundle in stack.fhir.received[received_before:]
            if "BK274519" in json.dumps(bundle) and "DiagnosticReport" in json.dumps(bundle)
        ]

    assert wait_until(delivered, 60), stack.logs()
    (bundle,) = delivered()
    resources = [e["resource"] for e in bundle["entry"]]
    observations = [r for r in resources if r["resourceType"] == "Observation"]
    assert len(observations) == 46
    sent = {c["code"] for o in observations for c in o["code"]["coding"]}
    # Of the NM results with a code, the comma value and the units-in-value one were malformed.
    assert set(codes) - sent == {"751-8", "2276-4"}
    assert "14647-2" not in sent  # the shifted OBX: the value type where OBX-3 belongs
    reports = [r for r in resources if r["resourceType"] == "DiagnosticReport"]
    assert sum(len(r["result"]) for r in reports) == 46
    assert stack.fhir.invalid == 0

    envelope_id = bundle["identifier"]["value"]
    envelope = _api(stack, f"/api/messages/{envelope_id}?reason=INC-2001+checking+the+mapping")
    dropped = [f for f in envelope["findings"] if f["code"] == "segment-dropped"]
    assert [f["location"] for f in dropped] == [
        "PATIENT_RESULT(1)/ORDER_OBSERVATION(1)/OBSERVATION(16)/OBX",
        "PATIENT_RESULT(1)/ORDER_OBSERVATION(2)/OBSERVATION(13)/OBX",
        "PATIENT_RESULT(1)/ORDER_OBSERVATION(3)/OBSERVATION(1)/OBX",
        "PATIENT_RESULT(1)/ORDER_OBSERVATION(4)/OBSERVATION(4)/OBX",
    ]
    assert all("3,72" not in f["message"] for f in dropped)

    assert wait_until(lambda: (_dropped_count(stack) or 0) >= dropped_before + 4, 30), stack.logs()
    report = _api(stack, "/api/unmapped/chu-rabat-adt")
    by_rule = {(d["location"], d["rule"]): d["count"] for d in report["dropped_segments"]}
    assert by_rule[(OBX, "Observation.code")] >= 1
    assert by_rule[(OBX, "observation require[1]")] >= 1
    assert by_rule[(OBX, "observation require[2]")] >= 2
