"""The real stack for integration tests: embedded Redis, listener, Celery worker processes,
beat and API as separate processes, with loopback FHIR and MLLP capture subscribers."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from broker.testing import LoopbackStack


@pytest.fixture(scope="package")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoopbackStack]:
    """Start the whole broker as `passerelle serve` does, once for the integration tests."""
    with LoopbackStack(
        tmp_path_factory.mktemp("stack"),
        workers=2,
        rekick_interval_s=1.0,
        claim_idle_s=10.0,
        delivery_timeout_s=2.0,
    ) as running:
        yield running
