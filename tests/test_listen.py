"""The listener process (``broker.listen``): it publishes how many peers hold a connection, and
the overview reads that count (an HTTP adapter has no connections to count)."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest
import redis

from broker import keys
from broker.adapters.spec import AdapterSpec
from broker.config import load_config
from broker.ops.overview import overview
from broker.settings import Settings
from broker.testing import free_port, running_listeners, wait_until, write_adapter

SOURCE = "chu-rabat-adt"


@pytest.fixture(name="settings")
def fixture_settings(tmp_path: Path, redis_url: str) -> Settings:
    port = free_port()
    spec = {"id": SOURCE, "name": "ADT", "direction": "inbound", "transport": "mllp"}
    write_adapter(tmp_path / "adapters", {**spec, "listen": f"127.0.0.1:{port}"})
    # A long heartbeat period: the counts below arrive because peers came or left, not by a beat.
    return Settings(
        data_dir=tmp_path,
        adapters_dir=tmp_path / "adapters",
        redis_url=redis_url,
        rekick_interval_s=600,
    )


def peers_published(client: redis.Redis) -> int | None:
    value = client.get(keys.peers(SOURCE))
    return None if value is None else int(value)


def peers_shown(client: redis.Redis, settings: Settings) -> dict[str, Any]:
    web = AdapterSpec.model_validate(
        {"id": "portail-web", "name": "Portail web", "direction": "inbound", "transport": "http"}
    )
    mllp = load_config(settings).inbound("mllp")
    view = overview(client, settings, adapters=[*mllp, web], probe=False)
    return {row["id"]: row["peers"] for row in view["inbound"]}


def test_the_peers_connected_are_published_and_shown(
    settings: Settings, redis_client: redis.Redis
) -> None:
    """Two peers connect, one leaves, the listener stops: 2, 1, then no count (not 0: nobody
    knows); the HTTP adapter's peers are never counted."""
    with running_listeners(load_config(settings)) as listeners:
        assert peers_published(redis_client) == 0
        address = listeners.adapters[0].host_port
        with socket.create_connection(address) as first, socket.create_connection(address):
            assert wait_until(lambda: peers_published(redis_client) == 2, timeout=10)
            assert peers_shown(redis_client, settings) == {SOURCE: 2, "portail-web": None}
            first.close()
            assert wait_until(lambda: peers_published(redis_client) == 1, timeout=10)
            assert peers_shown(redis_client, settings)[SOURCE] == 1
    assert redis_client.exists(keys.peers(SOURCE), keys.listening(SOURCE)) == 0
    assert peers_shown(redis_client, settings)[SOURCE] is None


def test_the_count_expires_with_the_heartbeat(
    settings: Settings, redis_client: redis.Redis
) -> None:
    """A listener that dies without stopping leaves no count behind for long."""
    with running_listeners(load_config(settings)):
        ttl = redis_client.ttl(keys.peers(SOURCE))
        assert 0 < ttl <= settings.rekick_interval_s * 3
        assert abs(ttl - redis_client.ttl(keys.listening(SOURCE))) <= 1
