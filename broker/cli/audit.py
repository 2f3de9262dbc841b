"""``passerelle audit verify|export|show``: the audit trail, from the command line.

``verify`` walks the chain and checks its head against the anchors (Redis's, the anchors'
file), and its first entry against the prunes that vouch for the ones retention removed (each
listed: "entries 1–1200 pruned on DATE by retention (vouched by entry N)"); exit 0 intact, 1
with the first bad seq and why. ``export`` writes JSON or a FHIR R4
Bundle of AuditEvent resources to stdout; ``show`` lists entries. Verifying and exporting are
recorded in the trail when the broker's Redis answers.

Exit codes: 0 done (intact), 1 refused, failed or not intact (one line on stderr), 2 usage.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

from broker.cli._common import (
    DataDirOpt,
    fail,
    open_store,
    print_json,
)
from broker.cli.messages import parse_time

if TYPE_CHECKING:
    import redis
    import sqlalchemy

    from broker.settings import Settings

__all__ = ["audit_app"]

audit_app = typer.Typer(
    name="audit",
    help="Verify, read and export the audit trail.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

SinceOpt = Annotated[
    str | None, typer.Option("--since", help="From: today, yesterday or ISO 8601.")
]
UntilOpt = Annotated[
    str | None, typer.Option("--until", help="Before: today, yesterday or ISO 8601.")
]
ByOpt = Annotated[str | None, typer.Option("--by", help="Who does it (default: the OS user name).")]


def _open(data_dir: Any) -> tuple[Settings, sqlalchemy.Engine, bytes]:
    from broker.audit import load_key
    from broker.errors import BrokerError

    settings, engine = open_store(data_dir)
    try:
        key = load_key(settings)
    except BrokerError as exc:
        fail(str(exc))
    return settings, engine, key


def _redis(settings: Settings) -> redis.Redis | None:
    """The broker's Redis when it answers, else ``None`` (its anchor is then not checked)."""
    import redis as redis_lib

    client = redis_lib.Redis.from_url(
        settings.effective_redis_url, socket_timeout=5, socket_connect_timeout=2
    )
    try:
        client.ping()
    except redis_lib.RedisError:
        return None
    return client


def _who(by: str | None) -> str:
    from broker.cli.ops import who_acts

    return who_acts(by)


@audit_app.command("verify")
def verify_command(
    as_json: Annotated[bool, typer.Option("--json", help="Print the verdict as JSON.")] = False,
    by: ByOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Check every entry's link and the head against the anchors; exit 1 at the first fault."""
    from broker.audit import ANCHOR_FILE, read_anchors, record
    from broker.store.verify import verify

    settings, engine, key = _open(data_dir)
    client = _redis(settings)
    anchors = read_anchors(client, settings.data_dir / ANCHOR_FILE)
    verdict = verify(engine, key, anchors)
    if client is not None:
        record(
            client,
            "audit.verified",
            who=_who(by),
            details={"ok": verdict.ok, "head": verdict.head_seq, "first_bad": verdict.first_bad},
        )
    if as_json:
        print_json(verdict.as_dict())
    elif verdict.ok:
        where = ", ".join(verdict.anchors) or "no anchor found"
        first = f", from entry {verdict.first_seq}" if verdict.first_seq > 1 else ""
        typer.echo(
            f"intact: {verdict.entries} entries{first}, head {verdict.head_seq} (anchors: {where})"
        )
        for pruned in verdict.pruned:
            typer.echo(f"  {pruned}")
    if not verdict.ok:
        fail(f"not intact at entry {verdict.first_bad} ({verdict.problem}): {verdict.reason}")
    if client is None:
        typer.echo("note: the broker's Redis did not answer; its anchor was not checked", err=True)


def _query(**values: Any) -> Any:
    from broker.store.auditlog import AuditQuery

    since, until = values.pop("since"), values.pop("until")
    return AuditQuery(
        since=parse_time(since, "--since") if since else None,
        until=parse_time(until, "--until") if until else None,
        **values,
    )


@audit_app.command("export")
def export_command(
    format_: Annotated[
        str, typer.Option("--format", help="json, or fhir (a Bundle of AuditEvent resources).")
    ] = "json",
    since: SinceOpt = None,
    until: UntilOpt = None,
    why: Annotated[str, typer.Option("--why", help="Why; recorded in the trail.")] = "",
    by: ByOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """The entries of the period on stdout, as JSON or as FHIR R4 AuditEvent resources."""
    from broker.audit import record
    from broker.store.auditlog import entries

    if format_ not in ("json", "fhir"):
        fail(f"--format {format_!r}: give json or fhir", 2)
    settings, engine, _ = _open(data_dir)
    found = entries(engine, _query(since=since, until=until, limit=None))
    client = _redis(settings)
    if client is not None:
        details = {"format": format_, "entries": len(found)}
        record(client, "audit.exported", who=_who(by), why=why, details=details)
    if format_ == "fhir":
        from broker.audit.fhir import bundle

        print_json(bundle(found))
    else:
        print_json(found)


@audit_app.command("show")
def show_command(
    since: SinceOpt = None,
    until: UntilOpt = None,
    action: Annotated[
        str | None, typer.Option("--action", help="message.delivered, or a family: access.*")
    ] = None,
    actor: Annotated[str | None, typer.Option("--actor", help="Who acted.")] = None,
    envelope: Annotated[str | None, typer.Option("--envelope", help="A message id.")] = None,
    subscriber: Annotated[str | None, typer.Option("--subscriber", help="A subscriber.")] = None,
    patient: Annotated[
        str | None,
        typer.Option("--patient", help="An identity system|value, or an identifier value (CIN)."),
    ] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="At most this many.")] = 100,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    data_dir: DataDirOpt = None,
) -> None:
    """Entries matching every filter, oldest first."""
    from broker.audit import patient_ref
    from broker.store.auditlog import entries

    _, engine, key = _open(data_dir)
    query = _query(
        since=since,
        until=until,
        action=action,
        actor=actor,
        envelope=envelope,
        subscriber=subscriber,
        patient=patient_ref(key, patient) if patient else None,
        limit=limit,
    )
    found = entries(engine, query)
    if as_json:
        print_json(found)
        return
    for entry in found:
        targets = " ".join(f"{k}={v}" for k, v in sorted(entry["targets"].items()))
        reason = f"  why: {entry['reason']}" if entry["reason"] else ""
        typer.echo(
            f"{entry['seq']:>7}  {entry['time'][:19]}  {entry['actor']}  {entry['action']}  "
            f"{targets}{reason}"
        )
