"""End to end on the real stack: MLLP in, FHIR REST and MLLP out, nothing lost."""

from __future__ import annotations

import itertools
import socket
from collections import defaultdict

import pytest
import redis

from broker import keys
from broker.ack import read_ack
from broker.adapters.mllp import MllpClient, frame
from broker.parsing.hl7v2 import parse
from broker.testing import raw_of, wait_until
from passerelle_demo.synthetic import adt, oru_r01, patients, stream

pytestmark = pytest.mark.integration
_ids = itertools.count(1)


def control_id(prefix: str) -> str:
    return f"{prefix}{next(_ids):06d}"


def send_all(port: int, messages: list[str]) -> list[str]:
    """Send each message on one connection, returning the ACK codes."""
    codes = []
    with MllpClient("127.0.0.1", port, timeout=10) as client:
        for text in messages:
            codes.append(read_ack(client.send(text.encode("utf-8"))).code)
    return codes


def journalled(stack, control: str) -> bool:
    for partition in range(stack.settings.partitions):
        for _, fields in stack.redis.xrange(keys.inbound(partition)):
            if b"raw" in fields and parse(raw_of(fields).decode("utf-8")).control_id == control:
                return True
    return False


def fhir_accepted(stack) -> set[str]:
    """MSH-10 of every Bundle the FHIR capture accepted (its envelope, in Redis or the store)."""
    return set(stack.control_ids(sorted(stack.fhir.envelope_ids)).values())


def blocked_scripts(client: redis.Redis) -> set[str]:
    """Ids of the Redis clients blocked (flag ``b``) in a script call: the journal append is one."""
    return {
        c["id"]
        for c in client.client_list()
        if "b" in c["flags"] and c["cmd"] in ("evalsha", "eval")
    }


