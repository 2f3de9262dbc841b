"""The overview (``GET /api/overview``, the console's first page) tells the truth of the queues.

Messages go through the real intake and drains (``EagerBroker`` on a real Redis, capture peers
on loopback): a subscriber refusing one patient's first message must show one open dead letter
and that patient's later message parked, counted in its backlog.
"""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from broker import keys
from broker.ack import read_ack
from broker.api import create_app
from broker.ops.overview import overview
from broker.testing import EagerBroker
from passerelle_demo.synthetic import adt, patients

TOKEN = "synthetic-test-token"


@pytest.fixture(name="broker")
def fixture_broker(make_broker) -> EagerBroker:
    """Three patients' A01s, the first refused for good by the FHIR subscriber, its A08 parked;
    one unreadable input refused at the edge."""
    broker: EagerBroker = make_broker(partitions=1)
    x, y, z = patients(3, seed=4711)
    broker.fhir.fail_next(1, "reject")
    for patient, event, control_id in ((x, "A01", "X-1"), (y, "A01", "Y-1"), (z, "A01", "Z-1")):
        answer = broker.receive(adt(patient, event, control_id=control_id))
        assert answer is not None
        assert read_ack(answer).code == "AA"
    broker.run()
    answer = broker.receive(adt(x, "A08", control_id="X-2"))
    assert answer is not None
    assert read_ack(answer).code == "AA"
    broker.run()
    assert broker.receive(b"this is not HL7") is not None
    return broker


def test_inbound_figures_per_adapter(broker: EagerBroker) -> None:
    before = time.time()
    view = overview(broker.client, broker.settings, inbound=["chu-rabat-adt"])
    [adt_source] = [a for a in view["inbound"] if a["id"] == "chu-rabat-adt"]
    assert adt_source["received"] == 4
    assert adt_source["refused"] == {"AE": 1}
    assert adt_source["refused_total"] == 1
    assert adt_source["registered"] is True
    assert before - 60 < adt_source["last_message_at"] <= time.time()
    assert view["rejected"] == 1


def test_a_subscriber_backlog_counts_what_is_parked(broker: EagerBroker) -> None:
    view = overview(broker.client, broker.settings, subscribers=["dmp-national", "lab-legacy"])
    subs = {s["id"]: s for s in view["subscribers"]}
    dmp = subs["dmp-national"]
    assert dmp["dead_letters_open"] == 1
    # The held patient's parked stream: X-1 (the dead letter, first) and X-2 behind it.
    assert dmp["parked"] == 2
    assert dmp["backlog"] == dmp["depth"] + dmp["parked"] == 2
    assert dmp["delivered"] == 2  # Y-1 and Z-1
    assert broker.fhir_control_ids() == ["Y-1", "Z-1"]
    assert subs["lab-legacy"]["dead_letters_open"] == 0


def test_a_partition_waiting_for_a_retry_counts_as_retrying(broker: EagerBroker) -> None:
    broker.client.set(keys.hold("dmp-national", 0), str(time.time() + 60))
    view = overview(broker.client, broker.settings, subscribers=["dmp-national"])
    assert [s["retrying"] for s in view["subscribers"] if s["id"] == "dmp-national"] == [1]


def test_a_registered_subscriber_without_traffic_is_listed(redis_client, redis_url) -> None:
    from broker.settings import Settings

    view = overview(redis_client, Settings(redis_url=redis_url), subscribers=["quiet"])
    assert [s["id"] for s in view["subscribers"]] == ["quiet"]
    assert view["subscribers"][0]["backlog"] == 0


def test_the_route_shows_the_same_and_the_mappings_in_force(broker: EagerBroker) -> None:
    settings = broker.settings.model_copy(update={"api_token": SecretStr(TOKEN)})
    with TestClient(create_app(settings, client=broker.client)) as client:
        reply = client.get("/api/overview", headers={"Authorization": f"Bearer {TOKEN}"})
    assert reply.status_code == 200
    body = reply.json()
    direct = overview(broker.client, broker.settings)
    assert {s["id"]: s["backlog"] for s in body["subscribers"]} == {
        s["id"]: s["backlog"] for s in direct["subscribers"]
    }
    assert [a["id"] for a in body["inbound"]][:1] == ["chu-rabat-adt"]
    assert any(ref.startswith("hl7v2-adt@") for ref in body["mappings"]["in_force"])
    assert body["mappings"]["rejected_reload"] is None
    # No listener process and no Celery worker run beside an EagerBroker: the probes say so.
    [listener] = body["processes"]["listeners"]
    assert (listener["adapter"], listener["accepting"]) == ("chu-rabat-adt", False)
    assert body["processes"]["workers"]["names"] == []
