"""``make soak``: Redis memory under a steady stream, for long enough to see whether it grows.

The broker runs as ``passerelle serve`` runs it (``LoopbackStack``: embedded Redis, listener,
workers, the store's writer, beat), the subscribers in their own processes
(``benchmarks.peers``). A scenario of ``benchmarks.steady`` (ADT to FHIR + MLLP by default) is
sent at a fixed pace (``benchmarks.steady.paced_send``) in windows of ``--interval`` seconds;
after each window Redis is sampled: ``used_memory``, the key count, the envelopes
(``pl:env:*``) with their average size (``MEMORY USAGE`` of a few), the dedupe records
(``pl:dedupe:*`` hashes: every one's records and ``MEMORY USAGE``, so their bytes per record
and per hash), the entries of the journal and queue streams, and the subscribers' backlog
(``benchmarks.steady.Sampler``). At the end it prints the table and the slope of
``used_memory`` per hour (least squares, over all samples and over the second half), with the
hours until the backpressure mark at that slope: memory is *flat* when that is longer than the
retention (a week).

It is about memory, not latency: run it niced on a shared machine. Not part of ``make test``.

Examples (``make soak SOAK_ARGS="…"``)::

    --seconds 600                     ten minutes at the default 100 msg/s
    --rate 50 --seconds 3600 --interval 60
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import redis

from benchmarks import cpu
from benchmarks.peers import RemotePeer
from benchmarks.stats import trend
from benchmarks.steady import SCENARIOS, Progress, Sampler, dump, paced_send
from broker import keys
from broker.intake.journal import DEDUPE_SHARD_DIGITS, dedupe_bucket_s
from passerelle_demo.loopback import LoopbackStack
from passerelle_demo.synthetic import stream

_KINDS = (("env", "pl:env:"), ("dedupe", "pl:dedupe:"))
_SIZED = 20
"""How many keys of each kind ``MEMORY USAGE`` measures per sample."""
MB = 1024 * 1024


def census(client: redis.Redis) -> dict[str, Any]:
    """Keys by kind (one SCAN), the envelopes' average size, the dedupe records, the streams."""
    counts: Counter[str] = Counter()
    envelopes: list[bytes] = []
    dedupe: list[bytes] = []
    for key in client.scan_iter(count=5_000):
        text = key.decode()
        kind = next((k for k, prefix in _KINDS if text.startswith(prefix)), "other")
        counts[kind] += 1
        if kind == "dedupe":
            dedupe.append(key)
        elif kind == "env" and len(envelopes) < _SIZED:
            envelopes.append(key)
    used = [client.memory_usage(k) or 0 for k in envelopes]
    sizes = {"env": sum(used) / len(used) if used else 0.0}
    streams: Counter[str] = Counter()
    for key in client.scan_iter(match="pl:in:*", count=1_000):
        streams["journal"] += int(client.xlen(key))
    for key in client.scan_iter(match="pl:out:*", count=1_000):
        streams["queues"] += int(client.xlen(key))
    streams["store"] = int(client.xlen(keys.STORE))
    return {
        "keys": dict(counts),
        "bytes_per_key": sizes,
        "entries": dict(streams),
        "dedupe": dedupe_census(client, dedupe),
    }


def dedupe_census(client: redis.Redis, names: list[bytes]) -> dict[str, float]:
    """Every dedupe hash's records and ``MEMORY USAGE``: their total, and a least-squares fit of
    a hash's bytes on its records (bytes per record, and per hash: the intercept).

    Records of the layout before (``pl:dedupe:SRC:HASH`` strings) count one record each.
    """
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.type(name)
        pipe.memory_usage(name, samples=0)
    replies = pipe.execute(raise_on_error=False)
    kinds, usage = replies[0::2], [int(u or 0) for u in replies[1::2]]
    hashes = [name for name, kind in zip(names, kinds, strict=True) if kind == b"hash"]
    pipe = client.pipeline(transaction=False)
    for name in hashes:
        pipe.hlen(name)
    lengths = dict(
        zip(hashes, (int(n or 0) for n in pipe.execute(raise_on_error=False)), strict=True)
    )
    records = [lengths.get(name, 1) for name in names]
    points = [(n, u) for name, n, u in zip(names, records, usage, strict=True) if name in lengths]
    per_record = trend(points)
    per_hash = (
        sum(u for _, u in points) / len(points)
        - per_record * sum(n for n, _ in points) / len(points)
        if points
        else 0.0
    )
    return {
        "keys": len(names),
        "records": sum(records),
        "bytes": sum(usage),
        "bytes_per_record": per_record,
        "bytes_per_hash": per_hash,
    }


