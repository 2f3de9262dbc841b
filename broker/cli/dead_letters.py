"""``passerelle dead-letters list|show|replay|discard|replay-all``: a subscriber's dead letters.

They work on a running broker's Redis, as ``passerelle replay`` does (``broker.cli.ops``); every
action is recorded with who and why, and every view is audited: ``show`` prints a dead letter's
envelope and patient only with ``--reason`` (a real one, ``broker.audit.reasons``), recorded
with the view before anything is printed.

Exit codes: 0 done, 1 refused or failed (one line on stderr), 2 usage errors.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, cast

import typer

from broker.cli._common import content_reason, fail, print_json
from broker.cli.ops import (
    ByOpt,
    WhyOpt,
    attempt,
    check_subscriber,
    connect,
    operations,
    ops_settings,
    who_acts,
    why_given,
)

if TYPE_CHECKING:
    import redis

    from broker.settings import Settings

__all__ = ["dead_letters_app"]

REASON_CHARS = 60
"""The table cuts reasons to this many characters (``--json`` has them whole)."""
STATUSES = ("open", "replaying", "delivered", "discarded", "all")

dead_letters_app = typer.Typer(
    name="dead-letters",
    help="List, show, replay (as they were or corrected) and discard dead letters.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

SubscriberArg = Annotated[str, typer.Argument(help="The outbound adapter (subscriber) id.")]
DeadIdArg = Annotated[str, typer.Argument(help="The dead letter's id (see `list`).")]
SinceOpt = Annotated[
    str | None,
    typer.Option(
        "--since", help="Dead-lettered at or after this ISO 8601 time (no offset: local time)."
    ),
]
UntilOpt = Annotated[
    str | None,
    typer.Option(
        "--until", help="Dead-lettered at or before this ISO 8601 time (no offset: local time)."
    ),
]
TextOpt = Annotated[
    str | None, typer.Option("--text", help="Text in the reason or a reply (any case).")
]


def _epoch(value: str | None, option: str) -> float | None:
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        fail(f"{option} {value!r} is not an ISO 8601 time (2024-05-01T08:30 or with +01:00)", 2)
    # A time without an offset is the operator's local time.
    return moment.astimezone().timestamp() if moment.tzinfo is None else moment.timestamp()


def _when(epoch: float) -> str:
    return datetime.fromtimestamp(epoch).astimezone().isoformat(timespec="seconds")


@dead_letters_app.command("list")
def list_command(
    subscriber: SubscriberArg,
    status: Annotated[
        str, typer.Option("--status", help="open, replaying, delivered, discarded or all.")
    ] = "open",
    since: SinceOpt = None,
    until: UntilOpt = None,
    text: TextOpt = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="At most this many.")] = 100,
    as_json: Annotated[
        bool, typer.Option("--json", help="JSON summaries instead of a table.")
    ] = False,
) -> None:
    """A subscriber's dead letters, newest first (no patient data: use `show` for that)."""
    from broker.api.dead_letters import summary
    from broker.delivery.dead_letter import DeadLetterStore

    if status not in STATUSES:
        fail(f"--status must be one of {', '.join(STATUSES)}, not {status!r}", 2)
    start, end = _epoch(since, "--since"), _epoch(until, "--until")
    settings = ops_settings()
    client = connect(settings)
    check_subscriber(settings, client, subscriber)
    store = DeadLetterStore(client)
    records = attempt(
        lambda: store.find(
            subscriber,
            status=None if status == "all" else status,  # type: ignore[arg-type]
            since=start,
            until=end,
            text=text or None,
            limit=limit,
        )
    )
    summaries = [summary(r) for r in records]
    if as_json:
        print_json(summaries)
        return
    if not summaries:
        typer.echo(f"no {'' if status == 'all' else status + ' '}dead letters for {subscriber}")
        return
    rows = [("ID", "DEAD-LETTERED AT", "STATUS", "REASON")]
    for s in summaries:
        reason = s["reason"].replace("\n", " ")
        if len(reason) > REASON_CHARS:
            reason = reason[: REASON_CHARS - 1] + "…"
        rows.append((s["id"], _when(s["dead_lettered_at"]), s["status"], reason))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        typer.echo("  ".join([*(c.ljust(w) for c, w in zip(row, widths, strict=False)), row[3]]))


