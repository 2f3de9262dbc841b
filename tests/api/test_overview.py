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
    view = overview(broker.client, broker.settings, adapters=list(broker.adapters.values()))
    [adt_source] = [a for a in view["inbound"] if a["id"] == "chu-rabat-adt"]
    assert adt_source["received"] == 4
    assert adt_source["refused"] == {"AE": 1}
    assert adt_source["refused_total"] == 1
    assert (adt_source["registered"], adt_source["transport"]) == (True, "mllp")
    assert before - 60 < adt_source["last_message_at"] <= time.time()
    # No listener process runs beside an EagerBroker: probed, and found not accepting.
    assert adt_source["listener_up"] is False
    assert view["rejected"] == 1
    assert view["received"] == 4
    assert view["redis"]["ready"] is True


def test_without_probing_no_listener_is_claimed(broker: EagerBroker) -> None:
    view = overview(
        broker.client, broker.settings, adapters=list(broker.adapters.values()), probe=False
    )
    assert [a["listener_up"] for a in view["inbound"]] == [None]
    assert view["processes"] == {"listeners": [], "workers": None}


def test_an_inbound_http_adapter_listens_on_the_api(broker: EagerBroker) -> None:
    """An inbound HTTP adapter is a route of the API: its listener is the API's address."""
    import socket

    from broker.adapters.spec import AdapterSpec

    web = AdapterSpec.model_validate(
        {"id": "portail-web", "name": "Portail web", "direction": "inbound", "transport": "http"}
    )
    with socket.create_server(("127.0.0.1", 0)) as api:
        port = api.getsockname()[1]
        view = overview(broker.client, broker.settings, adapters=[web], api=("127.0.0.1", port))
    [row] = [a for a in view["inbound"] if a["id"] == "portail-web"]
    assert (row["transport"], row["listener_up"], row["received"]) == ("http", True, 0)
    assert {"adapter": "portail-web", "address": f"127.0.0.1:{port}", "accepting": True} in (
        view["processes"]["listeners"]
    )


def test_a_subscriber_backlog_counts_what_is_parked(broker: EagerBroker) -> None:
    view = overview(broker.client, broker.settings, adapters=list(broker.adapters.values()))
    subs = {s["id"]: s for s in view["subscribers"]}
    dmp = subs["dmp-national"]
    assert dmp["dead_letters_open"] == 1
    # The held patient's parked stream holds X-1 (the open dead letter, counted as such) and
    # X-2 behind it: one parked message, as the message store says.
    assert dmp["parked"] == 1
    assert dmp["backlog"] == dmp["depth"] + dmp["parked"] == 1
    assert dmp["delivered"] == 2  # Y-1 and Z-1
    assert broker.fhir_control_ids() == ["Y-1", "Z-1"]
    assert subs["lab-legacy"]["dead_letters_open"] == 0


def test_a_partition_waiting_for_a_retry_counts_as_retrying(broker: EagerBroker) -> None:
    now = time.time()
    broker.client.set(keys.hold("dmp-national", 0), str(now + 60))
    view = overview(broker.client, broker.settings, now=now)
    [dmp] = [s for s in view["subscribers"] if s["id"] == "dmp-national"]
    assert (dmp["retrying"], dmp["next_retry_in_s"]) == (1, 60.0)
    # A mark whose back-off has run out (it outlives it by a minute) is no retry waiting.
    broker.client.set(keys.hold("dmp-national", 0), str(now - 1))
    view = overview(broker.client, broker.settings, now=now)
    [dmp] = [s for s in view["subscribers"] if s["id"] == "dmp-national"]
    assert (dmp["retrying"], dmp["next_retry_in_s"]) == (0, None)


def test_a_registered_subscriber_without_traffic_is_listed(redis_client, redis_url) -> None:
    from broker.adapters.spec import AdapterSpec
    from broker.settings import Settings

    quiet = AdapterSpec.model_validate(
        {
            "id": "quiet",
            "name": "Quiet subscriber",
            "direction": "outbound",
            "transport": "fhir-rest",
            "insecure_http": True,
            "url": "http://127.0.0.1:9/fhir",
            "subscribe": {"events": ["ADT^A01"]},
        }
    )
    view = overview(redis_client, Settings(redis_url=redis_url), adapters=[quiet])
    assert [s["id"] for s in view["subscribers"]] == ["quiet"]
    assert view["subscribers"][0]["backlog"] == 0
    assert view["subscribers"][0]["latency_s"] is None  # nothing delivered: no percentile


def test_latency_percentiles_per_subscriber(broker: EagerBroker) -> None:
    """Each subscriber's p50/p95/p99 from the deliveries its histogram counted: the DMP
    delivered Y-1 and Z-1 (X-1 is a dead letter, X-2 parked), the lab all four."""
    view = overview(broker.client, broker.settings, adapters=list(broker.adapters.values()))
    latency = {s["id"]: s["latency_s"] for s in view["subscribers"]}
    dmp, lab = latency["dmp-national"], latency["lab-legacy"]
    assert (dmp["count"], lab["count"]) == (2, 4)
    for found in (dmp, lab):
        assert 0 < found["p50"] <= found["p95"] <= found["p99"] <= 60
    # An MLLP adapter whose listener process was never heard from: peers not known.
    assert [a["peers"] for a in view["inbound"] if a["id"] == "chu-rabat-adt"] == [None]


def test_the_route_shows_the_same_and_the_mappings_in_force(broker: EagerBroker) -> None:
    settings = broker.settings.model_copy(update={"api_token": SecretStr(TOKEN)})
    with TestClient(create_app(settings, client=broker.client)) as client:
        reply = client.get("/api/overview", headers={"Authorization": f"Bearer {TOKEN}"})
    assert reply.status_code == 200
    body = reply.json()
    direct = overview(broker.client, broker.settings, adapters=list(broker.adapters.values()))
    for figure in ("backlog", "parked", "delivered", "dead_letters_open", "retrying"):
        assert {s["id"]: s[figure] for s in body["subscribers"]} == {
            s["id"]: s[figure] for s in direct["subscribers"]
        }
    assert [a["id"] for a in body["inbound"]][:1] == ["chu-rabat-adt"]
    assert any(ref.startswith("hl7v2-adt@") for ref in body["mappings"]["in_force"])
    assert body["mappings"]["rejected_reload"] is None
    # No listener process and no Celery worker run beside an EagerBroker: the probes say so.
    [listener] = body["processes"]["listeners"]
    assert (listener["adapter"], listener["accepting"]) == ("chu-rabat-adt", False)
    assert body["processes"]["workers"]["names"] == []
