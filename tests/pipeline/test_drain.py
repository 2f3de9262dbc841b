"""The journal drain (``broker.pipeline.drain``) in process: no Celery, no serve; a real Redis.

Messages go through the listener's intake into the journal; ``EagerBroker.run(DRAIN_INBOUND)``
runs the drain as the plain function its Celery task wraps. What is asserted is what the drain
left in Redis (the subscribers' queues, the quarantine, the journal's pending list) and the
drains it asked for.
"""

from __future__ import annotations

import pytest
import redis

from broker import keys
from broker.ack import read_ack
from broker.dispatch import DRAIN_INBOUND, DRAIN_OUTBOUND
from broker.streams import Lock
from passerelle_demo.synthetic import adt, patients

DMP = "dmp-national"
LAB = "lab-legacy"


class TestDrainInbound:
    def test_each_mapped_message_is_queued_for_its_subscribers_in_its_partition_and_kicked(
        self, make_broker
    ):
        """An ADT^A01 is queued for both subscribers, in the journal's partition; both drains kicked."""
        broker = make_broker(partitions=1, deliver_inline=False)
        x = patients(1, seed=1301)[0]
        assert read_ack(broker.receive(adt(x, "A01", control_id="X-1"))).code == "AA"
        broker.run(DRAIN_INBOUND)

        assert list(broker.queued(DMP)) == ["X-1"]
        assert list(broker.queued(LAB)) == ["X-1"]
        assert sorted(broker.celery.kicked(DRAIN_OUTBOUND)) == [
            keys.outbound(DMP, 0),
            keys.outbound(LAB, 0),
        ]
        assert broker.client.xpending(keys.inbound(0), keys.PIPELINE_GROUP)["pending"] == 0

    def test_an_unreadable_journal_entry_is_quarantined_and_the_messages_behind_it_go_on(
        self, make_broker
    ):
        """A journal entry without id, source, received_at or raw is set aside once, never retried."""
        broker = make_broker(partitions=1)
        broker.client.xadd(keys.inbound(0), {"junk": "1"})
        x = patients(1, seed=1302)[0]
        assert read_ack(broker.receive(adt(x, "A01", control_id="X-1"))).code == "AA"
        broker.run(DRAIN_INBOUND)

        ((_, quarantined),) = broker.client.xrange(keys.QUARANTINE)
        assert quarantined[b"stream"] == keys.inbound(0).encode()
        assert quarantined[b"reason"] == b"the journal entry lacks id, source, received_at or raw"
        assert list(broker.queued(DMP)) == ["X-1"]
        assert broker.client.xpending(keys.inbound(0), keys.PIPELINE_GROUP)["pending"] == 0

    def test_a_drain_failing_after_its_commit_still_queues_the_drains_it_fed(
        self, make_broker, monkeypatch
    ):
        """Their kick flags are set in the commit: an error afterwards must not strand them."""
        broker = make_broker(partitions=1)
        x = patients(1, seed=1303)[0]
        assert read_ack(broker.receive(adt(x, "A01", control_id="X-1"))).code == "AA"
        broker.celery.clear()

        def lost_connection(self: Lock, reply: object) -> int:
            raise redis.ConnectionError("Redis went away after the commit")

        # What follows the commit: its finish's outcome (the finish runs in the commit's MULTI).
        monkeypatch.setattr(Lock, "finished_with", lost_connection)
        with pytest.raises(redis.ConnectionError):
            broker.call(DRAIN_INBOUND, 0)

        assert list(broker.queued(DMP)) == ["X-1"]
        assert sorted(broker.celery.kicked(DRAIN_OUTBOUND)) == [
            keys.outbound(DMP, 0),
            keys.outbound(LAB, 0),
        ]