def sample(client: redis.Redis, sampler: Sampler, t0: float) -> dict[str, Any]:
    """One row: Redis's memory and census, and the broker's progress and backlog."""
    memory: Any = client.info("memory")
    point = sampler.sample()
    return {
        "t": round(time.time() - t0, 1),
        "used_memory": int(memory["used_memory"]),
        "maxmemory": int(memory.get("maxmemory", 0)),
        "dbsize": int(client.dbsize()),
        "received": point["received"],
        "backlog": max(point["backlog"].values(), default=0),
        **census(client),
    }


def slope_mb_per_hour(rows: list[dict[str, Any]]) -> float:
    """The least-squares slope of ``used_memory`` in MB per hour."""
    return trend((r["t"], r["used_memory"] / MB) for r in rows) * 3600


def hours_to_mark(rows: list[dict[str, Any]], slope: float, ratio: float) -> float:
    """Hours until ``used_memory`` reaches the backpressure mark at ``slope`` (inf if flat)."""
    last = rows[-1]
    if slope <= 0 or not last["maxmemory"]:
        return float("inf")
    return (last["maxmemory"] * ratio - last["used_memory"]) / MB / slope


def print_table(rows: list[dict[str, Any]], *, header: bool = True) -> None:
    """The samples, one line each (under the header, unless ``header`` is false)."""
    title = (
        f"{'t (s)':>7} {'received':>9} {'backlog':>7} {'used MB':>8} {'keys':>8} "
        f"{'pl:env':>8} {'dedupe':>8} {'journal':>8} {'queues':>8} {'pl:store':>8}"
    )
    if header:
        print(title)
        print("-" * len(title))
    for r in rows:
        print(
            f"{r['t']:>7.0f} {r['received']:>9} {r['backlog']:>7} "
            f"{r['used_memory'] / MB:>8.1f} {r['dbsize']:>8} {r['keys'].get('env', 0):>8} "
            f"{r.get('dedupe', {}).get('records', r['keys'].get('dedupe', 0)):>8} "
            f"{r['entries'].get('journal', 0):>8} "
            f"{r['entries'].get('queues', 0):>8} {r['entries'].get('store', 0):>8}"
        )


def _dedupe_bytes(row: dict[str, Any]) -> float:
    """The dedupe records' bytes in one sample (a run saved before the census counted them
    all: their key count times the average size of a few)."""
    if "dedupe" in row:
        return float(row["dedupe"]["bytes"])
    return row["keys"].get("dedupe", 0) * row["bytes_per_key"].get("dedupe", 0.0)


