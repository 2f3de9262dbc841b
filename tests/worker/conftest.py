"""Fixtures of the in-process worker tests: an EagerBroker on the session's real Redis."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from broker.testing import EagerBroker
from passerelle_demo.peers import FhirCapture, MllpCapture

MakeBroker = Callable[..., EagerBroker]


@pytest.fixture
def make_broker(tmp_path: Path, redis_url: str, redis_client: redis.Redis) -> Iterator[MakeBroker]:
    """Start an EagerBroker (options as its constructor's) on an emptied Redis; stopped after."""
    started: list[EagerBroker] = []

    def make(**options: Any) -> EagerBroker:
        peers = (FhirCapture(validate=False, keep_bundles=True), MllpCapture())
        broker = EagerBroker(tmp_path / f"broker-{len(started)}", redis_url, peers=peers, **options)
        broker.start()
        started.append(broker)
        return broker

    yield make
    for broker in reversed(started):
        broker.stop()
