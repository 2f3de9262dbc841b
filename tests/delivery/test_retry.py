"""Backoff: exponential, capped, jittered; attempts run out only when the policy says so."""

from __future__ import annotations

import random

from broker.delivery.retry import exhausted, next_delay
from broker.settings import RetryPolicy


class TestNextDelay:
    def test_grows_exponentially_then_caps(self):
        """Without jitter, delays double until the cap."""
        policy = RetryPolicy(initial_delay_s=1, max_delay_s=5, multiplier=2, jitter=0)
        assert [next_delay(policy, n) for n in range(1, 6)] == [1, 2, 4, 5, 5]

    def test_jitter_stays_within_its_band(self):
        """With 20 % jitter every delay is within ±20 % of the base."""
        policy = RetryPolicy(initial_delay_s=10, max_delay_s=10, jitter=0.2)
        rng = random.Random(1)
        delays = [next_delay(policy, 1, rng) for _ in range(200)]
        assert all(8 <= d <= 12 for d in delays)
        assert len(set(delays)) > 100


class TestExhausted:
    def test_unlimited_by_default(self):
        """A subscriber that is down is retried until it comes back."""
        assert not exhausted(RetryPolicy(), 10_000)

    def test_max_attempts(self):
        """With max_attempts=3, the third failure exhausts the policy."""
        policy = RetryPolicy(max_attempts=3)
        assert not exhausted(policy, 2)
        assert exhausted(policy, 3)


def test_max_age_exhausts_after_that_long():
    """With max_age_s=60, a message failing for a minute is given up, whatever its attempts."""
    policy = RetryPolicy(max_age_s=60)
    assert not exhausted(policy, 50, age_s=59)
    assert exhausted(policy, 2, age_s=60)
