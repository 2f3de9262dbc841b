"""CPU time per role, read from /proc for this process and its descendants (Linux only)."""

from __future__ import annotations

import os
from collections import Counter

_ROLES = (
    ("redis-server", "redis"),
    ("broker listen", "listener"),
    ("ForkPoolWorker", "workers"),
    ("celeryd", "celery main"),
    ("celery beat", "beat"),
    ("broker api", "api"),
    ("broker store", "store writer"),
    ("multiprocessing", "subscribers (captures)"),
)


BENCHMARK_ROLES = frozenset({"hospital sender (benchmark)", "subscribers (captures)"})
"""The benchmark's own peers: the hospitals and the receivers, not Passerelle's cost."""


def broker_ms(per_role: dict[str, float]) -> float:
    """The sum over Passerelle's own processes (listener, workers, Celery, beat, API, store
    writer, Redis) of a per-role figure, the benchmark's peers left out."""
    return sum(v for role, v in per_role.items() if role not in BENCHMARK_ROLES)


def _role(cmdline: str) -> str:
    for needle, role in _ROLES:
        if needle in cmdline:
            return role
    return "hospital sender (benchmark)"


def _processes() -> dict[int, tuple[int, int, str]]:
    out = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{name}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        out[int(name)] = (int(fields[1]), int(fields[11]) + int(fields[12]), cmd)
    return out


def snapshot() -> dict[int, tuple[str, int]]:
    """CPU ticks of this process and every descendant, by pid."""
    procs = _processes()
    root = os.getpid()
    mine = {root}
    changed = True
    while changed:
        changed = False
        for pid, (ppid, _, _) in procs.items():
            if ppid in mine and pid not in mine:
                mine.add(pid)
                changed = True
    return {pid: (_role(procs[pid][2]), procs[pid][1]) for pid in mine if pid in procs}


def per_role(
    before: dict[int, tuple[str, int]], after: dict[int, tuple[str, int]]
) -> dict[str, float]:
    """CPU seconds spent per role between two snapshots."""
    hz = os.sysconf("SC_CLK_TCK")
    spent: Counter[str] = Counter()
    for pid, (role, ticks) in after.items():
        spent[role] += ticks - before.get(pid, (role, 0))[1]
    return {role: ticks / hz for role, ticks in spent.most_common()}


def machine() -> tuple[int, int]:
    """``(busy, total)`` CPU ticks of the whole machine since boot, all cores (``/proc/stat``).

    Busy is everything but idle and iowait; two readings give the share busy between them.
    """
    with open("/proc/stat") as f:
        ticks = [int(v) for v in f.readline().split()[1:]]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)
    total = sum(ticks[:8])
    return total - idle, total


def busy_share(before: tuple[int, int], after: tuple[int, int]) -> float:
    """The share (0–1) of the machine's CPU time busy between two ``machine()`` readings."""
    total = after[1] - before[1]
    return (after[0] - before[0]) / total if total > 0 else float("nan")
