"""A steady paced load and what the drains did with it: ``python -m benchmarks.drains``.

A probe for finding where a steady stream's time goes, not the benchmark of record
(``benchmarks.run``): ADT^A01/A08 for 1,000 patients over 4 MLLP connections at each given rate
for a few seconds, both subscribers (FHIR and MLLP captures) in their own processes. Per rate it
prints what each subscriber had when the sending ended and how long the rest took, e2e
p50/p99, the machine's idle CPU while sending, CPU ms per message per role and, with
``--profile``, the worker tasks' counters (``broker.worker.profiling``) and the top of their
cProfile.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import pstats
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import cpu
from benchmarks.peers import RemotePeer
from benchmarks.run import _control_ids, _pct
from broker.testing import wait_until
from broker.worker.profiling import CLOCK_ENV, ENV
from passerelle_demo.loopback import LoopbackStack
from passerelle_demo.peers.sender import patient_key, send_messages
from passerelle_demo.synthetic import stream


def _idle_ticks() -> tuple[int, int]:
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    return fields[3] + fields[4], sum(fields)


def _counters(directory: Path) -> dict[str, dict[str, float]]:
    total: dict[str, dict[str, float]] = {}
    for path in directory.glob("*.json"):
        try:
            counts = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        for task, row in counts.items():
            into = total.setdefault(task, {})
            for key, value in row.items():
                into[key] = into.get(key, 0) + value
    return total


def _diff(after: dict[str, dict[str, float]], before: dict[str, dict[str, float]]) -> Any:
    return {
        task: {k: v - before.get(task, {}).get(k, 0) for k, v in row.items()}
        for task, row in after.items()
    }


def phase(stack: LoopbackStack, rate: float, seconds: float, seed: int) -> dict[str, Any]:
    """Send ``rate`` msg/s for ``seconds``; measure delivery, latency and CPU."""
    n = int(rate * seconds)
    messages = [
        t
        for _, _, t in stream(
            n,
            seed=seed,
            mix={"ADT^A01": 1, "ADT^A08": 1},
            n_patients=1000,
            control_prefix=f"P{seed}",
        )
    ]
    fhir_before = set(stack.fhir.envelope_ids)
    lab_before = stack.lab.unique_count
    cpu_before = cpu.snapshot()
    idle_before = _idle_ticks()
    started = time.time()
    result = asyncio.run(
        send_messages(
            "127.0.0.1",
            stack.inbound_port,
            messages,
            connections=4,
            key=patient_key,
            timeout=30,
            rate=rate,
        )
    )
    sent = time.time()
    idle_after = _idle_ticks()
    cpu_after = cpu.snapshot()
    fhir_at_end = len(stack.fhir.envelope_ids - fhir_before)
    lab_at_end = stack.lab.unique_count - lab_before
    wait_until(
        lambda: (
            len(stack.fhir.envelope_ids - fhir_before) >= n
            and stack.lab.unique_count - lab_before >= n
        ),
        120,
        0.1,
    )
    drained = time.time()
    sent_at = {c: o.sent_at for c, o in zip(_control_ids(messages), result.outcomes, strict=True)}
    arrival: dict[str, float] = {}
    fhir_arrivals = [(e, t) for e, t in stack.fhir.arrivals() if e not in fhir_before]
    by_envelope = stack.control_ids([e for e, _ in fhir_arrivals])
    for envelope_id, at in fhir_arrivals:
        cid = by_envelope.get(envelope_id)
        if cid in sent_at:
            arrival[cid] = max(arrival.get(cid, 0.0), at)
    for captured in stack.lab.messages:
        if captured.control_id in sent_at:
            at = captured.received_at.timestamp()
            arrival[captured.control_id] = max(arrival.get(captured.control_id, 0.0), at)
    e2e = [arrival[c] - sent_at[c] for c in arrival]
    idle = (idle_after[0] - idle_before[0]) / max(1, idle_after[1] - idle_before[1])
    cpu_ms = {
        role: s * 1000 / n for role, s in cpu.per_role(cpu_before, cpu_after).items() if s > 0
    }
    return {
        "rate": rate,
        "messages": n,
        "send_s": sent - started,
        "fhir_at_end": fhir_at_end,
        "lab_at_end": lab_at_end,
        "tail_s": drained - sent,
        "e2e_p50_ms": _pct(e2e, 50) * 1000,
        "e2e_p99_ms": _pct(e2e, 99) * 1000,
        "idle": idle,
        "cpu_ms": cpu_ms,
        "cpu_total_ms": sum(cpu_ms.values()),
    }


def main() -> None:
    """Parse arguments, run one phase per rate, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rates", default="50,100,200", help="msg/s, comma-separated")
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--rekick", type=float, default=5.0, help="rekick_interval_s")
    parser.add_argument("--profile", action="store_true", help="counters and cProfile per task")
    parser.add_argument("--top", type=int, default=25, help="cProfile lines to print")
    parser.add_argument(
        "--idle", type=float, default=0, help="first measure CPU per role idle, this many s"
    )
    parser.add_argument("--cpu", action="store_true", help="profile CPU time, not wall time")
    parser.add_argument("--keep", action="store_true", help="keep the profile files; print where")
    args = parser.parse_args()
    profile_dir = Path(tempfile.mkdtemp(prefix="passerelle-profile-"))
    if args.profile:
        import os

        os.environ[ENV] = str(profile_dir)
        if args.cpu:
            os.environ[CLOCK_ENV] = "cpu"
    peers = (RemotePeer("fhir", validate=False, keep_bundles=False), RemotePeer("mllp"))
    with (
        tempfile.TemporaryDirectory(prefix="passerelle-drains-") as tmp,
        LoopbackStack(
            Path(tmp),
            peers=peers,
            workers=args.workers,
            partitions=args.partitions,
            rekick_interval_s=args.rekick,
            log_level="WARNING",
        ) as stack,
    ):
        phase(stack, 100, 2, seed=90)
        if args.idle:
            time.sleep(2)
            before_idle = cpu.snapshot()
            time.sleep(args.idle)
            idle_cpu = cpu.per_role(before_idle, cpu.snapshot())
            print(
                "idle, CPU ms per s:",
                ", ".join(f"{k} {v * 1000 / args.idle:.1f}" for k, v in idle_cpu.items()),
            )
        for i, rate in enumerate(float(r) for r in args.rates.split(",")):
            before = _counters(profile_dir)
            for path in profile_dir.glob("*.prof"):
                path.unlink()
            row = phase(stack, rate, args.seconds, seed=91 + i)
            time.sleep(2.5 if args.profile else 0)
            counts = _diff(_counters(profile_dir), before)
            print(
                f"rate {rate:.0f}/s x {row['messages']}: sent in {row['send_s']:.1f}s; at end "
                f"FHIR {row['fhir_at_end']} MLLP {row['lab_at_end']}; rest in "
                f"{row['tail_s']:.2f}s; e2e p50 {row['e2e_p50_ms']:.0f}ms "
                f"p99 {row['e2e_p99_ms']:.0f}ms; idle {row['idle'] * 100:.0f}%; "
                f"CPU {row['cpu_total_ms']:.1f} ms/msg"
            )
            print("   ", ", ".join(f"{k} {v:.2f}" for k, v in row["cpu_ms"].items()))
            for task, c in sorted(counts.items()):
                if c.get("runs"):
                    print(
                        f"    {task}: {c['runs']:.0f} runs, {c['idle_runs']:.0f} idle, "
                        f"{c['items']:.0f} items ({c['items'] / c['runs']:.1f}/run), "
                        f"wall {c['wall_s'] * 1000 / c['runs']:.1f} ms/run, "
                        f"CPU in task {c['cpu_s'] * 1000 / c['runs']:.2f} ms/run"
                    )
            profiles = [str(p) for p in profile_dir.glob("*.prof")]
            if profiles and args.top:
                stats = pstats.Stats(*profiles)
                stats.sort_stats("tottime").print_stats(args.top)
            print(f"    load {Path('/proc/loadavg').read_text().strip()}", flush=True)
    if args.keep:
        print(f"profiles kept in {profile_dir}")
    else:
        shutil.rmtree(profile_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