_WITHHELD = "withheld: give --reason to see the envelope (the canonical Bundle) and the patient"
"""``content`` of a dead letter shown without ``--reason``."""


@dead_letters_app.command("show")
def show_command(
    subscriber: SubscriberArg,
    dead_id: DeadIdArg,
    reason: Annotated[
        str | None,
        typer.Option(
            "--reason",
            help="Why you read the content: shows the envelope and the patient; audited.",
        ),
    ] = None,
    by: ByOpt = None,
) -> None:
    """One dead letter as JSON: attempts, status, history; its envelope and patient only with
    --reason. The view is audited either way."""
    from broker.api.dead_letters import detail
    from broker.delivery.dead_letter import DeadLetterStore

    why, who = content_reason(reason), who_acts(by)
    settings = ops_settings()
    client = connect(settings)
    check_subscriber(settings, client, subscriber)
    store = DeadLetterStore(client)
    record = attempt(lambda: store.get(subscriber, dead_id))
    if record is None:
        fail(f"no dead letter {dead_id} for subscriber {subscriber}")
    attempt(lambda: store.viewed(record, who=who, why=why))
    print_json(detail(record, shown=why is not None, how=_WITHHELD))


@dead_letters_app.command("replay")
def replay_dead_letter(
    subscriber: SubscriberArg,
    dead_id: DeadIdArg,
    why: WhyOpt,
    payload: Annotated[
        Path | None,
        typer.Option(
            "--payload",
            exists=True,
            dir_okay=False,
            help="A corrected message: FHIR message Bundle JSON, or HL7 v2 (mapped as inbound).",
        ),
    ] = None,
    by: ByOpt = None,
) -> None:
    """Send a dead letter again as it was, or (``--payload``) an edited copy as a new message
    linked to it (``--why`` then a real reason); a held patient is then released."""
    reason, who = why_given(why), who_acts(by)
    settings = ops_settings()
    client = connect(settings)
    check_subscriber(settings, client, subscriber)
    ops = operations(settings, client)
    corrected = None
    if payload is not None:
        corrected = attempt(lambda: _corrected(settings, client, subscriber, dead_id, payload))
    # The command line holds the store's and Redis's credentials: an administrator's tool.
    record = attempt(
        lambda: ops.replay(
            subscriber, dead_id, who=who, why=reason, corrected=corrected, identity_edit=True
        )
    )
    if corrected is not None:
        new = record["history"][-1]["edited_to"]
        typer.echo(f"dead letter {record['id']} of {subscriber} edited: new message {new} queued")
        return
    typer.echo(f"replaying dead letter {record['id']} of {subscriber}")


def _corrected(
    settings: Settings, client: redis.Redis, subscriber: str, dead_id: str, path: Path
) -> dict[str, Any]:
    """The corrected canonical Bundle from a FHIR Bundle JSON file or an HL7 v2 message."""
    from broker.delivery.dead_letter import DeadLetterStore

    try:
        raw = path.read_bytes()
    except OSError as exc:
        fail(f"cannot read {path}: {exc.strerror}")
    if raw.lstrip(b"\xef\xbb\xbf \t\r\n")[:1] == b"{":
        try:
            bundle = json.loads(raw.decode("utf-8-sig"))
        except ValueError as exc:
            fail(f"{path} is not valid JSON: {exc}")
        if not isinstance(bundle, dict):
            fail(f"{path} must hold one FHIR message Bundle (a JSON object)")
        return bundle
    record = DeadLetterStore(client).get(subscriber, dead_id)
    if record is None:
        fail(f"no dead letter {dead_id} for subscriber {subscriber}")
    return _map_hl7v2(settings, client, record, raw, path)


