"""Backpressure on the real stack: the listener says AR (the HTTP edge 503) rather than take a
message it may not keep, and takes it again once the reason is gone.

The memory tests lower the ``maxmemory`` of the stack's own embedded Redis (``CONFIG SET``) and
fill it with throw-away keys, so the limits are reached with a few megabytes instead of 2 GB.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import redis

from broker import keys
from broker.ack import AckReply, read_ack
from broker.adapters.mllp import MllpClient
from broker.settings import REPO_ROOT
from broker.testing import raw_of, wait_for_port, wait_until
from passerelle_demo.loopback import LoopbackStack
from passerelle_demo.synthetic import adt, patients

pytestmark = pytest.mark.integration

FILLER = "test:filler:"
FILLER_BYTES = 256 * 1024
FHIR_ADAPTER = "chu-rabat-fhir"


def send(stack: LoopbackStack, text: str) -> AckReply:
    """One message on its own connection; its ACK."""
    with MllpClient("127.0.0.1", stack.inbound_port, timeout=10) as client:
        return read_ack(client.send(text.encode()))


def used_memory(stack: LoopbackStack) -> int:
    return int(stack.redis.info("memory")["used_memory"])


def fill(stack: LoopbackStack, count: int) -> None:
    """Write ``count`` filler values of 256 KiB."""
    for index in range(count):
        stack.redis.set(f"{FILLER}{index}", b"x" * FILLER_BYTES)


def refuses_writes(stack: LoopbackStack) -> bool:
    """Whether Redis answers a write with its out-of-memory error."""
    try:
        stack.redis.set(f"{FILLER}probe", b"1")
    except redis.ResponseError as exc:
        return "maxmemory" in str(exc)
    return False


def free(stack: LoopbackStack) -> None:
    """Delete every filler value."""
    fillers = stack.redis.keys(f"{FILLER}*")
    if fillers:
        stack.redis.delete(*fillers)


def journalled(stack: LoopbackStack, control: str) -> bool:
    assert stack.settings is not None
    for partition in range(stack.settings.partitions):
        for _, fields in stack.redis.xrange(keys.inbound(partition)):
            if b"raw" in fields and f"|{control}|".encode() in raw_of(fields):
                return True
    return False


def test_a_backlog_over_the_limit_answers_ar_until_it_drains(tmp_path):
    """With max_backlog=5 and the MLLP subscriber refusing, new messages get AR 'resend later'."""
    with LoopbackStack(tmp_path, workers=2, rekick_interval_s=0.5, max_backlog=5) as stack:
        stack.lab.mode = "error"
        pool = patients(20, seed=1201)
        with MllpClient("127.0.0.1", stack.inbound_port, timeout=10) as client:
            codes = [
                read_ack(client.send(adt(p, "A04", control_id=f"BP-{i}").encode())).code
                for i, p in enumerate(pool[:10])
            ]
            assert codes == ["AA"] * 10
            assert wait_until(lambda: stack.redis.exists(keys.PRESSURE), 30), stack.logs()
            refused = read_ack(client.send(adt(pool[10], "A04", control_id="BP-10").encode()))
            assert refused.code == "AR"
            assert "resend later" in refused.text
            assert "lab-legacy" in refused.text
            stack.lab.mode = "ack"
            assert wait_until(lambda: not stack.redis.exists(keys.PRESSURE), 60), stack.logs()
            accepted = read_ack(client.send(adt(pool[10], "A04", control_id="BP-10").encode()))
        assert accepted.code == "AA"
        assert wait_until(
            lambda: {f"BP-{i}" for i in range(11)} <= set(stack.lab.control_ids()), 60
        ), stack.logs()


def test_a_full_redis_answers_ar_and_takes_the_message_once_memory_is_freed(tmp_path):
    """Redis at its maxmemory (``noeviction``) refuses the journal append: the sender gets AR
    saying the journal is out of memory, nothing of the message is kept (no journal entry, no
    stored ACK), and the same message resent after memory is freed gets AA and is delivered.

    ``max_memory_ratio=1.0`` keeps the 90 % backpressure mark out of the way, so the refusal
    comes from Redis itself.
    """
    with LoopbackStack(tmp_path, workers=1, rekick_interval_s=0.5, max_memory_ratio=1.0) as stack:
        pool = patients(2, seed=1301)
        assert send(stack, adt(pool[0], "A04", control_id="OOM-0")).code == "AA"
        assert wait_until(lambda: "OOM-0" in stack.lab.control_ids(), 60), stack.logs()
        fill(stack, 32)
        # A limit 4 MiB under what is used: Redis stays full whatever small buffers come and go
        # (stopping at the first refused write does not: that write's own buffer is then freed).
        stack.redis.config_set("maxmemory", used_memory(stack) - 4 * 1024 * 1024)
        try:
            assert refuses_writes(stack)
            refused = send(stack, adt(pool[1], "A04", control_id="OOM-1"))
        finally:
            free(stack)
        assert refused.code == "AR", refused.text
        assert "memory" in refused.text, refused.text
        assert "resend later" in refused.text, refused.text
        assert not journalled(stack, "OOM-1")
        accepted = send(stack, adt(pool[1], "A04", control_id="OOM-1"))
        assert accepted.code == "AA", accepted.text
        assert journalled(stack, "OOM-1")
        assert wait_until(lambda: "OOM-1" in stack.lab.control_ids(), 90), stack.logs()
        assert stack.lab.control_ids().count("OOM-1") == 1


def _fhir_patient() -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "identifier": [{"system": "http://chu-rabat.ma/ipp", "value": "IPP0081342"}],
        "name": [
            {"family": "BENNANI", "given": ["Youssef"]},
            {"family": "بناني", "given": ["يوسف"]},
        ],
        "gender": "male",
        "birthDate": "1974-07-03",
    }


def test_over_90_percent_of_maxmemory_turns_backpressure_on_then_off(tmp_path):
    """Redis past 90 % of its maxmemory (the default ``max_memory_ratio``): the periodic task
    sets ``pl:pressure``, the MLLP listener answers AR "resend later" naming the memory limit
    and the HTTP edge 503 with Retry-After; back under the limit, both accept again."""
    data_dir = tmp_path / "stack"
    registration = (REPO_ROOT / "adapters" / f"{FHIR_ADAPTER}.yaml").read_text(encoding="utf-8")
    (data_dir / "adapters").mkdir(parents=True)
    (data_dir / "adapters" / f"{FHIR_ADAPTER}.yaml").write_text(registration, encoding="utf-8")
    with LoopbackStack(data_dir, workers=1, rekick_interval_s=0.5) as stack:
        assert stack.settings is not None
        assert stack.settings.max_memory_ratio == 0.9
        assert wait_for_port("127.0.0.1", stack.settings.http_port, 30), stack.logs()
        api = stack.api_client()
        pool = patients(2, seed=1401)
        body = json.dumps(_fhir_patient()).encode()
        headers = {"Content-Type": "application/fhir+json"}
        with api:
            assert send(stack, adt(pool[0], "A04", control_id="MEM-0")).code == "AA"
            assert not stack.redis.exists(keys.PRESSURE)
            fill(stack, 32)  # 8 MiB: the memory the limit is then set around

            def past_the_mark() -> bool:
                # Used memory at 95 % of the limit: past 90 %, with room before Redis refuses
                # writes. Set again at each look: Redis's own buffers come and go (a CI run once
                # saw no mark in 30 s after a single setting).
                stack.redis.config_set("maxmemory", int(used_memory(stack) / 0.95))
                return bool(stack.redis.exists(keys.PRESSURE))

            try:
                assert wait_until(past_the_mark, 30), (
                    f"{stack.redis.info('memory')}\n{stack.logs()}"
                )
                mark = (stack.redis.get(keys.PRESSURE) or b"").decode()
                refused = send(stack, adt(pool[1], "A04", control_id="MEM-1"))
                refused_http = api.post(
                    f"/inbound/{FHIR_ADAPTER}/fhir", content=body, headers=headers
                )
            finally:
                free(stack)
            assert "memory limit" in mark, mark
            assert refused.code == "AR", refused.text
            assert "resend later" in refused.text, refused.text
            assert "memory limit" in refused.text, refused.text
            assert refused_http.status_code == 503, refused_http.text
            assert refused_http.headers.get("Retry-After", "").isdigit(), refused_http.headers
            assert "resend later" in refused_http.json()["issue"][0]["diagnostics"]
            assert not journalled(stack, "MEM-1")
            assert wait_until(lambda: not stack.redis.exists(keys.PRESSURE), 30), stack.logs()
            accepted = send(stack, adt(pool[1], "A04", control_id="MEM-1"))
            accepted_http = api.post(f"/inbound/{FHIR_ADAPTER}/fhir", content=body, headers=headers)
        assert accepted.code == "AA", accepted.text
        assert accepted_http.status_code == 202, accepted_http.text
        assert wait_until(lambda: "MEM-1" in stack.lab.control_ids(), 60), stack.logs()
