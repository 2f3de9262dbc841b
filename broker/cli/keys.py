"""``passerelle keys [status|rotate|reencrypt|retire]``: the data keys that seal stored bodies.

Rotation in four steps (docs/security.md, "Data at rest"): ``rotate`` puts a new current key
first in the key file; restart the system so every process seals with it; ``reencrypt`` moves
the store's and Redis's bodies to it (resumable); once ``status`` shows no journal or rejected
entry left on the old key, ``retire`` removes it from the file.
"""

from __future__ import annotations

import typer

from broker.cli._common import DataDirOpt, fail, load_settings, print_json

__all__ = ["keys_app"]

keys_app = typer.Typer(
    name="keys",
    help="The data keys that seal stored message bodies: status, rotate, reencrypt, retire.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@keys_app.command()
def status(data_dir: DataDirOpt = None, as_json: bool = typer.Option(False, "--json")) -> None:
    """The key ring (ids only, never a key) and the journal entries on each key."""
    from broker.cli.ops import connect
    from broker.datakeys import key_file, load_ring
    from broker.errors import BrokerError
    from broker.ops.reencrypt import count_streams

    settings = load_settings(data_dir=data_dir, running=True)
    try:
        ring = load_ring(settings)
    except BrokerError as exc:
        fail(str(exc))
    streams = count_streams(connect(settings))
    report: dict[str, object] = {
        "encryption": settings.data_encryption,
        "source": "PASSERELLE_DATA_KEY" if settings.data_key else str(key_file(settings)),
        "current": ring.current if ring else None,
        "keys": list(ring.keys) if ring else [],
        "stream_entries": dict(streams),
    }
    if as_json:
        print_json(report)
        return
    typer.echo(f"encryption {report['encryption']}; keys from {report['source']}")
    named = ", ".join(ring.keys) if ring else "none"
    typer.echo(f"current key: {report['current']}; keys: {named}")
    counted = ", ".join(f"{n} on {k}" for k, n in sorted(streams.items())) or "none"
    typer.echo(f"journal and rejected entries: {counted}")


@keys_app.command()
def rotate(data_dir: DataDirOpt = None) -> None:
    """Add a new current key at the top of the key file (the old keys stay to open old bodies)."""
    from broker.datakeys import key_file
    from broker.datakeys import rotate as add_key
    from broker.errors import BrokerError

    settings = load_settings(data_dir=data_dir, running=True)
    try:
        key_id = add_key(settings)
    except BrokerError as exc:
        fail(str(exc))
    typer.echo(
        f"new current data key {key_id} in {key_file(settings)}; restart passerelle so every "
        "process seals with it, then run `passerelle keys reencrypt`"
    )


@keys_app.command()
def reencrypt(
    data_dir: DataDirOpt = None,
    after: str = typer.Option("", "--after", help="Resume the store's pass after this id."),
    batch: int = typer.Option(500, "--batch", min=1, help="Rows per transaction."),
) -> None:
    """Seal again with the current key every stored body on an old key (store, then Redis)."""
    from broker.cli.ops import connect
    from broker.datakeys import use
    from broker.errors import BrokerError, ServiceUnavailable
    from broker.ops.reencrypt import reencrypt_redis
    from broker.store import connect as connect_store
    from broker.store.reencrypt import Progress, reencrypt_store

    settings = load_settings(data_dir=data_dir, running=True)

    def told(progress: Progress) -> None:
        typer.echo(f"store: {progress.rows} rows read, resume with --after {progress.last_id}")

    try:
        use(settings)
        try:
            engine = connect_store(settings.effective_store_url)
        except ServiceUnavailable as exc:  # no store yet (no writer ever ran): Redis only
            typer.echo(f"store: skipped ({exc})")
            done = Progress()
        else:
            done = reencrypt_store(engine, after=after, batch=batch, on_batch=told)
        redis_done = reencrypt_redis(connect(settings), batch=batch)
    except BrokerError as exc:
        fail(str(exc))
    typer.echo(
        f"store: {done.resealed} of {done.rows} messages sealed again; redis: "
        f"{redis_done.envelopes} envelopes, {redis_done.dead_letters} dead letters"
    )
    counted = ", ".join(f"{n} on {k}" for k, n in sorted(redis_done.streams.items())) or "none"
    typer.echo(
        f"journal and rejected entries (append-only, not rewritten; they leave with the trim "
        f"and the retention): {counted}"
    )


@keys_app.command()
def retire(
    key_id: str = typer.Argument(..., help="The old key's id."),
    data_dir: DataDirOpt = None,
    force: bool = typer.Option(False, "--force", help="Even with journal entries still on it."),
) -> None:
    """Remove an old key from the key file once nothing is sealed with it any more."""
    from broker.cli.ops import connect
    from broker.datakeys import retire as remove_key
    from broker.errors import BrokerError
    from broker.ops.reencrypt import count_streams

    settings = load_settings(data_dir=data_dir, running=True)
    left = count_streams(connect(settings)).get(key_id, 0)
    if left and not force:
        fail(
            f"{left} journal or rejected entries are still sealed with {key_id}; wait for the "
            "trim or the retention, or pass --force to lose them"
        )
    try:
        remove_key(settings, key_id)
    except BrokerError as exc:
        fail(str(exc))
    typer.echo(f"data key {key_id} retired; restart passerelle so every process drops it")
