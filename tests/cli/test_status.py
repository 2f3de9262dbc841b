"""``passerelle status`` on a real Redis with a subscriber refusing and another down."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from typing import Any

import pytest

from broker import running
from broker.ack import read_ack
from broker.testing import EagerBroker, run_cli
from passerelle_demo.synthetic import adt, patients


def unset_env() -> dict[str, str | None]:
    """Every PASSERELLE_ setting unset: the command finds the system by its runtime file."""
    return {k: None for k in os.environ if k.startswith("PASSERELLE_")}


@pytest.fixture(name="troubled")
def fixture_troubled(make_broker: Any) -> Iterator[EagerBroker]:
    """Patient A's A01 refused by the DMP (422: a dead letter holding A) and its A08 parked
    behind it, patient B's A01 delivered there; the lab answering AE (every message retried
    after a long back-off); one message refused at the edge (no mapping for ADT^A99)."""
    broker = make_broker(retry={"initial_delay_s": 300, "max_delay_s": 600})
    a, b = patients(2, seed=11)
    broker.fhir.mode = "reject"
    broker.lab.mode = "error"
    assert read_ack(broker.receive(adt(a, "A01", control_id="STA0001"))).code == "AA"
    broker.run()
    broker.fhir.mode = "ok"
    assert read_ack(broker.receive(adt(a, "A08", control_id="STA0002"))).code == "AA"
    assert read_ack(broker.receive(adt(b, "A01", control_id="STB0001"))).code == "AA"
    refused = adt(b, "A01", control_id="STB0002").replace("ADT^A01", "ADT^A99", 1)
    assert read_ack(broker.receive(refused)).code == "AR"
    broker.run()
    running.write(broker.settings)
    try:
        yield broker
    finally:
        running.forget()


def test_json_tells_the_truth_of_each_subscriber_and_adapter(troubled: EagerBroker) -> None:
    """One JSON document: the DMP's dead letter, parked message and delivery; the lab's
    backlog in retry; the adapter's refusal and last message; no worker and no listener."""
    done = run_cli("status", "--json", env=unset_env())
    assert done.code == 0, done.stderr
    found = json.loads(done.stdout)
    subs = {s["id"]: s for s in found["subscribers"]}
    lab, dmp = subs["lab-legacy"], subs["dmp-national"]
    assert troubled.fhir_control_ids() == ["STB0001"]
    # Parked as /api/queues counts it (broker.ops.stats.parked): the held patient's stream
    # starts with the dead-lettered A01 itself (an open dead letter), then the A08 behind it.
    assert (dmp["delivered"], dmp["dead_letters_open"], dmp["parked"]) == (1, 1, 1)
    assert dmp["backlog"] == 1
    assert (dmp["retrying"], dmp["next_retry_in_s"]) == (0, None)
    assert troubled.lab.accepted_ids() == []
    assert (lab["delivered"], lab["backlog"], lab["parked"], lab["dead_letters_open"]) == (
        0,
        3,
        0,
        0,
    )
    assert lab["retrying"] >= 1
    assert lab["next_retry_in_s"] > 200
    assert lab["oldest_age_s"] is not None
    (source,) = [s for s in found["inbound"] if s["id"] == "chu-rabat-adt"]
    # The adapter's own counters (pl:adapter:SRC): three accepted, the A99 refused with AR.
    assert (source["received"], source["refused"], source["refused_total"]) == (3, {"AR": 1}, 1)
    assert source["transport"] == "mllp"
    assert source["last_message_at"] is not None
    assert source["listener_up"] is False  # an EagerBroker runs no listener
    assert found["received"] == 3
    assert found["processes"]["workers"]["names"] == []
    assert found["redis"]["ready"] is True
    assert any(ref.startswith("hl7v2-adt@") for ref in found["mappings"]["in_force"])


def test_json_is_the_document_of_the_api(troubled: EagerBroker) -> None:
    """``status --json`` and ``GET /api/overview`` are one document (one function builds both):
    the same fields, and the same figures for every adapter and subscriber."""
    import warnings

    from pydantic import SecretStr

    from broker.api import create_app

    with warnings.catch_warnings():  # Starlette's, about its client's transport (tests/api)
        warnings.filterwarnings("ignore", message=r"Using `httpx` with `starlette\.testclient`")
        from fastapi.testclient import TestClient

    done = run_cli("status", "--json", env=unset_env())
    assert done.code == 0, done.stderr
    cli = json.loads(done.stdout)
    settings = troubled.settings.model_copy(update={"api_token": SecretStr("synthetic-token")})
    with TestClient(create_app(settings, client=troubled.client)) as client:
        reply = client.get("/api/overview", headers={"Authorization": "Bearer synthetic-token"})
    assert reply.status_code == 200
    api = reply.json()
    assert set(cli) == set(api)
    moving = {"oldest_age_s", "flow", "next_retry_in_s"}  # read a moment apart

    def still(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{k: v for k, v in row.items() if k not in moving} for row in rows]

    assert still(cli["inbound"]) == still(api["inbound"])
    assert still(cli["subscribers"]) == still(api["subscribers"])
    for figure in ("received", "rejected", "quarantine", "mappings"):
        assert cli[figure] == api[figure], figure
    assert cli["processes"]["listeners"] == api["processes"]["listeners"]
    assert cli["processes"]["workers"]["names"] == api["processes"]["workers"]["names"] == []


def test_once_prints_one_frame_with_the_figures(troubled: EagerBroker) -> None:
    """``--once``: the tables, with the DMP's open dead letter and the lab's retry."""
    done = run_cli("status", "--once", env=unset_env())
    assert done.code == 0, done.stderr
    rows = {line.split("│")[1].strip(): line for line in done.stdout.splitlines() if "│" in line}
    dmp_cells = [c.strip() for c in rows["dmp-national"].split("│")[1:-1]]
    assert dmp_cells[:6] == ["dmp-national", "1", "1", "1", "1", "-"]
    lab_cells = [c.strip() for c in rows["lab-legacy"].split("│")[1:-1]]
    assert lab_cells[:5] == ["lab-legacy", "0", "3", "0", "0"]
    assert lab_cells[5].startswith(("1 (next in", "2 (next in"))
    adt_cells = [c.strip() for c in rows["chu-rabat-adt"].split("│")[1:-1]]
    # No listener process: its connected peers are not known ("-").
    assert adt_cells[:5] == ["chu-rabat-adt", "mllp", "DOWN", "-", "3"]
    assert adt_cells[6] == "AR 1"
    # The DMP delivered one message: its latency percentiles; the lab none yet.
    assert re.fullmatch(r"\d+/\d+/\d+ ms|[\d.]+/[\d.]+/[\d.]+ s", dmp_cells[-1]), dmp_cells
    assert lab_cells[-1] == "-"
    assert "no worker answers" in done.stdout


def test_without_a_running_system_it_fails_with_one_line(tmp_path) -> None:
    """No runtime file and an embedded Redis that is not there: exit 1, one line."""
    env = {**unset_env(), "PASSERELLE_DATA_DIR": str(tmp_path / "none")}
    done = run_cli("status", "--once", env=env)
    assert done.code == 1
    (line,) = done.stderr.splitlines()
    assert line.startswith("passerelle: cannot reach the broker's Redis")