def dedupe_plateau(row: dict[str, Any], rate: float, window_s: float) -> float:
    """The dedupe records' bytes once the window is full, at ``rate`` msg/s, at their peak.

    Records live the window and up to one bucket more: ``rate × (window + bucket)`` of them,
    in the hashes of ``window / bucket + 1`` buckets (65,536 each, those a record reached),
    each record and each hash at the cost the sample's fit measured. A soak of an hour has
    sparse hashes; the fit (bytes per record, bytes per hash) is what carries to the plateau.
    A run saved before the bucketed records: ``rate × window`` keys of their size.
    """
    if "dedupe" not in row:
        return rate * window_s * row["bytes_per_key"].get("dedupe", 0.0)
    bucket_s = dedupe_bucket_s(int(window_s))
    shards = 16**DEDUPE_SHARD_DIGITS
    fill = rate * bucket_s / shards
    hashes = (window_s // bucket_s + 1) * shards * (1 - math.exp(-fill))
    records = rate * (window_s + bucket_s)
    cost = row["dedupe"]
    return float(cost["bytes_per_record"] * records + cost["bytes_per_hash"] * hashes)


def verdict(
    rows: list[dict[str, Any]], rate: float, window_s: float, ratio: float
) -> dict[str, Any]:
    """Slopes, the hours to the backpressure mark, and whether memory is flat.

    The dedupe records grow by design for their window, then plateau: the in-flight memory is
    ``used_memory`` without them, and it is *flat* when at its slope over the second half the
    mark is more than a week away.
    """
    in_flight = [{**r, "used_memory": r["used_memory"] - _dedupe_bytes(r)} for r in rows]
    late = slope_mb_per_hour(in_flight[len(in_flight) // 2 :])
    last = rows[-1]
    plateau = dedupe_plateau(last, rate, window_s)
    records = last.get("dedupe", {}).get("records", last["keys"].get("dedupe", 0))
    limit = last["maxmemory"] * ratio
    return {
        "slope_mb_per_h": slope_mb_per_hour(rows),
        "slope_in_flight_mb_per_h": slope_mb_per_hour(in_flight),
        "slope_in_flight_second_half_mb_per_h": late,
        "hours_to_backpressure": hours_to_mark(in_flight, late, ratio),
        "flat": hours_to_mark(in_flight, late, ratio) > 7 * 24,
        "env_bytes": max((r["bytes_per_key"].get("env", 0.0) for r in rows), default=0.0),
        "dedupe_bytes": _dedupe_bytes(last) / max(1, records),
        "dedupe_plateau_bytes": plateau / max(1.0, rate * window_s),
        "dedupe_plateau_mb": plateau / MB,
        "after_window_mb": (in_flight[-1]["used_memory"] + plateau) / MB,
        "fits_under_mark": not limit or in_flight[-1]["used_memory"] + plateau < limit,
        "mark_mb": limit / MB,
    }


def print_verdict(result: dict[str, Any], window_s: float) -> None:
    """The verdict in sentences."""
    print(
        f"used_memory slope: {result['slope_mb_per_h']:.1f} MB/h; without the dedupe records "
        f"(in flight): {result['slope_in_flight_mb_per_h']:.1f} MB/h, "
        f"{result['slope_in_flight_second_half_mb_per_h']:.1f} MB/h over the second half"
    )
    print(
        f"in-flight memory is {'FLAT' if result['flat'] else 'GROWING'}: at that slope the "
        f"backpressure mark is {result['hours_to_backpressure']:.1f} h away (flat: over a week)"
    )
    print(
        f"bytes: envelope {result['env_bytes']:.0f}, dedupe record {result['dedupe_bytes']:.0f} "
        f"now ({result['dedupe_plateau_bytes']:.0f} per message once the "
        f"{window_s / 3600:g} h window is full); the dedupe records plateau at "
        f"{result['dedupe_plateau_mb']:.0f} MB at this rate: about "
        f"{result['after_window_mb']:.0f} MB in all, "
        f"{'under' if result['fits_under_mark'] else 'OVER'} the backpressure mark "
        f"({result['mark_mb']:.0f} MB)"
    )


def main() -> None:
    """Parse arguments, run the soak, print the table and the verdict, save the figures."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rate", type=float, default=100, help="messages/s (default 100)")
    parser.add_argument("--seconds", type=float, default=3600, help="how long (default 3600)")
    parser.add_argument(
        "--interval", type=float, default=30, help="seconds between samples (default 30)"
    )
    parser.add_argument("--scenario", choices=sorted(SCENARIOS), default="adt")
    parser.add_argument("--workers", type=int, default=2, help="Celery worker processes")
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--connections", type=int, default=4, help="MLLP connections")
    parser.add_argument("--patients", type=int, default=1000)
    parser.add_argument(
        "--drain-timeout",
        type=float,
        default=120,
        help="seconds to wait for the backlog at the end",
    )
    parser.add_argument(
        "--from", dest="saved", type=Path, help="print the table and verdict of a saved soak"
    )
    args = parser.parse_args()
    if args.saved is not None:
        figures = json.loads(args.saved.read_text())
        saved, rows = figures["args"], figures["rows"]
        window_s = saved.get("dedupe_window_s", 86_400)
        print_table(rows)
        print()
        print_verdict(verdict(rows, saved["rate"], window_s, figures.get("ratio", 0.9)), window_s)
        return
    scenario = SCENARIOS[args.scenario]
    windows = max(1, round(args.seconds / args.interval))
    per_window = max(1, round(args.rate * args.interval))
    print(
        f"Passerelle soak: {scenario.label} at {args.rate:g}/s for {windows * args.interval:g} s, "
        f"a sample every {args.interval:g} s; {os.cpu_count()} cores, {args.workers} workers"
    )
    peers = (RemotePeer("fhir", validate=False, keep_bundles=False), RemotePeer("mllp"))
    rows: list[dict[str, Any]] = []
    with (
        tempfile.TemporaryDirectory(prefix="passerelle-soak-") as tmp,
        LoopbackStack(
            Path(tmp),
            peers=peers,
            workers=args.workers,
            partitions=args.partitions,
            log_level="WARNING",
        ) as stack,
    ):
        settings = stack.settings
        args.dedupe_window_s = settings.dedupe_window_s
        client: redis.Redis = stack.redis
        progress = Progress()
        sampler = Sampler(client, scenario, progress)
        t0 = time.time()
        cpu_start = cpu.snapshot()
        rows.append(sample(client, sampler, t0))
        print_table(rows)
        # One window's messages, made once; each window gets its own control ids (MSH-10), or
        # the listener would answer them as resends.
        pool = [
            text.encode()
            for _, _, text in stream(
                per_window,
                seed=1,
                mix=scenario.mix,
                n_patients=args.patients,
                control_prefix="KPOOL-",
            )
        ]
        schedule = time.perf_counter() + 0.05
        for window in range(windows):
            messages = [m.replace(b"|KPOOL-", f"|K{window}-".encode(), 1) for m in pool]
            asyncio.run(
                paced_send(
                    "127.0.0.1",
                    stack.inbound_port,
                    messages,
                    rate=args.rate,
                    connections=args.connections,
                    progress=progress,
                    start=schedule + window * per_window / args.rate,
                )
            )
            stack.fhir.reset()  # the captures keep every message: bound their memory
            stack.lab.clear()
            rows.append(sample(client, sampler, t0))
            print_table(rows[-1:], header=False)
        offered = progress.sent / max(1e-9, time.perf_counter() - schedule)
        deadline = time.monotonic() + args.drain_timeout
        while rows[-1]["backlog"] and time.monotonic() < deadline:
            time.sleep(2)
            rows[-1] = sample(client, sampler, t0)
        cpu_ms = {
            role: s * 1000 / max(1, progress.sent)
            for role, s in cpu.per_role(cpu_start, cpu.snapshot()).items()
        }
        ratio = settings.max_memory_ratio
    print()
    print_table(rows)
    result = verdict(rows, args.rate, args.dedupe_window_s, ratio)
    print()
    print(f"offered {progress.sent} messages, {offered:.1f}/s (asked {args.rate:g}/s)")
    print_verdict(result, args.dedupe_window_s)
    print("CPU ms per message: " + ", ".join(f"{r} {ms:.2f}" for r, ms in cpu_ms.items()))
    out = Path("benchmarks/results")
    out.mkdir(parents=True, exist_ok=True)
    path = out / time.strftime("soak-%Y%m%d-%H%M%S.json")
    figures = {"args": vars(args), "rows": rows, "verdict": result, "cpu": cpu_ms, "ratio": ratio}
    path.write_text(dump(figures))
    print(f"figures saved to {path}")


if __name__ == "__main__":
    main()
