"""The listener process (``broker.listen``): it publishes how many peers hold a connection, and
the overview reads that count (an HTTP adapter has no connections to count)."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest
import redis

from broker import keys
from broker.ack import read_ack
from broker.adapters.mllp import MllpClient, MllpError
from broker.adapters.spec import AdapterSpec
from broker.adapters.tls import TlsSpec
from broker.config import load_config
from broker.ops.overview import overview
from broker.settings import Settings
from broker.testing import free_port, running_listeners, wait_until, write_adapter
from passerelle_demo.synthetic import adt, patients
from tests.tlsca import Pki

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


class TestTransportSecurity:
    """Issue 10: the listener process builds TLS and the allow-list from the registration."""

    @staticmethod
    def settings_for(tmp_path: Path, redis_url: str, tls_pki: Pki, **extra: Any) -> Settings:
        adapters = tmp_path / "adapters"
        adapters.mkdir()
        for source in [tls_pki.ca, tls_pki.server_cert, tls_pki.key(tls_pki.server_cert)]:
            (adapters / source.name).write_bytes(source.read_bytes())
        spec = {
            "id": SOURCE,
            "name": "ADT",
            "direction": "inbound",
            "transport": "mllp",
            "listen": f"127.0.0.1:{free_port()}",
            "tls": {"cert": "server.pem", "key": "server.key", "ca": "ca.pem"},
            **extra,
        }
        spec["tls"]["client_cert"] = "required"
        write_adapter(adapters, spec)
        return Settings(data_dir=tmp_path, adapters_dir=adapters, redis_url=redis_url)

    @staticmethod
    def journalled(client: redis.Redis, settings: Settings) -> list[bytes]:
        return [
            fields[b"raw"]
            for partition in range(settings.partitions)
            for _, fields in client.xrange(keys.inbound(partition))
        ]

    def test_an_adt_over_mutual_tls_is_journalled_and_plain_tcp_is_not(
        self, tmp_path: Path, redis_url: str, redis_client: redis.Redis, tls_pki: Pki
    ) -> None:
        """A client with a certificate of the registration's CA gets AA and its message is in the
        journal; the same message over plain TCP gets no reply and is not journalled."""
        settings = self.settings_for(tmp_path, redis_url, tls_pki)
        good = TlsSpec(
            cert=tls_pki.client_cert, key=tls_pki.key(tls_pki.client_cert), ca=tls_pki.ca
        )
        secret = adt(patients(1, seed=41)[0], "A01", control_id="TLS0001").encode()
        clear = adt(patients(1, seed=42)[0], "A01", control_id="TLS0002").encode()
        with running_listeners(load_config(settings)) as listeners:
            host, port = listeners.adapters[0].host_port
            with MllpClient(host, port, timeout=10, tls=good.client_context()) as client:
                ack = read_ack(client.send(secret))
            with MllpClient(host, port, timeout=10) as client, pytest.raises(MllpError):
                client.send(clear)
        assert (ack.code, ack.control_id) == ("AA", "TLS0001")
        assert self.journalled(redis_client, settings) == [secret]
        assert redis_client.xlen(keys.REJECTED) == 0

    @pytest.mark.parametrize(
        ("allow_from", "answered"),
        [
            pytest.param(["10.0.0.0/8"], False, id="elsewhere-only"),
            pytest.param(["127.0.0.1/32"], True, id="loopback-allowed"),
        ],
    )
    def test_allow_from(
        self,
        tmp_path: Path,
        redis_url: str,
        redis_client: redis.Redis,
        tls_pki: Pki,
        allow_from: list[str],
        answered: bool,
    ) -> None:
        """A peer outside allow_from is closed and nothing is journalled; a listed one gets AA."""
        settings = self.settings_for(tmp_path, redis_url, tls_pki, allow_from=allow_from)
        good = TlsSpec(
            cert=tls_pki.client_cert, key=tls_pki.key(tls_pki.client_cert), ca=tls_pki.ca
        )
        message = adt(patients(1, seed=43)[0], "A01", control_id="IPL0001").encode()
        with running_listeners(load_config(settings)) as listeners:
            host, port = listeners.adapters[0].host_port
            with MllpClient(host, port, timeout=10, tls=good.client_context()) as client:
                if answered:
                    assert read_ack(client.send(message)).code == "AA"
                else:
                    with pytest.raises(MllpError):
                        client.send(message)
            refused = listeners.servers[0].refused
        assert self.journalled(redis_client, settings) == ([message] if answered else [])
        assert refused == (0 if answered else 1)
