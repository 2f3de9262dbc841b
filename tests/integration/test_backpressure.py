"""Backpressure on the real stack: a subscriber's backlog over its limit makes the listener say AR."""

from __future__ import annotations

import pytest

from broker import keys
from broker.ack import read_ack
from broker.adapters.mllp import MllpClient
from broker.synthetic import adt, patients
from broker.testing import LoopbackStack, wait_until

pytestmark = pytest.mark.integration


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