def _map_hl7v2(
    settings: Settings, client: redis.Redis, record: dict[str, Any], raw: bytes, path: Path
) -> dict[str, Any]:
    """Map a corrected HL7 v2 message exactly as the pipeline maps its inbound adapter's
    messages (``map_message``: the adapter's settings, the canonical check, its refusal of a
    malformed segment group); keep its control id."""
    from broker import keys
    from broker.config import load_config
    from broker.envelope import Envelope
    from broker.errors import BrokerError
    from broker.mapping import HL7V2, map_message, read_message
    from broker.parsing.hl7v2 import Message
    from broker.store import StoredEnvelopes

    stored = client.get(keys.envelope(record["envelope_id"]))
    kept: Envelope | None = None
    if stored is not None:
        kept = Envelope.unsealed(stored, record["envelope_id"])
    elif record.get("envelope"):
        kept = Envelope.model_validate(record["envelope"])
    else:
        try:
            kept = StoredEnvelopes(settings.effective_store_url)(record["envelope_id"])
        except BrokerError:
            kept = None
    if kept is None:
        fail(f"dead letter {record['id']} kept no envelope; send a FHIR Bundle instead")
    envelope = kept
    try:
        config = load_config(settings)
    except BrokerError as exc:
        fail(str(exc), every_line=True)
    adapter = config.adapters.get(envelope.source)
    inbound = adapter if adapter is not None and adapter.direction == "inbound" else None
    # A MessageError (unreadable, unmapped, refused by the canonical check) is attempt()'s line.
    message = cast(Message, read_message(raw, HL7V2, inbound.charset if inbound else "utf-8"))
    if envelope.control_id and message.control_id != envelope.control_id:
        fail(
            f"{path}: MSH-10 is {message.control_id!r} but the original's is "
            f"{envelope.control_id!r}; keep it so the replay stays idempotent"
        )
    result = map_message(
        message,
        config.mappings,
        source=envelope.source,
        envelope_id=envelope.id,
        received_at=envelope.received_at,
        settings=inbound,
    )
    if result.refused:
        fail(f"{path}: the corrected message is refused: {result.refused}")
    return result.bundle


@dead_letters_app.command("discard")
def discard_command(
    subscriber: SubscriberArg, dead_id: DeadIdArg, why: WhyOpt, by: ByOpt = None
) -> None:
    """Give a dead letter up for good; a held patient's later messages are then delivered."""
    reason, who = why_given(why), who_acts(by)
    settings = ops_settings()
    client = connect(settings)
    check_subscriber(settings, client, subscriber)
    ops = operations(settings, client)
    attempt(lambda: ops.discard(subscriber, dead_id, who=who, why=reason))
    typer.echo(f"discarded dead letter {dead_id} of {subscriber}")


@dead_letters_app.command("replay-all")
def replay_all_command(
    subscriber: SubscriberArg,
    why: WhyOpt,
    since: SinceOpt = None,
    until: UntilOpt = None,
    text: TextOpt = None,
    by: ByOpt = None,
) -> None:
    """Replay every open dead letter of a subscriber that matches the filter, oldest first."""
    reason, who = why_given(why), who_acts(by)
    start, end = _epoch(since, "--since"), _epoch(until, "--until")
    settings = ops_settings()
    client = connect(settings)
    check_subscriber(settings, client, subscriber)
    ops = operations(settings, client)
    outcome: tuple[list[str], dict[str, str]] = attempt(
        lambda: ops.replay_matching(
            subscriber, who=who, why=reason, since=start, until=end, text=text or None
        )
    )
    replayed, failed = outcome
    typer.echo(f"replaying {len(replayed)} dead letter(s) of {subscriber}")
    for dead_id in replayed:
        typer.echo(dead_id)
    for dead_id, problem in failed.items():
        typer.echo(f"not replayed {dead_id}: {problem}", err=True)
    if failed:
        raise typer.Exit(1)
