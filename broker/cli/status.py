"""``passerelle status``: the overview of the running system in the terminal, live.

The console's overview, in a terminal: the document ``GET /api/overview`` returns, built by the
same function (:func:`broker.ops.overview.overview`) from the running system's Redis and
registrations, rendered as tables. Per inbound adapter: transport, listener answering,
connected peers (MLLP; ``n/a`` for HTTP), received, last message, refusals by ACK code; per
subscriber: delivered, backlog with the parked messages, open dead letters, partitions retrying
and the next retry, age of the oldest undelivered message, p50/p95/p99 end-to-end latency; Redis, the workers answering a Celery ping and backpressure. It refreshes
until Ctrl-C; ``--once`` prints one frame, ``--json`` the document itself.

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
    from broker.mapping.reload import RejectedReload
    from broker.ops.processes import WorkerPing
    from broker.settings import Settings

__all__ = ["read_status", "render", "status"]

_PING_TIMEOUT_S = 0.5
_PING_TTL_S = 5.0
"""A frame every 2 s: the workers are asked again after this many seconds."""


def worker_ping(settings: Settings) -> WorkerPing:
    """The Celery workers answering, asked as the API asks them (:class:`WorkerPing`)."""
    from broker.ops.processes import WorkerPing
    from broker.worker.celery_app import create_celery

    celery = create_celery(settings)
    return WorkerPing(lambda: celery.control.ping(timeout=_PING_TIMEOUT_S), ttl_s=_PING_TTL_S)


def mappings_on_disk(settings: Settings) -> tuple[list[str], RejectedReload | None]:
    """The mapping set the running system loads from ``settings.mapping_roots``, or the
    reason it would refuse it (as its watcher records a rejected reload)."""
    from broker.errors import BrokerError, SpecError
    from broker.mapping.loader import MappingSet
    from broker.mapping.reload import RejectedReload
    from broker.ops.overview import mapping_refs

    try:
        return mapping_refs(MappingSet.load(settings.mapping_roots)), None
    except SpecError as exc:
        return [], RejectedReload(time.time(), exc.file, exc.line, exc.reason)
    except BrokerError as exc:
        return [], RejectedReload(time.time(), None, None, str(exc))


def read_status(
    client: redis.Redis,
    settings: Settings,
    adapters: list[AdapterSpec],
    *,
    workers: WorkerPing | None = None,
    mappings: tuple[list[str], RejectedReload | None] = ([], None),
) -> dict[str, Any]:
    """One reading: :func:`broker.ops.overview.overview`, as ``GET /api/overview`` reads it."""
    from broker.ops.overview import api_address, overview

    in_force, rejected = mappings
    return overview(
        client,
        settings,
        adapters=adapters,
        mappings=in_force,
        rejected_reload=rejected,
        workers=workers,
        api=api_address(settings),
    )


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _since(epoch: float | None, now: float) -> str:
    if epoch is None:
        return "-"
    return f"{_age(max(0.0, now - epoch))} ago"


def _peers(row: dict[str, Any]) -> str:
    if row["transport"] == "http":
        return "n/a"
    return "-" if row["peers"] is None else str(row["peers"])


def _latency(value: dict[str, Any] | None) -> str:
    """``p50/p95/p99`` in one unit (``18/24/31 ms``, ``0.4/2.5/9.8 s``); ``-`` before the
    first delivery."""
    if value is None:
        return "-"
    found = [value["p50"], value["p95"], value["p99"]]
    if max(found) < 1:
        return "/".join(f"{v * 1000:.0f}" for v in found) + " ms"
    return "/".join(f"{v:.1f}" for v in found) + " s"


def _up(value: bool | None) -> str:
    return {True: "[green]up[/]", False: "[red]DOWN[/]", None: "-"}[value]


def render(document: dict[str, Any], api_url: str) -> RenderableType:
    """One frame: a header line and the inbound and subscriber tables."""
    from datetime import UTC, datetime

    from rich.console import Group
    from rich.table import Table

    at = document["at"]
    ping = document["processes"]["workers"]
    workers = None if ping is None else ping["names"]
    workers_text = (
        "[yellow]workers unknown[/]"
        if workers is None
        else f"workers {len(workers)} answering"
        if workers
        else "[red]no worker answers[/]"
    )
    stamp = datetime.fromtimestamp(at, UTC).isoformat(timespec="seconds")
    redis_state = document["redis"]
    pressure = document["backpressure"]
    header = (
        f"[bold]Passerelle[/] {api_url}  Redis "
        + ("[green]ok[/]" if redis_state["ready"] else "[red]DOWN[/]")
        + f"  {workers_text}  backpressure "
        + (f"[red]ON ({pressure['reason']})[/]" if pressure["on"] else "off")
        + f"  at {stamp}"
    )
    sources = Table(title="Inbound adapters", title_justify="left", expand=False)
    for column in (
        "adapter",
        "transport",
        "listener",
        "peers",
        "received",
        "last message",
        "refused",
    ):
        sources.add_column(column, justify="right" if column in ("peers", "received") else "left")
    for row in document["inbound"]:
        refused = ", ".join(f"{code} {n}" for code, n in sorted(row["refused"].items())) or "-"
        sources.add_row(
            row["id"],
            row["transport"] or "-",
            _up(row["listener_up"]),
            _peers(row),
            str(row["received"]),
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
        "latency p50/95/99",
    ):
        subscribers.add_column(column, justify="left" if column == "subscriber" else "right")
    for row in document["subscribers"]:
        retrying = (
            f"{row['retrying']} (next in {row['next_retry_in_s']} s)" if row["retrying"] else "-"
        )
        opened = row["dead_letters_open"]
        subscribers.add_row(
            row["id"],
            str(row["delivered"]),
            str(row["backlog"]),
            str(row["parked"]),
            f"[red]{opened}[/]" if opened else "0",
            retrying,
            _age(row["oldest_age_s"]),
            _latency(row["latency_s"]),
        )
    footer = (
        f"journal: received {document['received']}, waiting {document['pipeline']['backlog']}, "
        f"refused at the edge {document['rejected']}, quarantined {document['quarantine']}"
    )
    mappings = document["mappings"]
    lines = [footer, f"mappings in force: {len(mappings['in_force'])} files"]
    rejected = mappings["rejected_reload"]
    if rejected is not None:
        where = ":".join(str(x) for x in (rejected["file"], rejected["line"]) if x is not None)
        lines.append(f"[red]mappings refused[/]: {where} {rejected['reason']}".rstrip())
    return Group(header, sources, subscribers, *lines)


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
    workers = worker_ping(settings)
    mappings = mappings_on_disk(settings)

    def reading() -> dict[str, Any]:
        try:
            return read_status(client, settings, adapters, workers=workers, mappings=mappings)
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
