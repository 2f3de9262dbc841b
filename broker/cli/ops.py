"""``passerelle replay``, and what every command on a running broker's deliveries shares.

They work on the broker's Redis (``Settings().effective_redis_url``, so ``PASSERELLE_REDIS_URL``
or the embedded one under ``data_dir``) and queue work for its Celery workers. Every action is
recorded with who (``--by``, default the OS user) and why. Their settings are the running
``serve``'s (its runtime file, ``broker.running``) under the ``PASSERELLE_*`` environment, so
they find the running system without any. A subscriber no registration names (and with no dead
letters left) is a usage error naming the known ones, never an empty all-clear.

Exit codes: 0 done, 1 refused or failed (one line on stderr), 2 usage errors.
"""

from __future__ import annotations

import getpass
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from broker.cli._common import fail, load_settings, log_errors_only
from broker.errors import BrokerError

if TYPE_CHECKING:
    import redis

    from broker.adapters.spec import AdapterSpec
    from broker.delivery.replay import Operations
    from broker.settings import Settings

__all__ = [
    "ByOpt",
    "WhyOpt",
    "attempt",
    "check_subscriber",
    "connect",
    "operations",
    "ops_settings",
    "registered",
    "replay",
    "who_acts",
    "why_given",
]

_T = TypeVar("_T")

WhyOpt = Annotated[
    str, typer.Option("--why", help="Why; recorded with the action in the audit trail.")
]
ByOpt = Annotated[str | None, typer.Option("--by", help="Who does it (default: the OS user name).")]


def ops_settings() -> Settings:
    """The running system's settings under the environment; libraries then log errors only."""
    settings = load_settings(running=True)
    log_errors_only()
    return settings


def registered(settings: Settings, direction: str | None = None) -> list[AdapterSpec]:
    """The registrations of ``settings.adapters_dir`` (of one direction), or exit 1 saying why."""
    from broker.adapters.spec import load_adapters

    try:
        adapters = load_adapters(settings.adapters_dir)
    except BrokerError as exc:
        fail(str(exc))
    return [a for a in adapters if direction is None or a.direction == direction]


def check_subscriber(settings: Settings, client: redis.Redis, subscriber: str) -> None:
    """Exit 2 naming the known subscribers unless ``subscriber`` is registered or still has
    dead letters (a subscriber since removed from the registrations)."""
    from broker.delivery.dead_letter import DeadLetterStore

    known = [a.id for a in registered(settings, "outbound")]
    if subscriber in known:
        return
    leftover = attempt(lambda: DeadLetterStore(client).subscribers())
    if subscriber in leftover:
        return
    names = sorted({*known, *leftover})
    listed = (
        ", ".join(names) if names else f"none (no outbound registration in {settings.adapters_dir})"
    )
    fail(f"no subscriber {subscriber!r}; the subscribers are: {listed}", 2)


def connect(settings: Settings) -> redis.Redis:
    """A client on the broker's Redis, or exit 1 with one line when it does not answer."""
    import redis

    url = settings.effective_redis_url
    client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        fail(f"cannot reach the broker's Redis at {url}: {exc}; is the broker running?")
    return client


def operations(settings: Settings, client: redis.Redis) -> Operations:
    """The operator actions on the broker's Redis, queuing their tasks for its Celery workers."""
    from broker.delivery.replay import Operations
    from broker.dispatch import publish
    from broker.store import StoredEnvelopes
    from broker.worker.celery_app import create_celery

    adapters = registered(settings)
    celery = create_celery(settings)

    def enqueue(name: str, args: list[Any]) -> None:
        publish(celery, name, args)

    return Operations(
        client,
        enqueue=enqueue,
        subscribers=[a.id for a in adapters if a.direction == "outbound"],
        retention_s=settings.retention_s,
        stored=StoredEnvelopes(settings.effective_store_url),
    )


def who_acts(by: str | None) -> str:
    """Who acts: ``--by`` or the OS user name; exit 2 when neither says."""
    if by is not None and by.strip():
        return by.strip()
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        fail("cannot tell who you are; say it with --by NAME", 2)


def why_given(why: str) -> str:
    """The reason recorded in the audit trail; exit 2 when it is blank."""
    if not why.strip():
        fail("--why must say why (it is recorded in the audit trail)", 2)
    return why.strip()


def attempt(action: Callable[[], _T]) -> _T:
    """Run an operation; a refusal, invalid data or Redis failure is one line and exit 1."""
    import redis

    try:
        return action()
    except BrokerError as exc:
        fail(str(exc))
    except redis.RedisError as exc:
        fail(f"Redis failed: {exc}")


def replay(
    message_id: Annotated[str, typer.Argument(help="The envelope id of a journalled message.")],
    to: Annotated[str, typer.Option("--to", help="The subscriber to send it to.")],
    why: WhyOpt,
    by: ByOpt = None,
) -> None:
    """Send any stored message to a subscriber again (idempotent for the receiver)."""
    reason, who = why_given(why), who_acts(by)
    settings = ops_settings()
    client = connect(settings)
    check_subscriber(settings, client, to)
    ops = operations(settings, client)
    attempt(lambda: ops.resend(message_id, to, who=who, why=reason))
    typer.echo(f"queued message {message_id} for {to}")
