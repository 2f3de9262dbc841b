"""Opt-in profile of the drain tasks in a worker process, for benchmarks (never in production).

With ``PASSERELLE_PROFILE_DIR`` set, each worker process counts its tasks (runs, runs that did
nothing, items handled, wall time) and runs them under ``cProfile``, and writes both to
``DIR/PID.json`` and ``DIR/PID.prof`` every few seconds. ``PASSERELLE_PROFILE_CLOCK=cpu``
makes the profile count CPU time (where the CPU goes) instead of wall time (where the time
goes, waits included). ``benchmarks/drains.py`` reads them.
Hooked on Celery's task signals, so the tasks themselves are unchanged.
"""

from __future__ import annotations

import cProfile
import json
import os
import time
from pathlib import Path
from typing import Any

from celery import signals

__all__ = ["CLOCK_ENV", "ENV", "install"]

ENV = "PASSERELLE_PROFILE_DIR"
CLOCK_ENV = "PASSERELLE_PROFILE_CLOCK"
_DUMP_EVERY_S = 2.0


class _Profile:
    """One worker process's counters and profiler."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        cpu = os.environ.get(CLOCK_ENV) == "cpu"
        self.profiler = cProfile.Profile(time.process_time) if cpu else cProfile.Profile()
        self.counts: dict[str, dict[str, float]] = {}
        self.started: dict[str, float] = {}
        self.dumped_at = time.monotonic()
        self.cpu_started = 0.0

    def before(self, task_id: str | None = None, **_: Any) -> None:
        self.started[task_id or ""] = time.perf_counter()
        self.cpu_started = time.process_time()
        self.profiler.enable()

    def after(
        self, task_id: str | None = None, task: Any = None, retval: Any = None, **_: Any
    ) -> None:
        self.profiler.disable()
        took = time.perf_counter() - self.started.pop(task_id or "", time.perf_counter())
        name = getattr(task, "name", "?").rsplit(".", 1)[-1]
        done = retval if isinstance(retval, int) else 0
        row = self.counts.setdefault(
            name,
            {
                "runs": 0,
                "idle_runs": 0,
                "items": 0,
                "wall_s": 0.0,
                "idle_wall_s": 0.0,
                "cpu_s": 0.0,
            },
        )
        row["runs"] += 1
        row["cpu_s"] += time.process_time() - self.cpu_started
        row["items"] += done
        row["wall_s"] += took
        if not done:
            row["idle_runs"] += 1
            row["idle_wall_s"] += took
        if time.monotonic() - self.dumped_at > _DUMP_EVERY_S:
            self.dump()

    def dump(self) -> None:
        self.dumped_at = time.monotonic()
        pid = os.getpid()
        (self.directory / f"{pid}.json").write_text(json.dumps(self.counts))
        self.profiler.dump_stats(str(self.directory / f"{pid}.prof"))


_profile: _Profile | None = None


def install() -> None:
    """Count and profile this process's tasks when ``PASSERELLE_PROFILE_DIR`` is set."""
    directory = os.environ.get(ENV)
    if not directory:
        return

    def start(**_: Any) -> None:
        global _profile
        _profile = _Profile(Path(directory))

    def before(**kwargs: Any) -> None:
        if _profile is not None:
            _profile.before(**kwargs)

    def after(**kwargs: Any) -> None:
        if _profile is not None:
            _profile.after(**kwargs)

    signals.worker_process_init.connect(start, weak=False)
    signals.task_prerun.connect(before, weak=False)
    signals.task_postrun.connect(after, weak=False)
