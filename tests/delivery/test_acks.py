"""Enhanced acknowledgment mode in process: the commit ACK at the edge, the application ACK after.

HL7 v2.5.1 §2.9.3 and table 0155: MSH-15 (accept acknowledgment) and MSH-16 (application
acknowledgment) are each AL (always), NE (never), ER (only on error or reject) or SU (only on
success); empty means always, since the adapter asked for enhanced mode. The commit ACK is the
listener's answer on the connection (CA journalled, CE unreadable, CR refused); the application
ACK (AA mapped, AE not) goes to the adapter's ``reply_to``. The answers are read with
``broker.ack.read_ack`` and the return address is a capture listener on loopback.
"""

from __future__ import annotations

import asyncio

import pytest

from broker import keys
from broker.ack import read_ack
from broker.adapters.mllp import MllpServer
from broker.adapters.spec import AdapterSpec
from broker.adapters.tls import TlsSpec
from broker.delivery.acks import return_address
from passerelle_demo.peers.mllp_capture import MllpCapture
from passerelle_demo.synthetic import adt, patients

GOOD = "journalled"
REFUSED = "refused"


def message(accept: str, application: str, control_id: str, *, kind: str = GOOD) -> str:
    """A synthetic ADT^A01 with MSH-15/16 set; ``refused``: a type no mapping handles."""
    text = adt(patients(1, seed=1260)[0], "A01", control_id=control_id)
    msh, rest = text.split("\r", 1)
    fields = msh.split("|")
    fields += [""] * (17 - len(fields))
    fields[14], fields[15] = accept, application
    if kind == REFUSED:
        fields[8] = "QRY^Q01^QRY_Q01"
    if kind == "unmappable":
        rest = "\r".join(s for s in rest.split("\r") if not s.startswith("PID"))
    return "|".join(fields) + "\r" + rest


@pytest.fixture
def enhanced(make_broker):
    """An EagerBroker whose source is in enhanced mode, and its return address (a capture)."""
    return_address = MllpCapture(mode="silent", name="his-return-address")
    _, port = return_address.start_in_thread()
    broker = make_broker(inbound={"ack_mode": "enhanced", "reply_to": f"127.0.0.1:{port}"})
    yield broker, return_address
    return_address.stop()


class TestCommitAck:
    @pytest.mark.parametrize(
        ("accept", "kind", "expected"),
        [
            pytest.param("", GOOD, "CA", id="empty-journalled-CA"),
            pytest.param("", REFUSED, "CR", id="empty-refused-CR"),
            pytest.param("AL", GOOD, "CA", id="AL-journalled-CA"),
            pytest.param("AL", REFUSED, "CR", id="AL-refused-CR"),
            pytest.param("SU", GOOD, "CA", id="SU-journalled-CA"),
            pytest.param("SU", REFUSED, None, id="SU-refused-nothing"),
            pytest.param("ER", GOOD, None, id="ER-journalled-nothing"),
            pytest.param("ER", REFUSED, "CR", id="ER-refused-CR"),
            pytest.param("NE", GOOD, None, id="NE-journalled-nothing"),
            pytest.param("NE", REFUSED, None, id="NE-refused-nothing"),
        ],
    )
    def test_msh15_decides_whether_the_commit_ack_is_sent(
        self, enhanced, redis_client, accept, kind, expected
    ):
        """Table 0155 on the connection; journalled or refused whatever the answer."""
        broker, _ = enhanced
        answer = broker.receive(message(accept, "NE", "ENH-C", kind=kind))
        if expected is None:
            assert answer is None, read_ack(answer)
        else:
            assert answer is not None
            assert (read_ack(answer).code, read_ack(answer).control_id) == (expected, "ENH-C")
        journalled = sum(redis_client.xlen(keys.inbound(p)) for p in range(8))
        assert (journalled, redis_client.xlen(keys.REJECTED)) == (
            (1, 0) if kind == GOOD else (0, 1)
        )

    @pytest.mark.parametrize("accept", ["NE", "SU", ""])
    def test_an_unreadable_message_gets_ce_whatever_its_msh15(self, enhanced, accept):
        """MSH-9 empty: the message cannot be read, so CE (its MSH-15 cannot be trusted)."""
        broker, _ = enhanced
        text = message(accept, "", "ENH-E").replace("ADT^A01^ADT_A01", "", 1)
        answer = broker.receive(text)
        assert answer is not None
        ack = read_ack(answer)
        assert ack.code == "CE"
        assert "MSH-9" in ack.text

    def test_original_mode_ignores_msh15(self, make_broker):
        """An adapter in original mode answers AA even when MSH-15 says NE."""
        broker = make_broker()
        answer = broker.receive(message("NE", "NE", "ORIG-1"))
        assert answer is not None
        assert read_ack(answer).code == "AA"