def read_reply(sock: socket.socket) -> bytes:
    """Bytes from ``sock`` until an MLLP end block (or the peer closes); ``b""`` on a timeout."""
    reply = b""
    try:
        while not reply.endswith(b"\x1c\r"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            reply += chunk
    except TimeoutError:
        pass
    return reply


class TestAcknowledgment:
    def test_no_aa_reaches_the_sender_before_the_journal_append_completes(self, stack):
        """While Redis holds the journal append (CLIENT PAUSE WRITE), the sender gets no ACK and
        the message is not journalled; once writes resume, AA arrives and the entry is there."""
        patient = patients(1, seed=101)[0]
        cid = control_id("JRN")
        # The test's own connection pauses every client's writes; reads still run.
        pauser = redis.Redis.from_url(stack.settings.effective_redis_url)
        try:
            with socket.create_connection(("127.0.0.1", stack.inbound_port), timeout=10) as sock:
                pauser.execute_command("CLIENT", "PAUSE", 30_000, "WRITE")
                try:
                    before = blocked_scripts(pauser)
                    sock.sendall(frame(adt(patient, "A01", control_id=cid).encode()))
                    # The listener read the frame and its append is blocked inside Redis.
                    assert wait_until(lambda: blocked_scripts(pauser) - before, 10, 0.05), (
                        pauser.client_list()
                    )
                    sock.settimeout(1.5)
                    early = read_reply(sock)
                    assert early == b"", f"an ACK before the append: {early!r}"
                    assert not journalled(stack, cid)
                finally:
                    pauser.execute_command("CLIENT", "UNPAUSE")
                sock.settimeout(10)
                reply = read_reply(sock)
        finally:
            pauser.close()
        assert reply.startswith(b"\x0b"), (reply, stack.logs())
        ack = read_ack(reply[1:-2])
        assert (ack.code, ack.control_id) == ("AA", cid)
        assert journalled(stack, cid)

    def test_garbage_is_answered_and_kept_and_the_listener_stays_up(self, stack):
        """Non-HL7 bytes get AE, an unmapped type gets AR; both are kept; the listener goes on."""
        before = stack.redis.xlen(keys.REJECTED)
        with MllpClient("127.0.0.1", stack.inbound_port, timeout=10) as client:
            garbage = read_ack(client.send(b"\x00\x01 this is not HL7 at all"))
            unmapped_text = adt(patients(1, seed=7)[0], "A01", control_id="UNMAPPED1").replace(
                "ADT^A01^ADT_A01", "ADT^A17^ADT_A17", 1
            )
            unmapped = read_ack(client.send(unmapped_text.encode()))
            good = read_ack(
                client.send(
                    adt(patients(1, seed=8)[0], "A04", control_id=control_id("OK")).encode()
                )
            )
        assert garbage.code == "AE"
        assert unmapped.code == "AR"
        assert "ADT^A17" in unmapped.text
        assert good.code == "AA"
        assert stack.redis.xlen(keys.REJECTED) == before + 2

    def test_a_duplicate_gets_an_aa_for_its_control_id_and_is_processed_once(self, stack):
        """The same MSH-3/4/10 twice: AA for that MSH-10 both times, one delivery."""
        patient = patients(1, seed=202)[0]
        cid = control_id("DUP")
        text = adt(patient, "A08", control_id=cid).encode()
        with MllpClient("127.0.0.1", stack.inbound_port, timeout=10) as client:
            first = client.send(text)
            second = client.send(text)
        acks = [read_ack(first), read_ack(second)]
        assert [(a.code, a.control_id) for a in acks] == [("AA", cid)] * 2
        assert wait_until(lambda: cid in stack.lab.control_ids(), 30), stack.logs()
        assert stack.lab.control_ids().count(cid) == 1


class TestDelivery:
    def test_every_message_reaches_both_subscribers_in_patient_order(self, stack):
        """ADT goes to the FHIR server and the legacy lab, ORU to the FHIR server; valid FHIR."""
        stack.lab.clear()
        fhir_before = stack.fhir.count
        messages = list(
            stream(
                60,
                seed=303,
                mix={"ADT^A01": 1, "ADT^A08": 1, "ORU^R01": 1},
                n_obx=5,
                control_prefix="FLOW",
            )
        )
        adts = [(p, e, t) for p, e, t in messages if e.startswith("ADT")]
        codes = send_all(stack.inbound_port, [t for _, _, t in messages])
        assert codes == ["AA"] * len(messages)
        assert wait_until(lambda: stack.fhir.count - fhir_before >= len(messages), 60), stack.logs()
        assert wait_until(lambda: stack.lab.unique_count >= len(adts), 60), stack.logs()
        assert stack.fhir.invalid == 0
        report = {
            k.decode(): int(v)
            for k, v in stack.redis.hgetall(keys.unmapped("chu-rabat-adt")).items()
        }
        assert report["__messages__"] >= len(messages)
        assert report["IN1-2"] >= len(
            adts
        )  # the insurance segment has no rule yet: reported, not lost
        order = defaultdict(list)
        for captured in stack.lab.messages:
            order[parse(captured.text).get("PID-3.1")].append(captured.control_id)
        for sent in order.values():
            assert sent == sorted(sent)

    def test_messages_both_subscribers_refused_are_each_accepted_after_recovery(self, stack):
        """Messages both subscribers refuse (AE, HTTP 503) are kept and sent again: once the
        subscribers accept, each subscriber accepts every one; a refusal never counts delivered."""
        stack.lab.clear()
        batch = [adt(p, "A04", control_id=control_id("DOWN")) for p in patients(10, seed=404)]
        wanted = {parse(t).control_id for t in batch}
        refused_before = stack.fhir.status_counts().get(503, 0)
        stack.fhir.mode = "error"
        stack.lab.mode = "error"
        try:
            assert send_all(stack.inbound_port, batch) == ["AA"] * len(batch)
            # While refusing, the broker reaches both peers and each refuses messages of the
            # batch: the lab answers AE, the FHIR server 503.
            assert wait_until(lambda: wanted & set(stack.lab.refused_ids()), 30), stack.logs()
            assert wait_until(
                lambda: stack.fhir.status_counts().get(503, 0) > refused_before, 30
            ), stack.logs()
            refused_by_lab = wanted & set(stack.lab.refused_ids())
            accepted_by_lab = wanted & set(stack.lab.accepted_ids())
            accepted_by_fhir = wanted & fhir_accepted(stack)
        finally:
            stack.fhir.mode = "ok"
            stack.lab.mode = "ack"
        assert not accepted_by_lab, "the lab accepted messages while it refused them"
        assert not accepted_by_fhir, "the FHIR server accepted messages while it answered 503"
        # Each subscriber accepts every message of the batch after the recovery, those it had
        # refused included: a refused attempt was not taken for a delivery.
        assert wait_until(lambda: wanted <= set(stack.lab.accepted_ids()), 60), (
            f"never accepted by the lab: {sorted(wanted - set(stack.lab.accepted_ids()))} "
            f"(refused before the recovery: {sorted(refused_by_lab)})\n{stack.logs()}"
        )
        assert wait_until(lambda: wanted <= fhir_accepted(stack), 60), (
            f"never accepted by the FHIR server: {sorted(wanted - fhir_accepted(stack))}\n"
            f"{stack.logs()}"
        )

    def test_an_oru_with_twenty_results_arrives_as_one_transaction(self, stack):
        """A 20-OBX ORU^R01 becomes one transaction Bundle holding its Observations."""
        patient = patients(1, seed=505)[0]
        before = stack.fhir.count
        assert send_all(stack.inbound_port, [oru_r01(patient, control_id=control_id("ORU"))]) == [
            "AA"
        ]

        def oru_bundles():
            return [
                b
                for b in stack.fhir.received[before:]
                if any(e["resource"]["resourceType"] == "DiagnosticReport" for e in b["entry"])
            ]

        assert wait_until(oru_bundles, 30), stack.logs()
        bundle = oru_bundles()[0]
        kinds = [e["resource"]["resourceType"] for e in bundle["entry"]]
        assert kinds.count("Observation") == 20
        assert all(e["request"]["method"] == "PUT" for e in bundle["entry"])


class TestRefusals:
    def test_a_4xx_is_kept_as_a_visible_dead_letter_and_others_go_on(self, stack):
        """A bundle the FHIR server refuses (422) is dead-lettered with the reply, visible in the API."""
        import urllib.request

        patient = patients(1, seed=606)[0]
        stack.fhir.mode = "reject"
        try:
            assert send_all(
                stack.inbound_port, [adt(patient, "A01", control_id=control_id("REJ"))]
            ) == ["AA"]
            assert wait_until(lambda: stack.redis.xlen(keys.dead("dmp-national")) >= 1, 30), (
                stack.logs()
            )
        finally:
            stack.fhir.mode = "ok"
        request = urllib.request.Request(
            f"http://127.0.0.1:{stack.settings.http_port}/api/dead-letters/dmp-national",
            headers={"Authorization": "Bearer loopback-stack-token"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            letters = __import__("json").load(response)
        assert letters[0]["last_reply"].startswith("HTTP 422")
        assert "refused" in letters[0]["reason"]
        after = stack.fhir.count
        assert send_all(
            stack.inbound_port, [adt(patients(1, seed=607)[0], "A04", control_id=control_id("AFT"))]
        ) == ["AA"]
        assert wait_until(lambda: stack.fhir.count > after, 30), stack.logs()


class TestRobustness:
    def test_an_unreadable_journal_entry_is_quarantined_and_never_blocks(self, stack):
        """A journal entry without the fields the pipeline needs is set aside; later messages flow."""
        before = stack.redis.xlen(keys.QUARANTINE)
        stack.redis.xadd(keys.inbound(0), {"junk": "1"})
        assert wait_until(lambda: stack.redis.xlen(keys.QUARANTINE) > before, 30), stack.logs()
        after = stack.fhir.count
        assert send_all(
            stack.inbound_port, [adt(patients(1, seed=707)[0], "A08", control_id=control_id("ROB"))]
        ) == ["AA"]
        assert wait_until(lambda: stack.fhir.count > after, 30), stack.logs()

    def test_entries_older_than_the_retention_are_trimmed(self, stack):
        """The periodic task drops finished queue entries older than the retention (here: an entry
        from 1970 its group has read and acknowledged)."""
        stream = keys.outbound("lab-legacy", 1)
        # Earlier tests left only acknowledged entries here; an id from 1970 needs an empty stream.
        stack.redis.delete(stream)
        stack.redis.xadd(stream, {"env": "gone"}, id="1-0")
        # The group's position after 1-0: read, acknowledged, done (an unfinished entry is kept:
        # tests/ops/test_housekeeping.py::test_the_retention_trim_cuts_finished_entries_and_keeps_unfinished_ones).
        stack.redis.xgroup_create(stream, keys.DELIVER_GROUP, id="1-0")
        stack.redis.delete(keys.TRIMMED)
        assert wait_until(lambda: not stack.redis.xrange(stream, min="1-0", max="1-0"), 30), (
            stack.logs()
        )
