"""Per-hop timings (``broker.timing``): nothing when off; on, one record per hop that agrees
with the journal, the subscribers' queues and what the subscribers received."""

from __future__ import annotations

import pytest

from broker import keys, timing
from broker.ack import read_ack
from broker.dispatch import DRAIN_INBOUND
from broker.settings import Settings
from broker.supervisor import settings_env
from passerelle_demo.synthetic import adt, patients

DMP = "dmp-national"
LAB = "lab-legacy"


class _NoCommands:
    """A pipeline that fails the test if anything is queued on it."""

    def __getattr__(self, name):
        raise AssertionError(f"timings off queued {name} on the drain's pipeline")


class TestOff:
    def test_off_by_default_reads_no_clock_and_queues_nothing(self):
        """Off (the default), start() is 0.0 and the records queue no Redis command."""
        settings = Settings()
        assert settings.timings is False
        assert timing.start(settings) == 0.0
        timing.mapped(_NoCommands(), settings, "1-0", "env", 0.0)
        timing.sent(_NoCommands(), settings, DMP, "1-0", "env", 0.0)

    def test_a_broker_without_timings_writes_no_timing_record(self, make_broker):
        """A message delivered with timings off leaves no pl:timings key."""
        broker = make_broker(partitions=1)
        x = patients(1, seed=1401)[0]
        assert read_ack(broker.receive(adt(x, "A01", control_id="T-1"))).code == "AA"
        broker.run()
        assert broker.fhir.count == 1
        assert broker.client.exists(keys.TIMINGS) == 0


class TestOn:
    def test_the_environment_turns_it_on_and_child_processes_inherit_it(self, monkeypatch):
        """PASSERELLE_TIMINGS=1 turns timings on; serve passes it on to every child it starts."""
        monkeypatch.setenv("PASSERELLE_TIMINGS", "1")
        settings = Settings()
        assert settings.timings is True
        monkeypatch.delenv("PASSERELLE_TIMINGS")
        for name, value in settings_env(settings).items():
            monkeypatch.setenv(name, value)
        assert Settings().timings is True

    def test_each_hop_is_recorded_once_and_agrees_with_the_queues_and_the_subscribers(
        self, make_broker
    ):
        """One map record (journal entry → commit) and one send record per subscriber whose
        attempt brackets the subscriber's own arrival time."""
        broker = make_broker(partitions=1, timings=True)
        x = patients(1, seed=1402)[0]
        assert read_ack(broker.receive(adt(x, "A01", control_id="T-2"))).code == "AA"
        ((journal_id, journalled),) = broker.client.xrange(keys.inbound(0))
        envelope_id = journalled[b"id"].decode()
        broker.run(DRAIN_INBOUND)
        queued = {
            sub: broker.client.xrange(keys.outbound(sub, 0))[0][0].decode() for sub in (DMP, LAB)
        }
        broker.run()

        records = [
            (rid.decode(), {k.decode(): v.decode() for k, v in f.items()})
            for rid, f in broker.client.xrange(keys.TIMINGS)
        ]
        maps = [(rid, f) for rid, f in records if f["hop"] == "map"]
        sends = {f["sub"]: f for _, f in records if f["hop"] == "send"}
        assert len(maps) == 1
        assert len(sends) == 2
        assert len(records) == 3

        map_id, mapped = maps[0]
        assert mapped["env"] == envelope_id
        assert mapped["in"] == journal_id.decode()
        assert timing.entry_time(journal_id) <= float(mapped["t0"]) + 0.001
        assert float(mapped["t0"]) <= float(mapped["t1"])
        # Appended in the batch's MULTI, with the subscribers' queue entries: one commit time.
        for out_id in queued.values():
            assert 0 <= timing.entry_time(out_id) - timing.entry_time(map_id) <= 0.001

        ((_, fhir_arrival),) = broker.fhir.arrivals()
        (lab_message,) = broker.lab.messages
        arrivals = {DMP: fhir_arrival, LAB: lab_message.received_at.timestamp()}
        for sub, sent in sends.items():
            assert sent["env"] == envelope_id
            assert sent["out"] == queued[sub]
            assert timing.entry_time(sent["out"]) <= float(sent["t0"]) + 0.001
            assert float(sent["t0"]) <= arrivals[sub] <= float(sent["t1"])


class TestEntryTime:
    @pytest.mark.parametrize(
        ("entry_id", "seconds"),
        [
            pytest.param("1700000000123-0", 1_700_000_000.123, id="text"),
            pytest.param(b"1700000000123-7", 1_700_000_000.123, id="bytes, a sequence"),
        ],
    )
    def test_a_stream_entry_id_is_its_append_time(self, entry_id, seconds):
        """A stream id's millisecond part is the epoch time of the append."""
        assert timing.entry_time(entry_id) == pytest.approx(seconds)
