"""``passerelle store [upgrade|purge]``: the message store's writer role and its upkeep.

``passerelle store`` alone runs the writer (a long-running role that ``serve`` supervises): it
brings the schema up to date, then moves ``pl:store`` and ``pl:rejected`` into the store until
SIGTERM. ``upgrade`` runs the migrations and nothing else; ``purge`` deletes what is older than
the retention settings, the audit trail's oldest entries included (it then anchors the chain's
new head, the ``audit.pruned`` entry, as the writer would: in Redis when it answers, and in the
anchors' file).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import typer

from broker.cli._common import DataDirOpt, fail, load_settings, log_as_configured, print_json
from broker.gctuning import tune_gc

if TYPE_CHECKING:
    import sqlalchemy

    from broker.settings import Settings

__all__ = ["NICENESS", "store_app"]

NICENESS = 10
"""How much the writer lowers its CPU priority (``os.nice``): it is never on the ACK path.

It orders the writer behind the processes of its own scheduling group only. Under ``serve``
each role leads its own session, and where Linux's autogroups apply (processes outside a CPU
cgroup) every session is a group with an equal share, so there it changes nothing; setting the
writer's autogroup to nice 19 instead measured ACK p99 at ~266 msg/s 8.2 -> 15.6 ms, so that is
not done (docs/performance.md, 2026-12-05)."""
store_app = typer.Typer(
    name="store",
    help="Run the message store's writer (no subcommand), upgrade its schema, purge it.",
    invoke_without_command=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _upgraded(settings: Settings) -> sqlalchemy.Engine:
    from broker.errors import BrokerError
    from broker.store import connect, upgrade

    try:
        engine = connect(settings.effective_store_url, create=True)
        upgrade(engine)
    except BrokerError as exc:
        fail(str(exc))
    return engine


@store_app.callback()
def run(ctx: typer.Context, data_dir: DataDirOpt = None) -> None:
    """Run the writer: upgrade the schema, then store every record as it comes, until stopped."""
    if ctx.invoked_subcommand is not None:
        return
    import os
    import signal

    import redis
    import sqlalchemy as sa

    from broker.filemodes import private_process
    from broker.log import get_logger
    from broker.store import StoreWriter

    private_process()  # the SQLite file and its -wal and -shm: owner-only
    settings = load_settings(data_dir=data_dir)
    log_as_configured(settings)
    engine = _upgraded(settings)
    # Behind the message path for the CPU where the roles share a scheduling group (a
    # container's cgroup): under saturation the writer falls behind (its records wait in
    # pl:store) rather than taking cores from the listeners and workers. See NICENESS.
    os.nice(NICENESS)
    tune_gc()  # a batch's parsed envelopes made collections a quarter of the writer's CPU
    stopping: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        stopping.append(signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    client = redis.Redis.from_url(settings.effective_redis_url, socket_timeout=30)
    log = get_logger("broker.store")
    log.info("store.started", url=engine.url.render_as_string(hide_password=True))
    while not stopping:
        try:
            StoreWriter(client, engine, settings).run(lambda: bool(stopping))
        except (redis.RedisError, OSError) as exc:
            # Redis restarting (serve restarts it): wait and read on; nothing is lost.
            log.warning("store.redis_unavailable", error=type(exc).__name__)
            signal.sigtimedwait([signal.SIGTERM, signal.SIGINT], 1)
        except sa.exc.DBAPIError as exc:
            # The database away: the batch was not acknowledged, it is read again.
            log.error("store.database_unavailable", error=type(exc.orig).__name__)
            signal.sigtimedwait([signal.SIGTERM, signal.SIGINT], 5)
    log.info("store.stopped")
    engine.dispose()


@store_app.command()
def upgrade(data_dir: DataDirOpt = None) -> None:
    """Bring the store's schema to this version's (idempotent)."""
    from broker.store import current_revision

    settings = load_settings(data_dir=data_dir)
    engine = _upgraded(settings)
    typer.echo(f"the message store is at revision {current_revision(engine)}")


def _anchor(settings: Settings, engine: sqlalchemy.Engine) -> None:
    """The chain's head after a prune, to Redis (when it answers) and to the anchors' file."""
    import redis

    from broker.audit.anchor import ANCHOR_FILE, AnchorFile, queue_head
    from broker.store.ledger import head

    with engine.connect() as connection:
        newest = head(connection)
    if newest is None:
        return
    client = redis.Redis.from_url(
        settings.effective_redis_url, socket_timeout=5, socket_connect_timeout=2
    )
    try:
        pipe = client.pipeline(transaction=True)
        queue_head(pipe, newest[0], newest[1], time.time())
        pipe.execute()
    except redis.RedisError:
        typer.echo("note: the broker's Redis did not answer; the new head is in the file", err=True)
    anchors = AnchorFile(settings.data_dir / ANCHOR_FILE)
    anchors.note(*newest)
    anchors.flush()


@store_app.command()
def purge(data_dir: DataDirOpt = None, as_json: bool = typer.Option(False, "--json")) -> None:
    """Delete messages, attempts, actions and audit entries older than their retention."""
    from broker.errors import BrokerError
    from broker.store import purge as run_purge

    settings = load_settings(data_dir=data_dir)
    engine = _upgraded(settings)
    try:
        purged = run_purge(engine, settings)
    except BrokerError as exc:
        fail(str(exc))
    if purged["audit"]:
        _anchor(settings, engine)
    if as_json:
        print_json(purged)
        return
    labels = {"audit": "audit entries"}
    said = (f"{count} {labels.get(kind, kind)}" for kind, count in purged.items())
    typer.echo(", ".join(said) + " purged")
