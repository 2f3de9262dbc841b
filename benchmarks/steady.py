"""Steady-load phases of ``make bench``: a hospital sending at a fixed pace, as hospitals do.

For each scenario and rate, messages are sent on a fixed schedule (message ``i`` at
``start + i / rate``) over a few MLLP connections, one patient's messages always on the same
connection and in order (a connection that is still waiting for an ACK sends its next message
late). The broker runs as ``passerelle serve`` runs it, the subscribers in their own processes.
While the phase runs, the undelivered count of each subscriber is sampled every second from the
broker's counters (``pl:stats``: received − failed − filtered − delivered:SUB). After the sending
window the phase waits for the backlog to drain (up to ``drain_timeout``), then reads what the
subscribers received, the sender's ACKs and, with ``PASSERELLE_TIMINGS`` on, the per-hop records
of ``pl:timings`` (``broker.timing``), and computes the figures of ``benchmarks.stats``.

A rate that leaves a backlog the drain timeout cannot clear is past the capacity: the higher
rates of that scenario are skipped.
"""

from __future__ import annotations

import asyncio
import json
import time
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import redis

from benchmarks import cpu
from benchmarks.stats import HOPS, Trace, hop_durations, summary, trend
from broker import keys
from broker.adapters.mllp import AsyncMllpClient, MllpError, MllpTimeout
from broker.timing import entry_time
from passerelle_demo.peers.sender import ack_code, patient_key
from passerelle_demo.synthetic import stream

__all__ = [
    "FHIR",
    "MLLP",
    "SCENARIOS",
    "Progress",
    "Sampler",
    "Scenario",
    "Sent",
    "dump",
    "messages_for",
    "paced_send",
    "print_report",
    "run_steady",
]

FHIR = "dmp-national"
MLLP = "lab-legacy"
_MAPPED_STATES = ("routed", "filtered", "failed")


@dataclass(frozen=True)
class Scenario:
    """One kind of steady stream: its messages and the subscribers that want them all."""

    key: str
    label: str
    mix: dict[str, float]
    subscribers: tuple[str, ...]


SCENARIOS = {
    "adt": Scenario(
        "adt", "ADT^A01/A08 -> FHIR + MLLP", {"ADT^A01": 1, "ADT^A08": 1}, (FHIR, MLLP)
    ),
    "oru": Scenario("oru", "ORU^R01 20 OBX -> FHIR", {"ORU^R01": 1}, (FHIR,)),
}
"""The scenarios by ``--scenarios`` name."""


def messages_for(scenario: Scenario, rate: float, duration_s: float, patients: int) -> list[bytes]:
    """The ``rate × duration`` messages of one phase, with control ids unique to the phase."""
    n = max(1, round(rate * duration_s))
    tag = f"{rate:g}".replace(".", "_")
    return [
        text.encode()
        for _, _, text in stream(
            n,
            seed=zlib.crc32(f"{scenario.key}|{rate}".encode()),
            mix=scenario.mix,
            n_patients=patients,
            n_obx=20,
            control_prefix=f"S{scenario.key[0].upper()}{tag}-",
        )
    ]


@dataclass(slots=True)
class Sent:
    """One message as the hospital saw it: when it was sent, how long the ACK took, its code."""

    control_id: str
    sent_at: float
    ack_s: float | None
    code: str | None


@dataclass(slots=True)
class Progress:
    """How far the sender is (read by the sampler)."""

    sent: int = 0
    acked: int = 0


def _control_id(message: bytes) -> str:
    return message.split(b"\r", 1)[0].split(b"|")[9].decode()


