"""The steady-load benchmark's arithmetic (``benchmarks.stats``): percentiles, trend, hops."""

from __future__ import annotations

import math

import pytest

from benchmarks.stats import HOPS, Trace, hop_durations, percentile, summary, trend


class TestPercentile:
    @pytest.mark.parametrize(
        ("p", "expected"),
        [
            pytest.param(50, 50, id="median of 1..100 is 50"),
            pytest.param(95, 95, id="p95"),
            pytest.param(99, 99, id="p99"),
            pytest.param(100, 100, id="p100 is the maximum"),
            pytest.param(0, 1, id="p0 is the minimum"),
        ],
    )
    def test_nearest_rank_over_one_to_a_hundred(self, p, expected):
        """Of 1..100 shuffled, the p-th percentile is p (nearest rank), whatever the order."""
        values = [float(v) for v in range(100, 0, -1)]
        assert percentile(values, p) == expected

    def test_a_single_slow_message_in_a_hundred_is_the_p99_not_the_p95(self):
        """99 fast messages and one slow: p99 is fast (the 99th), only the maximum is slow."""
        values = [0.01] * 99 + [5.0]
        assert percentile(values, 99) == 0.01
        assert percentile(values, 100) == 5.0

    def test_no_values_is_nan(self):
        """Nothing measured gives nan, never a made-up zero."""
        assert math.isnan(percentile([], 50))

    def test_summary_is_in_milliseconds(self):
        """summary() scales seconds to milliseconds and counts the values."""
        s = summary([0.001, 0.002, 0.003, 0.004])
        assert s["n"] == 4
        assert s["p50"] == pytest.approx(2.0)
        assert s["max"] == pytest.approx(4.0)


class TestTrend:
    def test_a_backlog_growing_by_twenty_a_second_has_a_trend_of_twenty(self):
        """The least-squares slope of a steadily growing backlog is its growth rate."""
        samples = [(t, 20.0 * t + 3) for t in range(1, 61)]
        assert trend(samples) == pytest.approx(20.0)

    def test_a_backlog_that_comes_and_goes_has_no_trend(self):
        """A backlog oscillating around a level (a broker keeping up in batches) trends to ~0."""
        samples = [(t, 5.0 if t % 2 else 0.0) for t in range(1, 61)]
        assert abs(trend(samples)) < 0.01

    def test_a_draining_backlog_has_a_negative_trend(self):
        """A backlog falling by 10 a second has a trend of -10."""
        assert trend([(t, 500 - 10.0 * t) for t in range(10)]) == pytest.approx(-10.0)

    @pytest.mark.parametrize(
        "samples",
        [pytest.param([], id="no sample"), pytest.param([(1.0, 7.0)], id="one sample")],
    )
    def test_fewer_than_two_samples_have_no_trend(self, samples):
        """Without two points there is no slope: 0."""
        assert trend(samples) == 0.0


class TestHopDurations:
    TRACE = Trace(
        sent=100.000,
        journalled=100.001,
        map_start=100.005,
        map_end=100.006,
        committed=100.008,
        send_start=100.020,
        received=100.022,
        replied=100.023,
    )

    def test_each_hop_is_the_gap_between_its_two_timestamps(self):
        """Each hop of the budget is the gap between consecutive points of the trace."""
        d = hop_durations(self.TRACE)
        expected = {
            "received → journalled": 0.001,
            "journal → mapping start": 0.004,
            "mapping": 0.001,
            "routing + commit": 0.002,
            "queue → send start": 0.012,
            "send → receiver": 0.002,
            "receiver → reply": 0.001,
            "end to end": 0.022,
        }
        assert d == pytest.approx(expected)

    def test_the_hops_add_up_to_the_end_to_end_time(self):
        """The hops on the path tile the end-to-end time: nothing is counted twice or lost."""
        d = hop_durations(self.TRACE)
        assert sum(d[h] for h in HOPS) == pytest.approx(d["end to end"])
        assert "receiver → reply" not in HOPS
