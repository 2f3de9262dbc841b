"""Failed logins counted in Redis (the session's real server): lockout per name and per address,
growing lockouts, recovery, nothing typed kept in Redis, and Redis down refusing to guess."""

from __future__ import annotations

import pytest
import redis

from broker.errors import ServiceUnavailable
from broker.testing import free_port, wait_until
from broker.throttle import Limits, Lockout, LoginThrottle

PEER = "10.20.30.40"


def test_five_failures_lock_the_name_for_a_minute_and_not_another_name(redis_client) -> None:
    throttle = LoginThrottle(redis_client)
    for _ in range(4):
        assert throttle.failed("amina.benali", PEER) == []
        assert throttle.locked("amina.benali", PEER) is None
    assert throttle.failed("amina.benali", PEER) == [Lockout("user", 60.0, 5)]
    locked = throttle.locked("Amina.Benali", "10.99.99.99")  # the name, whatever the case
    assert locked is not None
    assert locked.scope == "user"
    assert 0 < locked.seconds <= 60
    assert throttle.locked("youssef.alaoui", PEER) is None  # the address is under its limit


def test_failures_from_one_address_lock_it_for_every_name(redis_client) -> None:
    throttle = LoginThrottle(redis_client, Limits(per_user=100, per_address=3))
    assert throttle.failed("a.one", PEER) == []
    assert throttle.failed("b.two", PEER) == []
    assert throttle.failed("c.three", PEER) == [Lockout("address", 60.0, 3)]
    locked = throttle.locked("d.four", PEER)
    assert locked is not None
    assert locked.scope == "address"
    assert throttle.locked("d.four", "10.20.30.41") is None


def test_each_failure_after_a_lockout_doubles_it_up_to_the_cap(redis_client) -> None:
    limits = Limits(per_user=2, per_address=100, first_lock_s=0.2, max_lock_s=1.0)
    throttle = LoginThrottle(redis_client, limits)
    throttle.failed("amina.benali", PEER)
    lengths = []
    for _ in range(4):
        (started,) = throttle.failed("amina.benali", PEER)
        lengths.append(started.seconds)
    assert lengths == [0.2, 0.4, 0.8, 1.0]


def test_the_lockout_ends_and_a_success_starts_the_count_again(redis_client) -> None:
    throttle = LoginThrottle(redis_client, Limits(per_user=2, per_address=100, first_lock_s=0.2))
    throttle.failed("amina.benali", PEER)
    assert throttle.failed("amina.benali", PEER) != []
    assert throttle.locked("amina.benali", PEER) is not None
    assert wait_until(lambda: throttle.locked("amina.benali", PEER) is None, timeout=10)
    throttle.succeeded("amina.benali")
    assert throttle.failed("amina.benali", PEER) == []  # counted from one again
    assert throttle.locked("amina.benali", PEER) is None


def test_redis_keeps_no_name_and_no_address(redis_client) -> None:
    throttle = LoginThrottle(redis_client)
    for _ in range(5):
        throttle.failed("Tajine aux olives 2026", PEER)  # a password typed as the name
    stored = [k.decode() for k in redis_client.keys("pl:login:*")]
    assert len(stored) == 3  # the name's count and lock, the address's count
    assert not any("Tajine" in k or "tajine" in k or PEER in k for k in stored)
    assert all(redis_client.pttl(k) > 0 for k in stored)  # every counter expires by itself


def test_without_redis_a_password_login_cannot_be_counted() -> None:
    down = redis.Redis(port=free_port(), socket_connect_timeout=1)
    throttle = LoginThrottle(down)
    with pytest.raises(ServiceUnavailable, match="failed logins cannot be counted"):
        throttle.locked("amina.benali", PEER)
    with pytest.raises(ServiceUnavailable):
        throttle.failed("amina.benali", PEER)
