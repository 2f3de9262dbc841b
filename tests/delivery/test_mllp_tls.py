"""Promise: an MLLP subscriber registered with ``tls:`` receives its messages over TLS, and a
receiver whose certificate the registration's ``ca`` did not sign receives nothing.

MllpSender (what the delivery worker builds from the registration) sends to the MLLP capture peer
listening with a TLS context of the test CA (tests/tlsca.py); what arrived is read from the peer.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from broker.adapters.spec import AdapterSpec
from broker.adapters.tls import TlsSpec
from broker.delivery.send import MllpSender
from broker.envelope import Envelope
from broker.errors import RetryableDeliveryError
from broker.mapping import MapContext, MappingSet
from broker.parsing.hl7v2 import decode, parse
from passerelle_demo.peers.mllp_capture import MllpCapture
from tests.tlsca import Pki

ROOT = Path(__file__).resolve().parents[2]
ORU = ROOT / "mappings/tests/oru_r01_value_types_v251.hl7"


@pytest.fixture(name="mappings", scope="module")
def fixture_mappings() -> MappingSet:
    return MappingSet.load(ROOT / "mappings")


@pytest.fixture(name="capture")
def fixture_capture(tls_pki: Pki) -> Iterator[MllpCapture]:
    """The capture peer over mutual TLS: it presents the server certificate and requires a
    client certificate of the test CA."""
    spec = TlsSpec(
        cert=tls_pki.server_cert,
        key=tls_pki.key(tls_pki.server_cert),
        ca=tls_pki.ca,
        client_cert="required",
    )
    capture = MllpCapture(tls=spec.server_context())
    capture.start_in_thread()
    yield capture
    capture.stop()


def subscriber(capture: MllpCapture, tls: dict[str, object]) -> AdapterSpec:
    return AdapterSpec.model_validate(
        {
            "id": "lab-legacy",
            "name": "LAB",
            "direction": "outbound",
            "transport": "mllp",
            "connect": f"{capture.host}:{capture.port}",
            "subscribe": {"events": ["ORU^*"]},
            "tls": tls,
        }
    )


def envelope(mappings: MappingSet) -> Envelope:
    now = datetime(2024, 3, 18, tzinfo=UTC)
    result = mappings.map_hl7v2(
        parse(decode(ORU.read_bytes())), MapContext("env-1", "lis-chuis", received_at=now)
    )
    return Envelope(
        id="env-1",
        source="lis-chuis",
        content_type="application/hl7-v2",
        received_at=now,
        control_id="LAB00310",
        bundle=result.bundle,
    )


def test_a_tls_subscriber_receives_over_mutual_tls(
    capture: MllpCapture, mappings: MappingSet, tls_pki: Pki
) -> None:
    """With ca, cert and key in the registration the message arrives and the ACK is AA."""
    client_cert = tls_pki.client_cert
    adapter = subscriber(
        capture, {"ca": tls_pki.ca, "cert": client_cert, "key": tls_pki.key(client_cert)}
    )
    sender = MllpSender(adapter, lambda: mappings)
    try:
        assert sender.send(envelope(mappings)) == "AA"
    finally:
        sender.close()
    assert capture.control_ids() == ["LAB00310"]


def test_a_receiver_the_ca_did_not_sign_gets_nothing(
    capture: MllpCapture, mappings: MappingSet, tls_pki: Pki
) -> None:
    """Trusting only the rogue CA, the sender refuses the receiver's certificate: a retryable
    failure naming the subscriber, and nothing reaches the receiver."""
    client_cert = tls_pki.client_cert
    adapter = subscriber(
        capture, {"ca": tls_pki.rogue_ca, "cert": client_cert, "key": tls_pki.key(client_cert)}
    )
    sender = MllpSender(adapter, lambda: mappings)
    try:
        with pytest.raises(RetryableDeliveryError) as info:
            sender.send(envelope(mappings))
    finally:
        sender.close()
    assert info.value.destination == "lab-legacy"
    assert "CERTIFICATE_VERIFY_FAILED" in str(info.value.__cause__)
    assert "TLS handshake with 127.0.0.1:" in str(info.value)
    assert "failed (certificate verify failed: " in str(info.value)
    assert capture.count == 0
