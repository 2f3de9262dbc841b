"""A subscriber's hl7_version reaches the wire: MSH-12 and the version's MSH-9 on the real stack."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

import passerelle_demo.loopback
from broker.ack import read_ack
from broker.adapters.mllp import MllpClient
from broker.parsing.hl7v2 import parse
from broker.testing import wait_until, write_adapter, write_loopback_adapters
from passerelle_demo.loopback import LoopbackStack
from passerelle_demo.synthetic import adt, patients

pytestmark = pytest.mark.integration


def test_a_v23_subscriber_receives_msh12_23(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """lab-legacy registered with hl7_version 2.3 receives MSH-12 2.3 and no MSH-9.3."""

    def write_with_v23(directory: Path, **options: Any) -> None:
        write_loopback_adapters(directory, **options)
        path = directory / "lab-legacy.yaml"
        lab = yaml.safe_load(path.read_text(encoding="utf-8"))
        write_adapter(directory, {**lab, "hl7_version": "2.3"})

    # The name LoopbackStack calls (it imported it from broker.testing).
    monkeypatch.setattr(passerelle_demo.loopback, "write_loopback_adapters", write_with_v23)
    with LoopbackStack(tmp_path, workers=1) as stack:
        text = adt(patients(1, seed=23)[0], "A01", control_id="V23000001")
        with MllpClient("127.0.0.1", stack.inbound_port, timeout=10) as client:
            assert read_ack(client.send(text.encode())).code == "AA"
        assert wait_until(lambda: "V23000001" in stack.lab.control_ids(), 30), stack.logs()
        (captured,) = [m for m in stack.lab.messages if m.control_id == "V23000001"]
        received = parse(captured.text)
        assert received.version == "2.3"
        assert received.get_all("MSH-9.3") == []
        assert received.event == "ADT^A01"
