"""No journalled entry is left waiting after a burst ends, without the periodic re-kick.

Kicks, not beat, must wake every drain: a message that arrives while its stream's drainer is
finishing is either read by that drainer or wakes another. Beat's re-kick is set to an hour
here, so only the kicks can deliver what these bursts send; that it never ran is checked too
(its first run marks ``pl:trimmed``).
"""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from broker import keys
from broker.ack import read_ack
from broker.adapters.mllp import MllpClient
from broker.ops.stats import group_stats
from broker.testing import wait_until
from passerelle_demo.loopback import LoopbackStack
from passerelle_demo.synthetic import adt, patients

pytestmark = pytest.mark.integration

SENDERS = 4
ROUNDS = 25
PER_ROUND = 5
"""Each sender's messages per burst."""
DELIVERY_TIMEOUT_S = 60
"""Generous, and far below the re-kick period: a stranded entry fails the test, a slow machine
does not."""


@pytest.fixture(scope="module")
def quiet_beat_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoopbackStack]:
    """The real stack with beat's re-kick an hour away: only kicks wake the drains.

    One partition and four worker processes: a drain's kick finds a free worker at once, so
    it can run while the stream's drainer is finishing.
    """
    with LoopbackStack(
        tmp_path_factory.mktemp("wakeup"),
        workers=4,
        partitions=1,
        rekick_interval_s=3600.0,
        claim_idle_s=10.0,
        delivery_timeout_s=2.0,
    ) as running:
        yield running


def _burst(client: MllpClient, messages: list[str], pause: random.Random) -> list[str]:
    """Send with short, uneven gaps: arrivals land while the drains read, map and finish."""
    codes = []
    for text in messages:
        codes.append(read_ack(client.send(text.encode("utf-8"))).code)
        threading.Event().wait(pause.choice((0, 0.001, 0.003, 0.008, 0.02)))
    return codes


def _waiting(stack: LoopbackStack) -> dict[str, int]:
    """Entries journalled or queued and not finished, per stream that has any."""
    assert stack.settings is not None
    streams = []
    for partition in range(stack.settings.partitions):
        streams.append((keys.inbound(partition), keys.PIPELINE_GROUP))
        for sub in ("dmp-national", "lab-legacy"):
            streams.append((keys.outbound(sub, partition), keys.DELIVER_GROUP))
    out = {}
    for stream, group in streams:
        stats = group_stats(stack.redis, stream, group)
        if stats.depth:
            out[stream] = stats.depth
    return out


def test_no_entry_is_left_waiting_after_any_burst_without_the_periodic_rekick(quiet_beat_stack):
    """25 bursts over 4 connections; after each, every message reaches both subscribers and no
    stream has an entry pending or unread, well before beat's re-kick could run (it never did).
    """
    stack = quiet_beat_stack
    people = patients(40, seed=131)
    clients = [MllpClient("127.0.0.1", stack.inbound_port, timeout=30) for _ in range(SENDERS)]
    pauses = [random.Random(s) for s in range(SENDERS)]
    expected = 0
    try:
        for round_ in range(ROUNDS):
            bursts = [
                [
                    adt(people[(s * 7 + i) % len(people)], "A08", control_id=f"WK{round_}-{s}-{i}")
                    for i in range(PER_ROUND)
                ]
                for s in range(SENDERS)
            ]
            with ThreadPoolExecutor(SENDERS) as pool:
                codes = list(pool.map(_burst, clients, bursts, pauses))
            assert all(code == "AA" for burst in codes for code in burst)
            expected += SENDERS * PER_ROUND

            def delivered(n: int = expected) -> bool:
                return stack.lab.unique_count >= n and len(stack.fhir.envelope_ids) >= n

            everything = wait_until(delivered, DELIVERY_TIMEOUT_S, 0.02)
            assert not stack.redis.exists(keys.TRIMMED), "beat's re-kick ran: it must not here"
            assert everything, (
                f"after burst {round_ + 1}, left waiting: {_waiting(stack)}; FHIR has "
                f"{len(stack.fhir.envelope_ids)}, MLLP {stack.lab.unique_count} of {expected}"
            )
            assert wait_until(lambda: not _waiting(stack), 10, 0.02), _waiting(stack)
    finally:
        for client in clients:
            client.close()
