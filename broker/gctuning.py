"""The cyclic garbage collector, made cheap for the long-running roles (store writer, workers,
listener).

With Python's default thresholds (a young collection every 700 allocations) a process that
builds batches of parsed JSON walks the same live objects again and again, and each full
collection also walks everything loaded once for the process's life (SQLAlchemy's tables and
compiled statements, pydantic's schemas, the compiled mappings). :func:`tune_gc` freezes what
exists after set-up (``gc.freeze()``: out of every later collection) and raises the first
threshold, so a batch is built between two collections. Cycles are still collected.

Measured (docs/performance.md, "The garbage collector"): the store writer's CPU per message
0.20-0.22 → 0.13-0.15 ms on ``benchmarks/store.py``'s data; a worker's drains of a batch of 300
ADT 0.98-1.08 → 0.83-0.86 ms per message (thread CPU time, in one process).
"""

from __future__ import annotations

import gc

__all__ = ["GC_THRESHOLD", "tune_gc"]

GC_THRESHOLD = 50_000
"""Allocations between two young-generation collections (Python's default: 700)."""


def tune_gc() -> None:
    """Freeze the objects alive now out of every later collection; raise the first threshold.

    Call it once the process has loaded what it keeps for its life (configuration, mappings,
    database metadata). The older generations' thresholds are kept.
    """
    gc.collect()
    gc.freeze()
    _, second, third = gc.get_threshold()
    gc.set_threshold(GC_THRESHOLD, second, third)
