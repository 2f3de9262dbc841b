"""/metrics on a real stack, and the shipped Grafana dashboard and Prometheus rules use only it.

Messages go through the real intake and drains (``EagerBroker`` on a real Redis, capture peers on
loopback): the FHIR subscriber answers 503 once (a retry), then 422 once (a dead letter); an
unreadable input is refused AE. ``GET /metrics`` is scraped through the API and read back with
prometheus_client's parser, and every ``passerelle_*`` name in
``docker/grafana/passerelle-dashboard.json`` and ``docker/prometheus/alerts.yml`` must be one
that scrape exported.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from broker.ack import read_ack
from broker.api import create_app
from broker.settings import REPO_ROOT
from broker.testing import EagerBroker
from passerelle_demo.synthetic import adt, patients

TOKEN = "synthetic-test-token"
DASHBOARD = REPO_ROOT / "docker" / "grafana" / "passerelle-dashboard.json"
ALERTS = REPO_ROOT / "docker" / "prometheus" / "alerts.yml"
DMP = "dmp-national"
SOURCE = "chu-rabat-adt"
_NAME = re.compile(r"\bpasserelle_[a-z0-9_]+")
_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


class Scrape:
    """One /metrics answer: samples by (name, labels) and the names a query may use."""

    def __init__(self, text: str) -> None:
        self.samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
        self.types: dict[str, str] = {}
        self.names: set[str] = set()
        for family in text_string_to_metric_families(text):
            self.types[family.name] = family.type
            self.names.update(family.name + s for s in _SUFFIXES.get(family.type, ("",)))
            for sample in family.samples:
                self.samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
                self.names.add(sample.name)

    def get(self, name: str, **labels: str) -> float | None:
        return self.samples.get((name, frozenset(labels.items())))


def _scrape(broker: EagerBroker) -> Scrape:
    settings = broker.settings.model_copy(update={"api_token": SecretStr(TOKEN)})
    with TestClient(create_app(settings, client=broker.client)) as client:
        reply = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert reply.status_code == 200
    return Scrape(reply.text)


@pytest.fixture(name="broker")
def fixture_broker(make_broker: Any) -> EagerBroker:
    """X's A01 delivered after one 503; Y's A01 refused (422): a dead letter; one AE refusal."""
    broker: EagerBroker = make_broker(partitions=1)
    x, y = patients(2, seed=909)
    broker.fhir.fail_next(1, "error")
    answer = broker.receive(adt(x, "A01", control_id="X-1"))
    assert answer is not None
    assert read_ack(answer).code == "AA"
    broker.run()
    broker.fhir.fail_next(1, "reject")
    answer = broker.receive(adt(y, "A01", control_id="Y-1"))
    assert answer is not None
    assert read_ack(answer).code == "AA"
    broker.run()
    refused = broker.receive(b"this is not HL7")
    assert refused is not None
    assert read_ack(refused).code == "AE"
    assert broker.fhir_control_ids() == ["X-1"]
    return broker


def test_per_adapter_and_per_subscriber_series_tell_what_happened(broker: EagerBroker) -> None:
    scrape = _scrape(broker)
    assert scrape.get("passerelle_adapter_received_total", adapter=SOURCE) == 2
    assert scrape.get("passerelle_adapter_refused_total", adapter=SOURCE, code="AE") == 1
    assert scrape.get("passerelle_adapter_mapping_failed_total", adapter=SOURCE) == 0
    assert scrape.get("passerelle_retried_total", subscriber=DMP) == 1
    assert scrape.get("passerelle_delivered_total", subscriber=DMP) == 1
    assert scrape.get("passerelle_dead_lettered_total", subscriber=DMP) == 1
    assert scrape.get("passerelle_subscriber_dead_letters_open", subscriber=DMP) == 1
    # Y's A01 heads its patient's parked stream (on_exhausted: hold), and nothing is behind it:
    # it is an open dead letter, not a parked message.
    assert scrape.get("passerelle_subscriber_parked", subscriber=DMP) == 0
    assert scrape.get("passerelle_subscriber_oldest_age_seconds", subscriber=DMP) == 0
    # No listener runs beside an EagerBroker: the probe says down, by adapter, not by key.
    assert scrape.get("passerelle_listener_up", adapter=SOURCE) == 0
    keyed = {
        f"{label}={value}"
        for _, labels in scrape.samples
        for label, value in labels
        if label != "stream" and value.startswith("pl:")
    }
    assert keyed == set()


def test_the_latency_histogram_counts_each_delivered_message_once(broker: EagerBroker) -> None:
    scrape = _scrape(broker)
    assert scrape.types["passerelle_delivery_latency_seconds"] == "histogram"
    assert scrape.get("passerelle_delivery_latency_seconds_count", subscriber=DMP) == 1
    assert scrape.get("passerelle_delivery_latency_seconds_bucket", subscriber=DMP, le="+Inf") == 1
    assert scrape.get("passerelle_delivery_latency_seconds_bucket", subscriber=DMP, le="0.005") in (
        0,
        1,
    )
    total = scrape.get("passerelle_delivery_latency_seconds_sum", subscriber=DMP)
    assert total is not None
    assert total > 0


def test_a_discarded_dead_letter_is_no_longer_open(broker: EagerBroker) -> None:
    [record] = broker.dead_letters.find(DMP)
    broker.operations().discard(DMP, record["id"], who="test", why="synthetic")
    broker.run()
    scrape = _scrape(broker)
    assert scrape.get("passerelle_subscriber_dead_letters_open", subscriber=DMP) == 0
    assert scrape.get("passerelle_dead_lettered_total", subscriber=DMP) == 1


def _dashboard_expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    found = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    found += [v["definition"] for v in dashboard["templating"]["list"] if "definition" in v]
    return found


def _alert_expressions() -> dict[str, str]:
    document = yaml.safe_load(ALERTS.read_text())
    rules = [rule for group in document["groups"] for rule in group["rules"]]
    for rule in rules:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]
        assert rule["annotations"]["runbook"].startswith("docs/operations.md#")
    return {rule["alert"]: rule["expr"] for rule in rules}


def test_the_dashboard_and_the_alert_rules_use_only_exported_metrics(broker: EagerBroker) -> None:
    scrape = _scrape(broker)
    used = {
        name
        for expr in [*_dashboard_expressions(), *_alert_expressions().values()]
        for name in _NAME.findall(expr)
    }
    assert len(used) >= 15
    assert used - scrape.names == set()


def test_every_alert_has_a_runbook_entry() -> None:
    """docs/operations.md has a heading per alert, the anchor its runbook annotation links to."""
    text = (REPO_ROOT / "docs" / "operations.md").read_text()
    headings = {line.lstrip("#").strip() for line in text.splitlines() if line.startswith("####")}
    assert set(_alert_expressions()) <= headings


def test_a_replayed_dead_letter_is_delivered_counted_and_closed(broker: EagerBroker) -> None:
    """The release of the held patient delivers Y's A01: in the counters and the histogram."""
    [record] = broker.dead_letters.find(DMP)
    broker.operations().replay(DMP, record["id"], who="test", why="synthetic")
    broker.run()
    assert broker.fhir_control_ids() == ["X-1", "Y-1"]
    scrape = _scrape(broker)
    assert scrape.get("passerelle_delivered_total", subscriber=DMP) == 2
    assert scrape.get("passerelle_delivery_latency_seconds_count", subscriber=DMP) == 2
    assert scrape.get("passerelle_subscriber_dead_letters_open", subscriber=DMP) == 0
    assert scrape.get("passerelle_subscriber_parked", subscriber=DMP) == 0