async def paced_send(
    host: str,
    port: int,
    messages: Sequence[bytes],
    *,
    rate: float,
    connections: int,
    progress: Progress,
    timeout: float = 30.0,
    start: float | None = None,
) -> list[Sent]:
    """Send message ``i`` at ``start + i / rate`` on its patient's connection; wait for each ACK.

    ``start`` is a ``time.perf_counter()`` value (by default, now): a later call can go on with
    the schedule of an earlier one (a message already late is sent at once).

    Returns:
        One ``Sent`` per message, in list order (``code`` is ``timeout`` or ``connection`` when
        no reply came).
    """
    queues: list[list[int]] = [[] for _ in range(connections)]
    for index, message in enumerate(messages):
        queues[zlib.crc32(patient_key(message).encode()) % connections].append(index)
    out: list[Sent | None] = [None] * len(messages)
    if start is None:
        start = time.perf_counter() + 0.05

    async def connection(number: int) -> None:
        client = AsyncMllpClient(host, port, timeout=timeout)
        try:
            for index in queues[number]:
                delay = start + index / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                control_id = _control_id(messages[index])
                sent_at, began = time.time(), time.perf_counter()
                progress.sent += 1
                try:
                    reply = await client.send(messages[index])
                except MllpError as exc:
                    kind = "timeout" if isinstance(exc, MllpTimeout) else "connection"
                    out[index] = Sent(control_id, sent_at, None, kind)
                    continue
                progress.acked += 1
                out[index] = Sent(control_id, sent_at, time.perf_counter() - began, ack_code(reply))
        finally:
            await client.close()

    await asyncio.gather(*(connection(n) for n in range(connections)))
    return [s for s in out if s is not None]


@dataclass
class Sampler:
    """Samples the broker's counters (one HGETALL) against a baseline taken at the phase start."""

    client: redis.Redis
    scenario: Scenario
    progress: Progress
    t0: float = field(default_factory=time.time)
    base: dict[str, int] = field(default_factory=dict)
    samples: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.base = self._counters()

    def _counters(self) -> dict[str, int]:
        raw: dict[bytes, bytes] = self.client.hgetall(keys.STATS)  # type: ignore[assignment]
        return {k.decode(): int(v) for k, v in raw.items()}

    def sample(self) -> dict[str, Any]:
        """Record one sample: received, mapped and, per subscriber, delivered and backlog."""
        now = self._counters()

        def delta(name: str) -> int:
            return now.get(name, 0) - self.base.get(name, 0)

        received = delta("received")
        # A quarantined or filtered message is done without a delivery: not a backlog.
        expected = received - delta("failed") - delta("filtered")
        point: dict[str, Any] = {
            "t": round(time.time() - self.t0, 3),
            "offered": self.progress.sent,
            "received": received,
            "mapping_backlog": received - sum(delta(s) for s in _MAPPED_STATES),
            # Journal drains handed to a worker in standby (broker/standby.py), not a task.
            "standby": delta("standby"),
            # Delivery drains handed to a worker in standby (broker.standby.hand), not a task.
            "standby_delivery": delta("standby_delivery"),
            "backlog": {s: expected - delta(f"delivered:{s}") for s in self.scenario.subscribers},
        }
        self.samples.append(point)
        return point

    async def run(self, stop: asyncio.Event) -> None:
        """Sample every second, on the second, until ``stop`` is set."""
        tick = 1
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), self.t0 + tick - time.time())
            except TimeoutError:
                self.sample()
            tick += 1


def _timing_records(client: redis.Redis) -> list[tuple[str, dict[str, str]]]:
    """Every record of ``pl:timings``, oldest first."""
    out: list[tuple[str, dict[str, str]]] = []
    start = "-"
    while True:
        chunk: Any = client.xrange(keys.TIMINGS, min=start, count=10_000)
        for entry_id, fields in chunk:
            out.append((entry_id.decode(), {k.decode(): v.decode() for k, v in fields.items()}))
        if len(chunk) < 10_000:
            return out
        start = "(" + chunk[-1][0].decode()


