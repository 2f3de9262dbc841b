"""``passerelle policy explain`` and ``passerelle consent add|list|revoke``.

``policy explain MESSAGE SUBSCRIBER`` loads the registrations and mappings as every role does
(``PASSERELLE_*`` settings), finds the message in Redis or the message store, and prints what
the subscriber would receive now and why (JSON). The consent commands change and read the
registry in the message store; a change is announced on the broker's Redis so the delivery
workers use it for the next batch.

Exit codes: 0 done, 1 refused or failed (one line on stderr), 2 usage errors (an unknown
subscriber or message).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Annotated

import typer

from broker.cli._common import fail, print_json
from broker.cli.ops import ByOpt, WhyOpt, attempt, connect, ops_settings, who_acts, why_given

if TYPE_CHECKING:
    import redis
    import sqlalchemy

    from broker.envelope import Envelope
    from broker.settings import Settings
    from broker.store import ConsentRegistry

__all__ = ["consent_app", "policy_app"]

policy_app = typer.Typer(
    name="policy",
    help="Data-sharing policies: what a subscriber would receive of a message, and why.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
consent_app = typer.Typer(
    name="consent",
    help="The patient consent / opt-out registry: block or restrict sharing per patient.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]


@policy_app.command("explain")
def explain_command(
    message: Annotated[str, typer.Argument(help="The message (envelope) id.")],
    subscriber: Annotated[str, typer.Argument(help="The subscriber's adapter id.")],
) -> None:
    """Show whether MESSAGE would be sent to SUBSCRIBER now, the payload, and why (JSON)."""
    from broker.config import load_config
    from broker.delivery.explain import explain
    from broker.errors import BrokerError
    from broker.policy import ConsentLookup
    from broker.store import StoredEnvelopes

    settings = ops_settings()
    try:
        config = load_config(settings)
    except BrokerError as exc:
        fail(str(exc), every_line=True)
    spec = config.adapters.get(subscriber)
    if spec is None or spec.direction != "outbound":
        known = ", ".join(a.id for a in config.adapters.values() if a.direction == "outbound")
        fail(f"no subscriber {subscriber!r}; the subscribers are: {known or 'none'}", 2)
    client = connect(settings)
    envelope = attempt(
        lambda: _envelope(client, StoredEnvelopes(settings.effective_store_url), message)
    )
    if envelope is None:
        fail(f"no stored message {message} (unknown, or older than the retention)", 2)
    if envelope.bundle is None:
        fail(
            f"message {message} has no canonical form ({envelope.state.value}); nothing to send", 2
        )
    consents = ConsentLookup(client, settings.effective_store_url)
    print_json(attempt(lambda: explain(spec, envelope, consents, config.watcher.current)))


def _envelope(
    client: redis.Redis, stored: Callable[[str], Envelope | None], message: str
) -> Envelope | None:
    """The message's envelope from Redis, else from the message store, else None."""
    from broker import keys
    from broker.envelope import Envelope
    from broker.errors import BrokerError

    raw = client.get(keys.envelope(message))
    if raw is not None:
        return Envelope.unsealed(raw, message)
    try:
        return stored(message)
    except BrokerError:
        return None


def _registry(settings: Settings) -> ConsentRegistry:
    from broker.errors import BrokerError
    from broker.store import ConsentRegistry, upgrade
    from broker.store import connect as connect_store

    client = connect(settings)
    try:
        engine: sqlalchemy.Engine = connect_store(settings.effective_store_url, create=True)
        upgrade(engine)
    except BrokerError as exc:
        fail(str(exc))
    return ConsentRegistry(engine, client)


def _epoch(value: str | None, option: str) -> float | None:
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        fail(f"{option} {value!r} is not an ISO 8601 date or time", 2)
    return moment.astimezone().timestamp() if moment.tzinfo is None else moment.timestamp()


@consent_app.command("add")
def consent_add(
    system: Annotated[str, typer.Option("--system", help="The identifier's system (URI).")],
    value: Annotated[str, typer.Option("--value", help="The identifier's value (e.g. a CIN).")],
    action: Annotated[str, typer.Option("--action", help="block or restrict.")],
    why: WhyOpt,
    subscriber: Annotated[
        str | None, typer.Option("--subscriber", help="One subscriber (default: all).")
    ] = None,
    valid_from: Annotated[str | None, typer.Option("--from", help="Start (ISO 8601).")] = None,
    valid_until: Annotated[str | None, typer.Option("--until", help="End (ISO 8601).")] = None,
    by: ByOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Record a patient's block or restriction of sharing."""
    reason, who = why_given(why), who_acts(by)
    if action not in ("block", "restrict"):
        fail(f"--action {action!r}: expected block or restrict", 2)
    start, end = _epoch(valid_from, "--from"), _epoch(valid_until, "--until")
    registry = _registry(ops_settings())
    entry = attempt(
        lambda: registry.add(
            system=system,
            value=value,
            action=action,
            reason=reason,
            who=who,
            subscriber=subscriber,
            valid_from=start,
            valid_until=end,
        )
    )
    if as_json:
        print_json(entry.public())
    else:
        typer.echo(f"consent {entry.id} recorded ({entry.action}, {entry.subscriber or 'all'})")


@consent_app.command("list")
def consent_list(
    system: Annotated[str | None, typer.Option("--system")] = None,
    value: Annotated[str | None, typer.Option("--value")] = None,
    subscriber: Annotated[str | None, typer.Option("--subscriber")] = None,
    revoked: Annotated[bool, typer.Option("--revoked", help="Include revoked ones.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """List the consents (active ones unless --revoked), newest first."""
    registry = _registry(ops_settings())
    found = attempt(
        lambda: registry.list(system=system, value=value, subscriber=subscriber, revoked=revoked)
    )
    if as_json:
        print_json([c.public() for c in found])
        return
    for entry in found:
        state = " (revoked)" if entry.revoked_at else ""
        typer.echo(
            f"{entry.id}  {entry.action:8}  {entry.subscriber or 'all':20}  {entry.system}  "
            f"by {entry.who}{state}"
        )


@consent_app.command("revoke")
def consent_revoke(
    consent_id: Annotated[str, typer.Argument(help="The consent's id.")],
    by: ByOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Revoke a consent (it is kept, with who revoked it and when)."""
    who = who_acts(by)
    registry = _registry(ops_settings())
    entry = attempt(lambda: registry.revoke(consent_id, who=who))
    if as_json:
        print_json(entry.public())
    else:
        typer.echo(f"consent {entry.id} revoked")
