"""``make soak``: Redis memory under a steady stream, for long enough to see whether it grows.

The broker runs as ``passerelle serve`` runs it (``LoopbackStack``: embedded Redis, listener,
workers, the store's writer, beat), the subscribers in their own processes
(``benchmarks.peers``). A scenario of ``benchmarks.steady`` (ADT to FHIR + MLLP by default) is
sent at a fixed pace (``benchmarks.steady.paced_send``) in windows of ``--interval`` seconds;
after each window Redis is sampled: ``used_memory``, the key count, the envelopes
(``pl:env:*``) and dedupe keys (``pl:dedupe:*``) with their average size (``MEMORY USAGE``
of a few), the entries of the journal and queue streams, and the subscribers' backlog
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
from passerelle_demo.loopback import LoopbackStack
from passerelle_demo.synthetic import stream

_KINDS = (("env", "pl:env:"), ("dedupe", "pl:dedupe:"))
_SIZED = 20
"""How many keys of each kind ``MEMORY USAGE`` measures per sample."""
MB = 1024 * 1024


def census(client: redis.Redis) -> dict[str, Any]:
    """Keys by kind (one SCAN), their average size, and the streams' entries."""
    counts: Counter[str] = Counter()
    some: dict[str, list[bytes]] = {kind: [] for kind, _ in _KINDS}
    for key in client.scan_iter(count=5_000):
        text = key.decode()
        kind = next((k for k, prefix in _KINDS if text.startswith(prefix)), "other")
        counts[kind] += 1
        if kind in some and len(some[kind]) < _SIZED:
            some[kind].append(key)
    sizes = {}
    for kind, found in some.items():
        used = [client.memory_usage(k) or 0 for k in found]
        sizes[kind] = sum(used) / len(used) if used else 0.0
    streams: Counter[str] = Counter()
    for key in client.scan_iter(match="pl:in:*", count=1_000):
        streams["journal"] += int(client.xlen(key))
    for key in client.scan_iter(match="pl:out:*", count=1_000):
        streams["queues"] += int(client.xlen(key))
    streams["store"] = int(client.xlen(keys.STORE))
    return {"keys": dict(counts), "bytes_per_key": sizes, "entries": dict(streams)}


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
            f"{r['keys'].get('dedupe', 0):>8} {r['entries'].get('journal', 0):>8} "
            f"{r['entries'].get('queues', 0):>8} {r['entries'].get('store', 0):>8}"
        )


def verdict(
    rows: list[dict[str, Any]], rate: float, window_s: float, ratio: float
) -> dict[str, Any]:
    """Slopes, the hours to the backpressure mark, and whether memory is flat.

    The dedupe keys grow by design for their window, then plateau: the in-flight memory is
    ``used_memory`` without them (their count × their average size), and it is *flat* when at
    its slope over the second half the mark is more than a week away.
    """
    dedupe_bytes = max((r["bytes_per_key"].get("dedupe", 0.0) for r in rows), default=0.0)
    in_flight = [
        {**r, "used_memory": r["used_memory"] - r["keys"].get("dedupe", 0) * dedupe_bytes}
        for r in rows
    ]
    late = slope_mb_per_hour(in_flight[len(in_flight) // 2 :])
    plateau = rate * window_s * dedupe_bytes
    last = rows[-1]
    limit = last["maxmemory"] * ratio
    return {
        "slope_mb_per_h": slope_mb_per_hour(rows),
        "slope_in_flight_mb_per_h": slope_mb_per_hour(in_flight),
        "slope_in_flight_second_half_mb_per_h": late,
        "hours_to_backpressure": hours_to_mark(in_flight, late, ratio),
        "flat": hours_to_mark(in_flight, late, ratio) > 7 * 24,
        "env_bytes": max((r["bytes_per_key"].get("env", 0.0) for r in rows), default=0.0),
        "dedupe_bytes": dedupe_bytes,
        "dedupe_plateau_mb": plateau / MB,
        "after_window_mb": (in_flight[-1]["used_memory"] + plateau) / MB,
        "fits_under_mark": not limit or in_flight[-1]["used_memory"] + plateau < limit,
        "mark_mb": limit / MB,
    }


def print_verdict(result: dict[str, Any], window_s: float) -> None:
    """The verdict in sentences."""
    print(
        f"used_memory slope: {result['slope_mb_per_h']:.1f} MB/h; without the dedupe keys "
        f"(in flight): {result['slope_in_flight_mb_per_h']:.1f} MB/h, "
        f"{result['slope_in_flight_second_half_mb_per_h']:.1f} MB/h over the second half"
    )
    print(
        f"in-flight memory is {'FLAT' if result['flat'] else 'GROWING'}: at that slope the "
        f"backpressure mark is {result['hours_to_backpressure']:.1f} h away (flat: over a week)"
    )
    print(
        f"bytes per key: envelope {result['env_bytes']:.0f}, dedupe {result['dedupe_bytes']:.0f}; "
        f"the dedupe keys plateau after the {window_s / 3600:g} h window at "
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
