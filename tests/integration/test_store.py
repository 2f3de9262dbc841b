"""The message store under ``serve``: the writer role stores what the real stack did."""

from __future__ import annotations

import json

import pytest

from broker.ack import read_ack
from broker.adapters.mllp import MllpClient
from broker.testing import run_cli, wait_until
from passerelle_demo.synthetic import adt, patients

pytestmark = pytest.mark.integration


def test_a_message_sent_to_serve_is_traceable_in_the_store(stack):
    """An ADT through the listener: ``messages search --json`` shows it delivered to both."""
    patient = next(p for p in patients(5, seed=4242) if p.cin)
    with MllpClient("127.0.0.1", stack.inbound_port, timeout=10) as client:
        reply = client.send(adt(patient, "A01", control_id="SERVE-STORE-1").encode())
    assert read_ack(reply).code == "AA"
    env = {"PASSERELLE_DATA_DIR": str(stack.data_dir), "PASSERELLE_STORE_URL": None}

    def states() -> dict[str, str]:
        run = run_cli("messages", "search", "--control-id", "SERVE-STORE-1", "--json", env=env)
        if run.code != 0:
            return {}
        items = json.loads(run.stdout)
        return {d["subscriber"]: d["state"] for item in items for d in item["deliveries"]}

    expected = {"dmp-national": "delivered", "lab-legacy": "delivered"}
    assert wait_until(lambda: states() == expected, 60, 0.5), (states(), stack.logs())
    found = run_cli("messages", "search", "--patient", patient.cin, "--json", env=env)
    assert [m["control_id"] for m in json.loads(found.stdout)] == ["SERVE-STORE-1"]
