"""Failed password logins, counted per user name and per client address, and the lockouts they cause.

After :attr:`Limits.per_user` failures for one name (or :attr:`Limits.per_address` from one
address) with no more than :attr:`Limits.window_s` between them, that name (or address) is
locked out for :attr:`Limits.first_lock_s`; each further failure once the lock has passed doubles
the lock, up to :attr:`Limits.max_lock_s`. While locked out, a login is refused before its
password is checked (no KDF work for a guesser) and counts nothing more. A successful login
clears its name's count (not its address's: one's own account must not reset a guesser's count).

The counters live in Redis, whose TTLs make them expire by themselves: every API process shares
them (a guesser cannot spread attempts over processes), a restart does not reset them, and the
store (SQLite's single writer) is not written on every wrong password. Keys hold the SHA-256 of
the name or address, never what was typed (a password typed into the name field stays out of
Redis)::

    pl:login:fail:user:H    string  failures of one name; expires window_s (+ its lock) after the last
    pl:login:lock:user:H    string  present while the name is locked out (its TTL is what is left)
    pl:login:fail:peer:H    string  the same for one client address
    pl:login:lock:peer:H
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import redis

from broker.errors import ServiceUnavailable

__all__ = ["Limits", "Lockout", "LoginThrottle"]

_PREFIX = "pl:login:"


@dataclass(frozen=True, slots=True)
class Limits:
    """When failed logins lock a name or an address out, and for how long.

    Attributes:
        per_user: failures of one name that lock it out.
        per_address: failures from one address that lock it out (higher: a hospital's people
            may share one address behind its proxy).
        window_s: failures further apart than this start counting again.
        first_lock_s: the first lockout; each further failure doubles it.
        max_lock_s: the longest lockout.
    """

    per_user: int = 5
    per_address: int = 20
    window_s: float = 15 * 60
    first_lock_s: float = 60
    max_lock_s: float = 3600


@dataclass(frozen=True, slots=True)
class Lockout:
    """A name or address locked out.

    Attributes:
        scope: ``user`` or ``address``.
        seconds: how long the lockout lasts (from now).
        failures: the failures that caused it.
    """

    scope: str
    seconds: float
    failures: int = 0


def _key(kind: str, scope: str, value: str) -> str:
    digest = hashlib.sha256(value.encode("utf-8")).hexdigest()[:32]
    return f"{_PREFIX}{kind}:{'user' if scope == 'user' else 'peer'}:{digest}"


class LoginThrottle:
    """The failed-login counters of one Redis (the API's ``app.state.redis``).

    Args:
        client: the Redis the counters live in.
        limits: when to lock out, for how long.

    Every method raises :class:`~broker.errors.ServiceUnavailable` when Redis cannot be reached:
    a password login then cannot be throttled, and is refused (token logins do not need this).
    """

    def __init__(self, client: redis.Redis, limits: Limits | None = None) -> None:
        self.client = client
        self.limits = limits or Limits()

    def _scopes(self, user: str, peer: str) -> tuple[tuple[str, str, int], ...]:
        return (
            ("user", user.casefold(), self.limits.per_user),
            ("address", peer, self.limits.per_address),
        )

    def locked(self, user: str, peer: str) -> Lockout | None:
        """The lockout in force for ``user`` or ``peer`` (the longer one), else ``None``."""
        scopes = self._scopes(user, peer)
        try:
            left = [self.client.pttl(_key("lock", scope, value)) for scope, value, _ in scopes]
        except redis.RedisError as exc:
            raise _unavailable(exc) from exc
        found = [(ms, scope) for ms, (scope, _, _) in zip(left, scopes, strict=True) if ms > 0]
        if not found:
            return None
        ms, scope = max(found)
        return Lockout(scope, ms / 1000)

    def failed(self, user: str, peer: str) -> list[Lockout]:
        """Count a failed login of ``user`` from ``peer``; the lockouts it starts."""
        started: list[Lockout] = []
        try:
            for scope, value, limit in self._scopes(user, peer):
                failures = int(self.client.incr(_key("fail", scope, value)))
                lock_s = 0.0
                if failures >= limit:
                    lock_s = min(
                        self.limits.first_lock_s * 2 ** (failures - limit), self.limits.max_lock_s
                    )
                    self.client.set(_key("lock", scope, value), failures, px=int(lock_s * 1000))
                    started.append(Lockout(scope, lock_s, failures))
                self.client.pexpire(
                    _key("fail", scope, value), int((self.limits.window_s + lock_s) * 1000)
                )
        except redis.RedisError as exc:
            raise _unavailable(exc) from exc
        return started

    def succeeded(self, user: str) -> None:
        """Forget the failures of ``user`` (a correct password was given)."""
        try:
            self.client.delete(_key("fail", "user", user.casefold()))
        except redis.RedisError as exc:
            raise _unavailable(exc) from exc


def _unavailable(exc: redis.RedisError) -> ServiceUnavailable:
    msg = f"failed logins cannot be counted: Redis is unavailable ({type(exc).__name__})"
    return ServiceUnavailable(msg)
