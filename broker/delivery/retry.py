"""Backoff as a pure function: exponential, capped, with jitter."""

from __future__ import annotations

import random

from broker.settings import RetryPolicy

__all__ = ["exhausted", "next_delay"]


def next_delay(policy: RetryPolicy, attempt: int, rng: random.Random | None = None) -> float:
    """Seconds to wait after failed ``attempt`` (1-based) before the next one.

    ``initial * multiplier ** (attempt - 1)``, capped at ``max_delay_s``, then spread by
    ``±jitter`` so many partitions failing together do not retry in lockstep.
    """
    base = min(policy.max_delay_s, policy.initial_delay_s * policy.multiplier ** (attempt - 1))
    spread = (rng or random).uniform(-policy.jitter, policy.jitter)
    return max(0.0, base * (1 + spread))


def exhausted(policy: RetryPolicy, attempt: int, age_s: float = 0.0) -> bool:
    """Tell whether ``attempt`` failures, the first ``age_s`` seconds ago, use up the policy."""
    if policy.max_attempts is not None and attempt >= policy.max_attempts:
        return True
    return policy.max_age_s is not None and age_s >= policy.max_age_s
