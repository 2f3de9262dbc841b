"""MLLP over TLS and the IP allow-list, on real loopback sockets with a test CA (tests/tlsca.py).

The server side is ``MllpServer`` with the context of a ``TlsSpec``; the clients are the
broker's own ``MllpClient``/``AsyncMllpClient`` and, where the oracle must not be the code under
test, a bare ``ssl``-wrapped socket.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest
from structlog.testing import capture_logs

from broker.adapters.mllp import AsyncMllpClient, MllpClient, MllpConnectionError, MllpServer
from broker.adapters.spec import AdapterSpec
from broker.adapters.tls import TlsSpec
from tests.tlsca import Pki


def server_tls(pki: Pki, client_cert: str = "required") -> ssl.SSLContext:
    key = pki.key(pki.server_cert)
    spec = {"cert": pki.server_cert, "key": key, "ca": pki.ca, "client_cert": client_cert}
    return TlsSpec.model_validate(spec).server_context()


def client_tls(pki: Pki, cert=None, ca=None, server_name=None) -> ssl.SSLContext:
    key = pki.key(cert) if cert is not None else None
    spec = TlsSpec(cert=cert, key=key, ca=ca or pki.ca, server_name=server_name)
    return spec.client_context()


class Recorder:
    """An MLLP handler that keeps every payload it is given and answers ``ACK:<payload>``."""

    def __init__(self) -> None:
        self.received: list[bytes] = []

    async def __call__(self, payload: bytes, peer: str) -> bytes:
        self.received.append(payload)
        return b"ACK:" + payload


@asynccontextmanager
async def listening(
    tls: ssl.SSLContext | None = None, admit: Callable[[str], bool] | None = None
) -> AsyncIterator[tuple[MllpServer, Recorder]]:
    handler = Recorder()
    server = MllpServer("127.0.0.1", 0, handler, name="chu-rabat-adt", tls=tls, admit=admit)
    await server.start()
    try:
        yield server, handler
    finally:
        await server.stop()


async def send(port: int, payload: bytes, **options) -> bytes:
    with MllpClient("127.0.0.1", port, timeout=5, **options) as client:
        return await asyncio.to_thread(client.send, payload)


def warnings(logs: list[dict]) -> list[dict]:
    return [
        entry
        for entry in logs
        if entry["log_level"] != "debug" and entry["event"] != "mllp.listening"
    ]


class TestInboundTls:
    def test_a_client_the_ca_signed_is_answered_over_tls(self, tls_pki):
        """Mutual TLS: a client presenting a certificate of ``ca`` gets its reply, encrypted
        (read with a bare ssl socket, not the broker's client)."""

        async def go():
            async with listening(server_tls(tls_pki)) as (server, handler):
                context = ssl.create_default_context(cafile=str(tls_pki.ca))
                context.load_cert_chain(tls_pki.client_cert, tls_pki.key(tls_pki.client_cert))

                def exchange() -> tuple[bytes, str | None]:
                    with (
                        socket.create_connection(("127.0.0.1", server.port), 5) as raw,
                        context.wrap_socket(raw, server_hostname="localhost") as tls,
                    ):
                        tls.sendall(b"\x0bMSH|^~\\&|HIS\x1c\x0d")
                        reply = b""
                        while not reply.endswith(b"\x1c\x0d"):
                            reply += tls.recv(4096)
                        return reply, tls.version()

                return await asyncio.to_thread(exchange), handler.received

        (reply, version), received = asyncio.run(go())
        assert reply == b"\x0bACK:MSH|^~\\&|HIS\x1c\x0d"
        assert version in ("TLSv1.2", "TLSv1.3")
        assert received == [b"MSH|^~\\&|HIS"]

    @pytest.mark.parametrize(
        ("client", "reason"),
        [
            pytest.param("none", "PEER_DID_NOT_RETURN_A_CERTIFICATE", id="no-certificate"),
            pytest.param("rogue", "CERTIFICATE_VERIFY_FAILED", id="rogue-ca-certificate"),
            pytest.param("plain", "WRONG_VERSION_NUMBER", id="plain-tcp"),
        ],
    )
    def test_a_client_without_a_good_certificate_is_refused(self, tls_pki, client, reason):
        """client_cert: required: no certificate, one of another CA, or plain TCP: the connection
        is closed, nothing reaches the handler, and one warning names the adapter and peer."""
        options = {
            "none": {"tls": client_tls(tls_pki)},
            "rogue": {"tls": client_tls(tls_pki, cert=tls_pki.rogue_client_cert)},
            "plain": {},
        }[client]

        async def go():
            with capture_logs() as logs:
                async with listening(server_tls(tls_pki)) as (server, handler):
                    with pytest.raises(MllpConnectionError):
                        await send(server.port, b"MSH|^~\\&|HIS", **options)
                    connections = server.connections
            return handler.received, connections, logs

        received, connections, logs = asyncio.run(go())
        assert received == []
        assert connections == 0
        (failed,) = [e for e in warnings(logs) if e["event"] != "mllp.stopped"]
        assert failed["event"] == "mllp.tls_failed"
        assert failed["adapter"] == "chu-rabat-adt"
        assert failed["peer"].startswith("127.0.0.1:")
        assert failed["reason"] == reason
        assert "exc_info" not in failed
        assert "exception" not in failed

    def test_without_client_cert_a_client_with_no_certificate_is_served(self, tls_pki):
        """client_cert: none is TLS without mutual authentication: a client with only the CA
        gets its reply, through the async client too."""

        async def go():
            async with listening(server_tls(tls_pki, "none")) as (server, _):
                first = await send(server.port, b"one", tls=client_tls(tls_pki))
                client = AsyncMllpClient(
                    "127.0.0.1", server.port, timeout=5, tls=client_tls(tls_pki)
                )
                async with client:
                    second = await client.send(b"two")
            return first, second

        assert asyncio.run(go()) == (b"ACK:one", b"ACK:two")


class TestOutboundTls:
    def test_the_client_verifies_the_server_against_its_ca(self, tls_pki):
        """MllpClient with ``ca`` and its certificate delivers to a mutual-TLS server."""

        async def go():
            async with listening(server_tls(tls_pki)) as (server, handler):
                reply = await send(
                    server.port, b"ORU", tls=client_tls(tls_pki, cert=tls_pki.client_cert)
                )
            return reply, handler.received

        assert asyncio.run(go()) == (b"ACK:ORU", [b"ORU"])

    @pytest.mark.parametrize(
        ("ca", "server_name", "error"),
        [
            pytest.param("rogue", None, "CERTIFICATE_VERIFY_FAILED", id="server-not-signed-by-ca"),
            pytest.param("good", "lis.example.org", "Hostname mismatch", id="wrong-server-name"),
        ],
    )
    def test_a_server_the_ca_does_not_vouch_for_is_refused(self, tls_pki, ca, server_name, error):
        """A server certificate that ``ca`` did not sign, or that names another host, ends the
        connection before any payload is sent (sync and async clients alike)."""
        context = client_tls(
            tls_pki,
            cert=tls_pki.client_cert,
            ca=tls_pki.rogue_ca if ca == "rogue" else tls_pki.ca,
            server_name=server_name,
        )

        async def go():
            async with listening(server_tls(tls_pki, "none")) as (server, handler):
                with pytest.raises(MllpConnectionError, match=error):
                    await send(server.port, b"ORU", tls=context, server_name=server_name)
                client = AsyncMllpClient(
                    "127.0.0.1", server.port, timeout=5, tls=context, server_name=server_name
                )
                with pytest.raises(MllpConnectionError):
                    await client.send(b"ORU")
                await client.close()
            return handler.received

        assert asyncio.run(go()) == []

    def test_server_name_is_the_name_verified(self, tls_pki):
        """Connecting to 127.0.0.1 with server_name: localhost verifies the DNS name instead."""

        async def go():
            async with listening(server_tls(tls_pki, "none")) as (server, _):
                context = client_tls(tls_pki, server_name="localhost")
                return await send(server.port, b"x", tls=context, server_name="localhost")

        assert asyncio.run(go()) == b"ACK:x"


def inbound(allow_from: list[str]) -> AdapterSpec:
    return AdapterSpec(
        id="chu-rabat-adt",
        name="CHU Rabat",
        direction="inbound",
        transport="mllp",
        listen="127.0.0.1:2575",
        allow_from=allow_from,
    )


class TestAllowFrom:
    def test_a_peer_from_elsewhere_is_closed_before_anything_is_read(self):
        """allow_from: [10.0.0.0/8] refuses 127.0.0.1: closed, counted, logged, nothing read."""

        async def go():
            with capture_logs() as logs:
                async with listening(admit=inbound(["10.0.0.0/8"]).admits) as (server, handler):
                    with pytest.raises(MllpConnectionError):
                        await send(server.port, b"MSH|^~\\&|HIS")
                    refused, connections = server.refused, server.connections
            return handler.received, refused, connections, logs

        received, refused, connections, logs = asyncio.run(go())
        assert received == []
        assert (refused, connections) == (1, 0)
        (event,) = [e for e in logs if e["event"] == "mllp.refused_peer"]
        assert event["adapter"] == "chu-rabat-adt"
        assert event["peer"].startswith("127.0.0.1:")

    def test_a_listed_peer_is_served_over_tls_too(self, tls_pki):
        """allow_from: [127.0.0.1/32] with TLS: the loopback client is answered."""

        async def go():
            admit = inbound(["10.0.0.0/8", "127.0.0.1/32"]).admits
            async with listening(server_tls(tls_pki), admit) as (server, _):
                reply = await send(
                    server.port, b"x", tls=client_tls(tls_pki, cert=tls_pki.client_cert)
                )
                return reply, server.refused

        assert asyncio.run(go()) == (b"ACK:x", 0)

    @pytest.mark.parametrize(
        ("host", "admitted"),
        [
            pytest.param("10.1.2.3", True, id="in-network"),
            pytest.param("192.168.1.7", True, id="single-address"),
            pytest.param("192.168.1.8", False, id="next-address"),
            pytest.param("::ffff:10.9.9.9", True, id="ipv4-mapped"),
            pytest.param("2001:db8::1", True, id="ipv6"),
            pytest.param("2001:db9::1", False, id="other-ipv6"),
            pytest.param("not-an-ip", False, id="not-an-address"),
        ],
    )
    def test_admits(self, host, admitted):
        """Addresses and networks of both families; an IPv4-mapped IPv6 peer matches as IPv4."""
        spec = inbound(["10.0.0.0/8", "192.168.1.7", "2001:db8::/32"])
        assert spec.admits(host) is admitted
