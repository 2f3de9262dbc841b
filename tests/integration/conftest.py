"""The real stack for integration tests: embedded Redis, listener, Celery workers, beat, API,
and loopback peers (a FHIR capture server and an MLLP capture system) as subscribers."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from broker.peers.fhir_capture import FhirCapture

from broker.peers.mllp_capture import MllpCapture
from broker.settings import Settings
from broker.supervisor import Supervisor
from broker.testing import free_port, wait_for_port, write_adapter

API_TOKEN = "integration-test-token"


@dataclass
class Stack:
    """A running broker and its peers."""

    settings: Settings
    supervisor: Supervisor
    fhir: FhirCapture
    lab: MllpCapture
    inbound_port: int
    redis: redis.Redis
    data_dir: Path

    def logs(self) -> str:
        """Every child's log, for failure messages."""
        out = []
        for path in sorted((self.data_dir / "logs").glob("*.log")):
            out.append(f"--- {path.name}\n{path.read_text(errors='replace')[-4000:]}")
        return "\n".join(out)


@pytest.fixture(scope="package")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Start the whole broker as separate processes, as `passerelle serve` does."""
    data_dir = tmp_path_factory.mktemp("stack")
    fhir = FhirCapture(validate=True)
    fhir_port = fhir.start_in_thread()
    lab = MllpCapture()
    _, lab_port = lab.start_in_thread()
    inbound_port = free_port()
    adapters = data_dir / "adapters"
    retry = {"initial_delay_s": 0.2, "max_delay_s": 1.0}
    write_adapter(
        adapters,
        {
            "id": "chu-rabat-adt",
            "name": "CHU Rabat",
            "direction": "inbound",
            "transport": "mllp",
            "listen": f"127.0.0.1:{inbound_port}",
        },
    )
    write_adapter(
        adapters,
        {
            "id": "dmp-national",
            "name": "DMP",
            "direction": "outbound",
            "transport": "fhir-rest",
            "url": f"http://127.0.0.1:{fhir_port}/fhir",
            "subscribe": {"events": ["ADT^A01", "ADT^A04", "ADT^A08", "ORU^R01"]},
            "retry": retry,
        },
    )
    write_adapter(
        adapters,
        {
            "id": "lab-legacy",
            "name": "Lab",
            "direction": "outbound",
            "transport": "mllp",
            "connect": f"127.0.0.1:{lab_port}",
            "subscribe": {"events": ["ADT^*"]},
            "ack_timeout_s": 2,
            "retry": retry,
        },
    )
    settings = Settings(
        data_dir=data_dir,
        adapters_dir=adapters,
        http_port=free_port(),
        workers=2,
        rekick_interval_s=1.0,
        claim_idle_s=10.0,
        delivery_timeout_s=2.0,
        api_token=API_TOKEN,
        log_level="INFO",
    )
    supervisor = Supervisor(settings, log_dir=data_dir / "logs")
    supervisor.start()
    client = redis.Redis.from_url(settings.effective_redis_url)
    try:
        assert wait_for_port("127.0.0.1", inbound_port, 30), "the MLLP listener did not start"
        yield Stack(settings, supervisor, fhir, lab, inbound_port, client, data_dir)
    finally:
        client.close()
        supervisor.stop()
        fhir.stop()
        lab.stop()
