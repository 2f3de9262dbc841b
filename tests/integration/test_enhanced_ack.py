"""Enhanced acknowledgment mode on the real stack: CA on the connection, AA/AE to the return address."""

from __future__ import annotations

import socket

import pytest

from broker.ack import read_ack
from broker.adapters.mllp import MllpClient, frame
from broker.testing import wait_until
from passerelle_demo.loopback import LoopbackStack
from passerelle_demo.peers.mllp_capture import MllpCapture
from passerelle_demo.synthetic import adt, patients

pytestmark = pytest.mark.integration


def with_msh15_16(text: str, accept: str, application: str) -> str:
    """Set MSH-15 and MSH-16 of a synthetic message."""
    msh, rest = text.split("\r", 1)
    fields = msh.split("|")
    fields += [""] * (17 - len(fields))
    fields[14], fields[15] = accept, application
    return "|".join(fields) + "\r" + rest


@pytest.fixture
def enhanced(tmp_path):
    return_address = MllpCapture(mode="silent", name="his-return-address")
    _, port = return_address.start_in_thread()
    try:
        with LoopbackStack(
            tmp_path,
            workers=2,
            rekick_interval_s=1.0,
            inbound={"ack_mode": "enhanced", "reply_to": f"127.0.0.1:{port}"},
        ) as stack:
            yield stack, return_address
    finally:
        return_address.stop()


def test_commit_ack_then_application_ack_to_the_return_address(enhanced):
    """MSH-15/16 = AL: CA once journalled on the connection, AA after mapping to reply_to."""
    stack, return_address = enhanced
    text = with_msh15_16(adt(patients(1, seed=1301)[0], "A01", control_id="ENH-1"), "AL", "AL")
    with MllpClient("127.0.0.1", stack.inbound_port, timeout=10) as client:
        commit = read_ack(client.send(text.encode()))
    assert (commit.code, commit.control_id) == ("CA", "ENH-1")
    assert wait_until(lambda: return_address.count >= 1, 30), stack.logs()
    application = read_ack(return_address.messages[0].text)
    assert (application.code, application.control_id) == ("AA", "ENH-1")


def test_application_error_is_sent_as_ae_with_the_reason(enhanced):
    """A message that cannot be mapped (no PID) gets CA, then AE with the reason."""
    stack, return_address = enhanced
    full = with_msh15_16(adt(patients(1, seed=1302)[0], "A01", control_id="ENH-2"), "AL", "AL")
    no_patient = "\r".join(s for s in full.split("\r") if not s.startswith("PID"))
    with MllpClient("127.0.0.1", stack.inbound_port, timeout=10) as client:
        assert read_ack(client.send(no_patient.encode())).code == "CA"
    assert wait_until(lambda: return_address.count >= 1, 30), stack.logs()
    application = read_ack(return_address.messages[0].text)
    assert (application.code, application.control_id) == ("AE", "ENH-2")
    assert application.text


def test_msh15_ne_and_msh16_er_send_nothing_on_success(enhanced):
    """NE: no commit ACK on the connection; ER: no application ACK for a message that went well."""
    stack, return_address = enhanced
    text = with_msh15_16(adt(patients(1, seed=1303)[0], "A01", control_id="ENH-3"), "NE", "ER")
    with socket.create_connection(("127.0.0.1", stack.inbound_port), timeout=10) as sock:
        sock.sendall(frame(text.encode()))
        sock.settimeout(2)
        with pytest.raises(TimeoutError):
            sock.recv(100)
    assert wait_until(lambda: "ENH-3" in stack.lab.control_ids(), 30), stack.logs()
    assert return_address.count == 0


def test_empty_msh15_and_msh16_mean_always(enhanced):
    """MSH-15/16 empty on an enhanced adapter: CA on the connection, then AA to reply_to."""
    stack, return_address = enhanced
    text = with_msh15_16(adt(patients(1, seed=1304)[0], "A01", control_id="ENH-4"), "", "")
    with MllpClient("127.0.0.1", stack.inbound_port, timeout=10) as client:
        commit = read_ack(client.send(text.encode()))
    assert (commit.code, commit.control_id) == ("CA", "ENH-4")
    assert wait_until(lambda: return_address.count >= 1, 30), stack.logs()
    application = read_ack(return_address.messages[0].text)
    assert (application.code, application.control_id) == ("AA", "ENH-4")


def test_msh15_su_sends_nothing_for_a_refused_message_and_ca_for_a_good_one(enhanced):
    """SU: a type no mapping handles gets no commit ACK on the wire; the next, good one gets CA."""
    stack, _ = enhanced
    good = with_msh15_16(adt(patients(1, seed=1305)[0], "A01", control_id="ENH-5"), "SU", "NE")
    refused = good.replace("ADT^A01^ADT_A01", "QRY^Q01^QRY_Q01", 1).replace("ENH-5", "ENH-6", 1)
    with socket.create_connection(("127.0.0.1", stack.inbound_port), timeout=10) as sock:
        sock.sendall(frame(refused.encode()))
        sock.settimeout(2)
        with pytest.raises(TimeoutError):
            sock.recv(100)
    with MllpClient("127.0.0.1", stack.inbound_port, timeout=10) as client:
        commit = read_ack(client.send(good.encode()))
    assert (commit.code, commit.control_id) == ("CA", "ENH-5")
    assert stack.redis.xlen("pl:rejected") == 1


def test_an_unreadable_message_gets_ce_on_the_connection(enhanced):
    """A message whose MSH-9 is empty cannot be read: CE (enhanced mode's AE) on the connection."""
    stack, _ = enhanced
    text = with_msh15_16(adt(patients(1, seed=1306)[0], "A01", control_id="ENH-7"), "NE", "NE")
    with MllpClient("127.0.0.1", stack.inbound_port, timeout=10) as client:
        commit = read_ack(client.send(text.replace("ADT^A01^ADT_A01", "", 1).encode()))
    assert commit.code == "CE"
    assert "MSH-9" in commit.text