def _traces(
    sent: dict[str, Sent],
    arrivals: dict[str, dict[str, float]],
    records: list[tuple[str, dict[str, str]]],
    control_ids: dict[str, str],
) -> dict[str, list[Trace]]:
    """Per subscriber, the traces of the messages with every timestamp known."""
    maps: dict[str, tuple[str, dict[str, str]]] = {}
    sends: dict[tuple[str, str], tuple[str, dict[str, str]]] = {}
    for record_id, fields in records:
        if fields.get("hop") == "map":
            maps[fields["env"]] = (record_id, fields)
        elif fields.get("hop") == "send":
            sends[(fields["env"], fields["sub"])] = (record_id, fields)  # the last attempt wins
    traces: dict[str, list[Trace]] = {sub: [] for sub in arrivals}
    for (envelope_id, sub), (_, send) in sends.items():
        control_id = control_ids.get(envelope_id)
        mapped = maps.get(envelope_id)
        if control_id is None or mapped is None or control_id not in sent or sub not in arrivals:
            continue
        received = arrivals[sub].get(control_id)
        if received is None:
            continue
        map_id, map_fields = mapped
        traces[sub].append(
            Trace(
                sent=sent[control_id].sent_at,
                journalled=entry_time(map_fields["in"]),
                map_start=float(map_fields["t0"]),
                map_end=float(map_fields["t1"]),
                committed=entry_time(map_id),
                send_start=float(send["t0"]),
                received=received,
                replied=float(send["t1"]),
            )
        )
    return traces


def _first_arrivals(
    pairs: list[tuple[str, float]], translate: dict[str, str] | None
) -> tuple[dict[str, float], int]:
    """Control id → first arrival time, and how many arrivals were repeats."""
    first: dict[str, float] = {}
    repeats = 0
    for key, at in pairs:
        control_id = translate.get(key) if translate is not None else key
        if control_id is None:
            continue
        if control_id in first:
            repeats += 1
        else:
            first[control_id] = at
    return first, repeats