class TestApplicationAck:
    @pytest.mark.parametrize(
        ("application", "kind", "expected"),
        [
            pytest.param("", GOOD, "AA", id="empty-mapped-AA"),
            pytest.param("", "unmappable", "AE", id="empty-failed-AE"),
            pytest.param("AL", GOOD, "AA", id="AL-mapped-AA"),
            pytest.param("SU", GOOD, "AA", id="SU-mapped-AA"),
            pytest.param("SU", "unmappable", None, id="SU-failed-nothing"),
            pytest.param("ER", GOOD, None, id="ER-mapped-nothing"),
            pytest.param("ER", "unmappable", "AE", id="ER-failed-AE"),
            pytest.param("NE", "unmappable", None, id="NE-failed-nothing"),
        ],
    )
    def test_msh16_decides_whether_the_application_ack_is_sent(
        self, enhanced, redis_client, application, kind, expected
    ):
        """Table 0155 for the application ACK sent to reply_to once the message is processed."""
        broker, return_address = enhanced
        answer = broker.receive(message("AL", application, "ENH-A", kind=kind))
        assert answer is not None
        assert read_ack(answer).code == "CA"
        broker.run()

        processed = (
            redis_client.xlen(keys.QUARANTINE) if kind != GOOD else len(broker.lab.control_ids())
        )
        assert processed == 1, "the message was not processed"
        if expected is None:
            assert redis_client.xlen(keys.app_acks("chu-rabat-adt")) == 0, "an ACK was queued"
            assert return_address.count == 0
        else:
            assert return_address.wait_for(1, timeout=10)
            ack = read_ack(return_address.messages[0].text)
            assert (ack.code, ack.control_id) == (expected, "ENH-A")
            assert bool(ack.text) == (expected == "AE"), "AE carries the reason, AA none"


class TestReturnAddressTls:
    def test_the_return_connection_speaks_tls_when_the_listener_does(self, tls_pki):
        """An adapter whose listener has tls: its reply_to client completes a TLS handshake with
        a TLS-only listener (verified against tls.ca) and the ACK arrives there."""
        received: list[bytes] = []

        async def handler(payload: bytes, peer: str) -> None:
            received.append(payload)

        async def go() -> None:
            server_tls = TlsSpec(cert=tls_pki.server_cert, key=tls_pki.key(tls_pki.server_cert))
            server = MllpServer("127.0.0.1", 0, handler, tls=server_tls.server_context())
            await server.start()
            try:
                source = AdapterSpec.model_validate(
                    {
                        "id": "chu-rabat-adt",
                        "name": "CHU Rabat",
                        "direction": "inbound",
                        "transport": "mllp",
                        "listen": "127.0.0.1:2575",
                        "ack_mode": "enhanced",
                        "reply_to": f"127.0.0.1:{server.port}",
                        "tls": {
                            "cert": tls_pki.server_cert,
                            "key": tls_pki.key(tls_pki.server_cert),
                            "ca": tls_pki.ca,
                        },
                    }
                )
                client = return_address(source)
                assert client is not None
                await asyncio.to_thread(client.post, b"MSH|^~\\&|PASSERELLE|X\rMSA|AA|1\r")
                async with asyncio.timeout(10):
                    while not received:
                        await asyncio.sleep(0.01)
                client.close()
            finally:
                await server.stop()

        asyncio.run(go())
        assert received == [b"MSH|^~\\&|PASSERELLE|X\rMSA|AA|1\r"]
