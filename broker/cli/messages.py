"""``passerelle messages search|show|trace``: the message store, from the command line.

They read the store the settings name (``PASSERELLE_STORE_URL``, by default SQLite in the data
directory) and never write to it. An unknown message is exit 1 with one line.

Reads are audited (``broker.audit``, through the broker's Redis): ``trace`` shows the raw and
canonical message only with ``--reason`` (a real one, ``broker.audit.reasons``), and then only
once the view is recorded (no Redis, no content); searches and metadata views are recorded
when Redis answers.

Exit codes: 0 done, 1 refused or failed (one line on stderr), 2 usage errors.
"""

from __future__ import annotations

import json
from datetime import datetime, time, timedelta
from typing import TYPE_CHECKING, Annotated, Any

import typer

from broker.cli._common import (
    DataDirOpt,
    content_reason,
    fail,
    load_settings,
    open_store,
    print_json,
)

if TYPE_CHECKING:
    import sqlalchemy

__all__ = ["messages_app", "parse_time"]

messages_app = typer.Typer(
    name="messages",
    help="Search the message store, show a message, trace where it went.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

IdArg = Annotated[str, typer.Argument(help="The message (envelope) id, as `search` shows it.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]


def parse_time(value: str, option: str) -> float:
    """Epoch seconds of ``today``, ``yesterday`` or an ISO 8601 time (no offset: local time)."""
    today = datetime.combine(datetime.now().date(), time()).astimezone()
    if value == "today":
        return today.timestamp()
    if value == "yesterday":
        return (today - timedelta(days=1)).timestamp()
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        fail(f"{option} {value!r} is not a time: give today, yesterday or ISO 8601", 2)
    return moment.astimezone().timestamp() if moment.tzinfo is None else moment.timestamp()


def _record(data_dir: Any, action: str, *, required: bool, **values: Any) -> None:
    """Send an audit event through the broker's Redis; exit 1 if ``required`` and it cannot."""
    import redis

    from broker.audit import record
    from broker.cli.ops import who_acts

    settings = load_settings(data_dir=data_dir)
    client = redis.Redis.from_url(
        settings.effective_redis_url, socket_timeout=5, socket_connect_timeout=2
    )
    try:
        record(client, action, who=who_acts(None), **values)
    except redis.RedisError as exc:
        if required:
            fail(f"the view cannot be recorded in the audit trail ({exc}); nothing is shown")
    finally:
        client.close()


def _engine(data_dir: Any) -> sqlalchemy.Engine:
    """The store the settings name, its schema checked (exit 1 with one line otherwise)."""
    return open_store(data_dir)[1]


def search(
    control_id: Annotated[str | None, typer.Option("--control-id", help="MSH-10.")] = None,
    envelope_id: Annotated[str | None, typer.Option("--id", help="The envelope id.")] = None,
    patient: Annotated[
        str | None,
        typer.Option("--patient", help="A patient identifier value (CIN, IPP…), exact."),
    ] = None,
    kind: Annotated[
        str | None, typer.Option("--kind", help="With --patient: only this kind (CIN, IPP).")
    ] = None,
    adapter: Annotated[str | None, typer.Option("--adapter", help="Inbound adapter.")] = None,
    subscriber: Annotated[str | None, typer.Option("--subscriber", help="Subscriber.")] = None,
    event: Annotated[str | None, typer.Option("--event", help="ADT^A01, ORU^R01…")] = None,
    state: Annotated[
        str | None,
        typer.Option(
            "--state",
            help="delivered, retrying, parked, dead_lettered, discarded, replayed, filtered, "
            "queued (per subscriber), rejected or failed.",
        ),
    ] = None,
    since: Annotated[
        str | None, typer.Option("--since", help="Received from: today, yesterday or ISO 8601.")
    ] = None,
    until: Annotated[str | None, typer.Option("--until", help="Received before.")] = None,
    text: Annotated[
        str | None,
        typer.Option("--text", help="Text in a reason or a receiver's reply (any case)."),
    ] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=500, help="Page size.")] = 50,
    before: Annotated[
        str | None, typer.Option("--before", help="The cursor a previous page printed.")
    ] = None,
    as_json: JsonOpt = False,
    data_dir: DataDirOpt = None,
) -> None:
    """Messages matching every filter given, newest first."""
    from broker.store import Search
    from broker.store import search as run_search

    query = Search(
        control_id=control_id,
        envelope_id=envelope_id,
        identifier=patient,
        identifier_kind=kind,
        adapter=adapter,
        subscriber=subscriber,
        event=event,
        state=state,
        since=parse_time(since, "--since") if since else None,
        until=parse_time(until, "--until") if until else None,
        text=text,
        limit=limit,
        before=before,
    )
    if kind is not None and patient is None:
        fail("--kind needs --patient", 2)
    try:
        page = run_search(_engine(data_dir), query)
    except ValueError as exc:
        fail(str(exc), 2)
    used = [
        name
        for name, value in (
            ("control_id", control_id),
            ("id", envelope_id),
            ("kind", kind),
            ("adapter", adapter),
            ("subscriber", subscriber),
            ("event", event),
            ("state", state),
            ("since", since),
            ("until", until),
            ("text", text),
        )
        if value
    ]
    _record(
        data_dir,
        "message.searched",
        required=False,
        details={"filters": used, "results": len(page.items), "by_identifier": bool(patient)},
    )
    if as_json:
        print_json(page.items)
        if page.next:  # on stderr: stdout stays one JSON list
            typer.echo(f"more: --before {page.next}", err=True)
        return
    for item in page.items:
        states = ", ".join(f"{d['subscriber']}={d['state']}" for d in item["deliveries"])
        typer.echo(
            f"{item['received_at'][:19]}  {item['id']}  {item['adapter']}  "
            f"{item['event'] or '-'}  {item['control_id'] or '-'}  {item['state']}  {states}"
        )
    if page.next:
        typer.echo(f"more: --before {page.next}")


def _found(found: dict[str, Any] | None, message_id: str) -> dict[str, Any]:
    """What the store found, or exit 1 with one line."""
    if found is None:
        fail(f"no message {message_id} in the store (unknown, not written yet, or purged)")
    return found


def show(message_id: IdArg, as_json: JsonOpt = False, data_dir: DataDirOpt = None) -> None:
    """One message: where it came from, its patient identifiers, each subscriber's state."""
    from broker.store import show as run_show

    found = _found(run_show(_engine(data_dir), message_id), message_id)
    if as_json:
        print_json(found)
        return
    for name in ("id", "received_at", "adapter", "peer", "control_id", "event", "version"):
        typer.echo(f"{name}: {found[name]}")
    typer.echo(f"state: {found['state']}" + (f" ({found['reason']})" if found["reason"] else ""))
    typer.echo(f"ack sent: {found['ack_code'] or '-'}")
    for identifier in found["identifiers"]:
        typer.echo(f"identifier: {identifier['kind']} {identifier['value']}")
    for delivery in found["deliveries"]:
        why = f" ({delivery['reason']})" if delivery["reason"] else ""
        typer.echo(
            f"{delivery['subscriber']}: {delivery['state']}, {delivery['attempts']} attempt(s){why}"
        )


def trace(
    message_id: IdArg,
    reason: Annotated[
        str | None,
        typer.Option(
            "--reason",
            help="Why you read the content: shows the raw and canonical message; audited.",
        ),
    ] = None,
    as_json: JsonOpt = False,
    data_dir: DataDirOpt = None,
) -> None:
    """Where one message went: raw → canonical → every attempt per subscriber, and actions."""
    from broker.store import trace as run_trace

    why = content_reason(reason)
    found = _found(run_trace(_engine(data_dir), message_id), message_id)
    _record(
        data_dir,
        "content.viewed" if why else "message.viewed",
        required=why is not None,
        why=why or "",
        details={"view": "trace"},
        envelope=message_id,
    )
    if why is None:
        found["raw"] = found["canonical"] = found["edit"] = None
        found["content"] = "withheld: give --reason to see the raw and canonical message (audited)"
    if as_json:
        print_json(found)
        return
    typer.echo(
        f"{found['received_at']}  received {found['event'] or '?'} {found['control_id'] or '?'} "
        f"from {found['adapter']} ({found['peer'] or '?'}); answered {found['ack_code'] or '-'}"
    )
    if found["raw"] is None:
        typer.echo(f"content: {found['content']}")
    else:
        typer.echo(f"raw: {len(found['raw'] or '')} characters")
    canonical = found["canonical"]
    entries = len(canonical.get("entry") or []) if canonical else 0
    typer.echo(f"canonical: {entries} resources; state {found['state']}")
    if found["reason"]:
        typer.echo(f"  reason: {found['reason']}")
    for delivery in found["deliveries"]:
        typer.echo(f"→ {delivery['subscriber']}: {delivery['state']}")
        if delivery.get("reason"):
            typer.echo(f"    reason: {delivery['reason']}")
        for attempt in delivery["attempt_log"]:
            said = attempt["reply"] or attempt["error"] or ""
            typer.echo(
                f"    {attempt['at']}  {attempt['outcome']}  {attempt['duration_ms']} ms  "
                f"{json.dumps(said[:200], ensure_ascii=False)}"
            )
    for action in found["actions"]:
        typer.echo(
            f"{action['at']}  {action['action']} for {action['subscriber']} by {action['who']}: "
            f"{action['why']}"
        )


for _command in (search, show, trace):
    messages_app.command()(_command)