def run_phase(
    stack: Any,
    scenario: Scenario,
    rate: float,
    messages: list[bytes],
    *,
    connections: int,
    drain_timeout_s: float,
) -> dict[str, Any]:
    """Run one steady phase and return its figures (see the module docstring)."""
    client: redis.Redis = stack.redis
    client.delete(keys.TIMINGS)
    stack.fhir.reset()
    stack.lab.clear()
    progress = Progress()
    sampler = Sampler(client, scenario, progress)
    cpu_start, machine_start = cpu.snapshot(), cpu.machine()

    async def send_and_sample() -> list[Sent]:
        stop = asyncio.Event()
        sampling = asyncio.create_task(sampler.run(stop))
        try:
            return await paced_send(
                "127.0.0.1",
                stack.inbound_port,
                messages,
                rate=rate,
                connections=connections,
                progress=progress,
            )
        finally:
            stop.set()
            await sampling

    results = asyncio.run(send_and_sample())
    window_end = time.time()
    machine_window = cpu.machine()
    window_samples = list(sampler.samples)
    last = sampler.sample()
    deadline = time.monotonic() + drain_timeout_s
    while any(last["backlog"].values()) and time.monotonic() < deadline:
        time.sleep(0.5)
        last = sampler.sample()
    drained_s = time.time() - window_end
    cpu_end = cpu.snapshot()

    offered = len(results)
    sent = {s.control_id: s for s in results}
    fhir_pairs = stack.fhir.arrival_times()
    records = _timing_records(client)
    envelope_ids = sorted(
        {e for e, _ in fhir_pairs} | {f["env"] for _, f in records if f.get("hop") == "send"}
    )
    control_ids = stack.control_ids(envelope_ids)
    arrivals: dict[str, dict[str, float]] = {}
    repeats: dict[str, int] = {}
    arrivals[FHIR], repeats[FHIR] = _first_arrivals(fhir_pairs, control_ids)
    if MLLP in scenario.subscribers:
        arrivals[MLLP], repeats[MLLP] = _first_arrivals(stack.lab.arrival_times(), None)
    accepted = {c for c, s in sent.items() if s.code == "AA"}
    delivered: dict[str, Any] = {}
    for sub in scenario.subscribers:
        got = {c: t for c, t in arrivals[sub].items() if c in sent}
        delivered[sub] = {
            "total": len(got),
            "in_window": sum(1 for t in got.values() if t <= window_end),
            "duplicates": repeats[sub],
            "missing": len(accepted - got.keys()),
            "complete": accepted <= got.keys(),
        }
    e2e_by_sub = {
        sub: [arrivals[sub][c] - sent[c].sent_at for c in accepted if c in arrivals[sub]]
        for sub in scenario.subscribers
    }
    e2e = [
        max(arrivals[sub][c] for sub in scenario.subscribers) - sent[c].sent_at
        for c in accepted
        if all(c in arrivals[sub] for sub in scenario.subscribers)
    ]
    traces = _traces(sent, {s: arrivals[s] for s in scenario.subscribers}, records, control_ids)
    hops: dict[str, dict[str, dict[str, float]]] = {}
    for sub, sub_traces in traces.items():
        durations = [hop_durations(t) for t in sub_traces]
        names = (*HOPS, "receiver → reply", "end to end")
        hops[sub] = {name: summary([d[name] for d in durations]) for name in names}
    cpu_s = cpu.per_role(cpu_start, cpu_end)
    backlog = {
        sub: {
            "end": window_samples[-1]["backlog"][sub] if window_samples else 0,
            "max": max((s["backlog"][sub] for s in window_samples), default=0),
            "trend_per_s": trend((s["t"], s["backlog"][sub]) for s in window_samples),
            "trend_second_half_per_s": trend(
                (s["t"], s["backlog"][sub]) for s in window_samples[len(window_samples) // 2 :]
            ),
            "after_drain": last["backlog"][sub],
        }
        for sub in scenario.subscribers
    }
    codes = Counter(s.code for s in results)
    return {
        "scenario": scenario.key,
        "label": scenario.label,
        "rate": rate,
        "offered": offered,
        "offered_per_s": offered / max(1e-9, window_end - sampler.t0),
        "acks": dict(codes),
        "delivered": delivered,
        "all_delivered": all(d["complete"] for d in delivered.values())
        and len(accepted) == offered,
        "backlog": backlog,
        "mapping_backlog_end": window_samples[-1]["mapping_backlog"] if window_samples else 0,
        "drained_after_s": round(drained_s, 1),
        "drained": not any(last["backlog"].values()),
        "machine_busy_pct": 100 * cpu.busy_share(machine_start, machine_window),
        "cpu_ms_per_message": {role: s * 1000 / max(1, offered) for role, s in cpu_s.items()},
        "cpu_ms_per_message_total": sum(cpu_s.values()) * 1000 / max(1, offered),
        "cpu_ms_per_message_broker": cpu.broker_ms(cpu_s) * 1000 / max(1, offered),
        "ack": summary([s.ack_s for s in results if s.ack_s is not None]),
        "e2e": summary(e2e),
        "e2e_by_subscriber": {sub: summary(v) for sub, v in e2e_by_sub.items()},
        "hops": hops,
        "samples": sampler.samples,
    }


def run_steady(
    stack: Any,
    *,
    scenarios: Sequence[str],
    rates: Sequence[float],
    duration_s: float,
    connections: int,
    patients: int,
    drain_timeout_s: float,
) -> list[dict[str, Any]]:
    """Run every scenario at every rate, lowest first, up to the first rate that does not drain."""
    rows: list[dict[str, Any]] = []
    for name in scenarios:
        scenario = SCENARIOS[name]
        for rate in sorted(rates):
            messages = messages_for(scenario, rate, duration_s, patients)
            print(f"  steady {scenario.label} at {rate:g}/s for {duration_s:g} s …", flush=True)
            row = run_phase(
                stack,
                scenario,
                rate,
                messages,
                connections=connections,
                drain_timeout_s=drain_timeout_s,
            )
            rows.append(row)
            if not row["drained"]:
                print(
                    f"  {scenario.label}: backlog left after {drain_timeout_s:g} s, "
                    "higher rates skipped"
                )
                break
    return rows


def _fmt(value: float, unit: str = "") -> str:
    return "-" if value != value else f"{value:.0f}{unit}"  # nan → "-"


def print_report(rows: list[dict[str, Any]]) -> None:
    """Print the steady-load table, the per-hop budget and the CPU per process."""
    header = (
        f"{'scenario':28} {'rate':>5} {'offered':>7} {'FHIR deliv':>12} {'MLLP deliv':>12} "
        f"{'all?':>4} {'backlog':>7} {'growth/s':>8} {'busy':>5} {'CPU ms':>6} {'broker':>6} "
        f"{'e2e p50':>7} {'p95':>6} {'p99':>6}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        cells = []
        for sub in (FHIR, MLLP):
            d = r["delivered"].get(sub)
            cells.append(
                f"{d['total']:>5} ({100 * d['in_window'] / max(1, r['offered']):3.0f}%)"
                if d
                else f"{'':>12}"
            )
        backlog_end = max(b["end"] for b in r["backlog"].values())
        growth = max(b["trend_per_s"] for b in r["backlog"].values())
        print(
            f"{r['label']:28} {r['rate']:>5g} {r['offered']:>7} {cells[0]:>12} {cells[1]:>12} "
            f"{'yes' if r['all_delivered'] else 'NO':>4} {backlog_end:>7} {growth:>8.1f} "
            f"{r['machine_busy_pct']:>4.0f}% {r['cpu_ms_per_message_total']:>6.1f} "
            f"{r['cpu_ms_per_message_broker']:>6.1f} "
            f"{_fmt(r['e2e']['p50'], 'ms'):>7} {_fmt(r['e2e']['p95'], 'ms'):>6} "
            f"{_fmt(r['e2e']['p99'], 'ms'):>6}"
        )
    print(
        "deliv: received by the subscriber in the end (share received within the sending window);"
    )
    print(
        "backlog: undelivered at the end of the window, growth: its trend over the window (msg/s)"
    )
    print()
    for r in rows:
        parts = ", ".join(f"{role} {ms:.2f}" for role, ms in r["cpu_ms_per_message"].items())
        print(f"CPU ms per message, {r['label']} at {r['rate']:g}/s: {parts}")
    print()
    for r in rows:
        last = r["samples"][-1] if r["samples"] else {}
        handed, deliveries = last.get("standby", 0), last.get("standby_delivery", 0)
        print(
            f"Handed to a worker in standby, {r['label']} at {r['rate']:g}/s: journal drains "
            f"{handed} ({100 * handed / max(1, r['offered']):.0f} per 100 messages), delivery "
            f"drains {deliveries} ({100 * deliveries / max(1, r['offered']):.0f} per 100)"
        )
    print()
    names = ("ACK (sender)", *HOPS, "receiver → reply", "end to end")
    for r in rows:
        print(f"Per-hop budget, {r['label']} at {r['rate']:g}/s (ms p50 / p95 / p99):")
        ack = r["ack"]
        for sub, hops in r["hops"].items():
            print(f"  {sub} ({hops['end to end']['n']} traced)")
            for name in names:
                h = ack if name == "ACK (sender)" else hops[name]
                print(f"    {name:26} {h['p50']:8.1f} {h['p95']:8.1f} {h['p99']:8.1f}")
        if not r["hops"] or not any(h["end to end"]["n"] for h in r["hops"].values()):
            print("  (no hop records: run with PASSERELLE_TIMINGS on, the default of --steady)")


def dump(figures: Any) -> str:
    """``figures`` as JSON (NaN written as null, which JSON has no other way to say)."""
    return json.dumps(figures, indent=2, default=str).replace("NaN", "null")
