"""``passerelle status``: the overview of the running system in the terminal, live.

Per inbound adapter (received, refused by ACK code, last message, listener answering), per
subscriber (delivered, backlog with the parked messages, open dead letters, retrying, age of
the oldest undelivered message) and the workers answering: ``broker.ops.overview``, which reads
what ``GET /api/queues`` reads, plus the open dead letters and a Celery ping. It refreshes
until Ctrl-C; ``--once`` prints one frame, ``--json`` one JSON document.

Exit codes: 0 shown, 1 the broker's Redis does not answer, 2 usage errors.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Annotated, Any

import typer

from broker.cli._common import fail, print_json
from broker.cli.ops import connect, ops_settings, registered

if TYPE_CHECKING:
    import redis
    from rich.console import RenderableType

    from broker.adapters.spec import AdapterSpec
    from broker.settings import Settings

__all__ = ["read_status", "render", "status"]

_PING_TIMEOUT_S = 0.5


def _workers(settings: Settings) -> list[str] | None:
    """The Celery workers that answer a ping, ``None`` when the ping itself failed."""
    from broker.worker.celery_app import create_celery

    try:
        replies = create_celery(settings).control.ping(timeout=_PING_TIMEOUT_S) or []
    # Whatever kombu raises on a broker it cannot reach: the frame says "unknown", not a trace.
    except Exception:
        return None
    return sorted(name for reply in replies for name in reply)


def read_status(
    client: redis.Redis, settings: Settings, adapters: list[AdapterSpec], *, workers: bool = True
) -> dict[str, Any]:
    """One reading: ``broker.ops.overview`` with the open dead letters and the workers."""
    from broker import running
    from broker.delivery.dead_letter import DeadLetterStore
    from broker.ops.overview import overview

    document = overview(client, settings, adapters, api_url=running.api_url(settings))
    store = DeadLetterStore(client)
    for subscriber in document["subscribers"]:
        opened = store.find(subscriber["id"], status="open", limit=1_000_000)
        subscriber["dead_letters_open"] = len(opened)
    document["workers"] = _workers(settings) if workers else None
    return document


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _since(iso: str | None, now: str) -> str:
    from datetime import datetime

    if iso is None:
        return "-"
    delta = (datetime.fromisoformat(now) - datetime.fromisoformat(iso)).total_seconds()
    return f"{_age(max(0.0, delta))} ago"


def _up(value: bool | None) -> str:
    return {True: "[green]up[/]", False: "[red]DOWN[/]", None: "-"}[value]


def render(document: dict[str, Any], api_url: str) -> RenderableType:
    """One frame: a header line and the inbound and subscriber tables."""
    from rich.console import Group
    from rich.table import Table

    at = document["at"]
    workers = document.get("workers")
    workers_text = (
        "[yellow]workers unknown[/]"
        if workers is None
        else f"workers {len(workers)} answering"
        if workers
        else "[red]no worker answers[/]"
    )
    redis_state = document["redis"]
    pressure = document["backpressure"]
    header = (
        f"[bold]Passerelle[/] {api_url}  Redis "
        + ("[green]ok[/]" if redis_state["ready"] else "[red]DOWN[/]")
        + f"  {workers_text}  backpressure "
        + (f"[red]ON ({pressure['reason']})[/]" if pressure["on"] else "off")
        + f"  at {at}"
    )
    sources = Table(title="Inbound adapters", title_justify="left", expand=False)
    for column in ("adapter", "transport", "listener", "received", "last message", "refused"):
        sources.add_column(column, justify="right" if column == "received" else "left")
    for row in document["inbound"]:
        refused = ", ".join(f"{code} {n}" for code, n in sorted(row["refused"].items())) or "-"
        received = "-" if row["received"] is None else str(row["received"])
        sources.add_row(
            row["id"],
            row["transport"],
            _up(row["listener_up"]),
            received,
            _since(row["last_message_at"], at),
            refused,
        )
    subscribers = Table(title="Subscribers", title_justify="left", expand=False)
    for column in (
        "subscriber",
        "delivered",
        "backlog",
        "parked",
        "dead letters open",
        "retrying",
        "oldest waiting",
    ):
        subscribers.add_column(column, justify="left" if column == "subscriber" else "right")
    for row in document["subscribers"]:
        retry = row["retrying"]
        retrying = (
            f"{retry['partitions']} (next in {retry['next_retry_in_s']} s)"
            if retry["partitions"]
            else "-"
        )
        opened = row.get("dead_letters_open", 0)
        subscribers.add_row(
            row["id"],
            str(row["delivered"]),
            str(row["backlog"]),
            str(row["parked"]),
            f"[red]{opened}[/]" if opened else "0",
            retrying,
            _age(row["oldest_age_s"]),
        )
    journal = document["journal"]
    footer = (
        f"journal: received {journal['received']}, waiting {journal['backlog']}, "
        f"refused at the edge {journal['rejected']}, quarantined {journal['quarantine']}"
    )
    return Group(header, sources, subscribers, footer)


def status(
    once: Annotated[bool, typer.Option("--once", help="Print one frame and exit.")] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON document and exit.")
    ] = False,
    interval: Annotated[
        float, typer.Option("--interval", min=0.5, help="Seconds between refreshes.")
    ] = 2.0,
) -> None:
    """The running system at a glance: inbound adapters, subscribers, workers (live)."""
    import redis as redis_errors
    from rich.console import Console
    from rich.live import Live

    from broker import running

    settings = ops_settings()
    client = connect(settings)
    adapters = registered(settings)
    api_url = running.api_url(settings)

    def reading() -> dict[str, Any]:
        try:
            return read_status(client, settings, adapters)
        except redis_errors.RedisError as exc:
            fail(f"the broker's Redis stopped answering: {type(exc).__name__}")

    if as_json:
        print_json(reading())
        return
    console = Console(width=None if Console().is_terminal else 120)
    if once or not console.is_terminal:
        console.print(render(reading(), api_url))
        return
    try:
        with Live(render(reading(), api_url), console=console, auto_refresh=False) as live:
            while True:
                time.sleep(interval)
                live.update(render(reading(), api_url), refresh=True)
    except KeyboardInterrupt:
        return
