"""The listener process (``broker.listen``): it publishes how many peers hold a connection, and
the overview reads that count (an HTTP adapter has no connections to count)."""

from __future__ import annotations

import re
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
from broker.ops.metrics import prometheus_text
from broker.ops.overview import overview
from broker.settings import Settings
from broker.testing import free_port, raw_of, running_listeners, wait_until, write_adapter
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
            raw_of(fields)
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

    def test_refused_connections_are_counted_in_metrics(
        self, tmp_path: Path, redis_url: str, redis_client: redis.Redis, tls_pki: Pki
    ) -> None:
        """A plain-TCP peer on the TLS listener (tls_handshake), and a third peer over the cap
        of two (connection_cap), are each counted under the adapter in /metrics."""
        settings = self.settings_for(tmp_path, redis_url, tls_pki).model_copy(
            update={"mllp_max_connections": 2}
        )
        field = keys.adapter_stats(SOURCE)
        with running_listeners(load_config(settings)) as listeners:
            address = listeners.adapters[0].host_port
            with socket.create_connection(address, timeout=10) as plain:
                plain.sendall(b"\x0bMSH|^~\\&|HIS\r\x1c\r")
                assert plain.recv(100) == b""  # closed by the failed handshake
            assert wait_until(
                lambda: redis_client.hget(field, "connection_refused:tls_handshake") == b"1",
                timeout=10,
            )
            with socket.create_connection(address), socket.create_connection(address):
                assert wait_until(lambda: peers_published(redis_client) == 2, timeout=10)
                with socket.create_connection(address, timeout=10) as third:
                    assert third.recv(100) == b""  # closed at once: over the cap
                assert wait_until(
                    lambda: redis_client.hget(field, "connection_refused:connection_cap") == b"1",
                    timeout=10,
                )
        text = prometheus_text(redis_client, settings)
        counted = {
            match["reason"]: float(match["value"])
            for match in re.finditer(
                r'^passerelle_adapter_connections_refused_total\{adapter="chu-rabat-adt",'
                r'reason="(?P<reason>\w+)"\} (?P<value>[0-9.]+)$',
                text,
                re.MULTILINE,
            )
        }
        # The two plain connections held open under the cap never did TLS either: closing them
        # may count two more failed handshakes, depending on whether the stop came first.
        assert counted["connection_cap"] == 1
        assert 1 <= counted["tls_handshake"] <= 3
        assert set(counted) == {"connection_cap", "tls_handshake"}

    def test_a_sender_the_adapter_does_not_accept_gets_ar_and_is_kept_rejected(
        self, tmp_path: Path, redis_url: str, redis_client: redis.Redis, tls_pki: Pki
    ) -> None:
        """senders: [{application: HIS, facility: CHU-RABAT}]: a frame claiming CHU-CASA over the
        real listener gets AR naming MSH-4, is kept in pl:rejected with that reason and is not
        journalled; one from CHU-RABAT gets AA."""
        settings = self.settings_for(
            tmp_path,
            redis_url,
            tls_pki,
            senders=[{"application": "HIS", "facility": "CHU-RABAT"}],
        )
        good = TlsSpec(
            cert=tls_pki.client_cert, key=tls_pki.key(tls_pki.client_cert), ca=tls_pki.ca
        )
        person = patients(1, seed=44)[0]
        ours = adt(person, "A01", control_id="SND0001").encode()
        forged = adt(person, "A01", control_id="SND0002", sending_facility="CHU-CASA").encode()
        with running_listeners(load_config(settings)) as listeners:
            host, port = listeners.adapters[0].host_port
            with MllpClient(host, port, timeout=10, tls=good.client_context()) as client:
                accepted = read_ack(client.send(ours))
                refused = read_ack(client.send(forged))
        assert accepted.code == "AA"
        assert (refused.code, refused.control_id) == ("AR", "SND0002")
        assert "CHU-CASA" in refused.text
        assert "senders" in refused.text
        assert self.journalled(redis_client, settings) == [ours]
        ((_, kept),) = redis_client.xrange(keys.REJECTED)
        assert "CHU-CASA" in kept[b"reason"].decode()
