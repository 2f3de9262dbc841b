"""/metrics and Passerelle's own alerts on the real stack: listener, Celery workers, beat and API
as separate processes (``LoopbackStack``), messages over real MLLP, a webhook receiver on
loopback.

One message refused for good by the FHIR subscriber: beat's housekeeping opens a dead-letter
incident and POSTs it once; its discard through the API closes it and POSTs the recovery. The
scrape over HTTP shows the listener up (its heartbeat and its port), the counters, the latency
histogram, and exports every metric the shipped dashboard and alert rules use.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from broker import keys
from broker.ack import read_ack
from broker.adapters.mllp import MllpClient
from broker.settings import REPO_ROOT
from broker.testing import wait_until
from passerelle_demo.loopback import LoopbackStack
from passerelle_demo.synthetic import adt, patients

pytestmark = pytest.mark.integration

DMP = "dmp-national"
SOURCE = "chu-rabat-adt"
_NAME = re.compile(r"\bpasserelle_[a-z0-9_]+")
_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}


class Hook:
    """A webhook receiver on loopback keeping each POSTed JSON body."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        bodies = self.bodies

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/alerts"


@pytest.fixture(scope="module")
def hook() -> Iterator[Hook]:
    receiver = Hook()
    yield receiver
    receiver.server.shutdown()
    receiver.server.server_close()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, hook: Hook) -> Iterator[LoopbackStack]:
    root: Path = tmp_path_factory.mktemp("metrics-stack")
    rules = root / "alerts.yaml"
    rules.write_text("subscriber_failing: null\nerror_rate: null\n")
    with LoopbackStack(
        root,
        workers=1,
        rekick_interval_s=1.0,
        claim_idle_s=10.0,
        delivery_timeout_s=2.0,
        alerts_file=rules,
        alert_webhook_url=hook.url,
    ) as running:
        yield running


def _scrape(stack: LoopbackStack) -> tuple[dict[tuple[str, frozenset[Any]], float], set[str]]:
    with stack.api_client() as client:
        reply = client.get("/metrics")
    assert reply.status_code == 200
    samples = {}
    names: set[str] = set()
    for family in text_string_to_metric_families(reply.text):
        names.update(family.name + s for s in _SUFFIXES.get(family.type, ("",)))
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
            names.add(sample.name)
    return samples, names


def test_metrics_and_an_alert_incident_on_the_real_stack(stack: LoopbackStack, hook: Hook) -> None:
    x, y = patients(2, seed=5150)
    stack.fhir.fail_next(1, "reject")
    with MllpClient("127.0.0.1", stack.inbound_port, timeout=10) as client:
        for text in (adt(y, "A01", control_id="M-1"), adt(x, "A01", control_id="M-2")):
            assert read_ack(client.send(text.encode())).code == "AA"
    assert wait_until(lambda: stack.redis.scard(keys.dead_open(DMP)) == 1, 30), stack.logs()
    assert wait_until(lambda: len(stack.fhir.envelope_ids) == 1, 30), stack.logs()
    assert wait_until(lambda: len(hook.bodies) == 1, 30), stack.logs()
    assert (hook.bodies[0]["status"], hook.bodies[0]["rule"], hook.bodies[0]["subject"]) == (
        "firing",
        "dead_letters",
        DMP,
    )

    samples, names = _scrape(stack)

    def value(name: str, **labels: str) -> float | None:
        return samples.get((name, frozenset(labels.items())))

    assert value("passerelle_listener_up", adapter=SOURCE) == 1
    assert value("passerelle_adapter_received_total", adapter=SOURCE) == 2
    assert value("passerelle_delivered_total", subscriber=DMP) == 1
    assert value("passerelle_dead_lettered_total", subscriber=DMP) == 1
    assert value("passerelle_subscriber_dead_letters_open", subscriber=DMP) == 1
    assert value("passerelle_delivery_latency_seconds_count", subscriber=DMP) == 1

    dashboard = json.loads((REPO_ROOT / "docker/grafana/passerelle-dashboard.json").read_text())
    rules = yaml.safe_load((REPO_ROOT / "docker/prometheus/alerts.yml").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    exprs += [r["expr"] for g in rules["groups"] for r in g["rules"]]
    used = {name for expr in exprs for name in _NAME.findall(expr)}
    assert used - names == set()

    [dead_id] = [d.decode() for d in stack.redis.smembers(keys.dead_open(DMP))]
    with stack.api_client() as client:
        reply = client.post(
            f"/api/dead-letters/{DMP}/{dead_id}/discard", json={"why": "synthetic test"}
        )
    assert reply.status_code == 200, reply.text
    assert wait_until(lambda: len(hook.bodies) == 2, 30), stack.logs()
    assert (hook.bodies[1]["status"], hook.bodies[1]["rule"]) == ("resolved", "dead_letters")
