"""Reading large messages off the event loop that answers ACKs.

A listener's or the API's event loop answers every sender. Reading a 5 MB HL7 v2 message (decode,
tokenize, check) holds it for 0.2-2.5 s here, and a thread does not help enough: the tokenizer is
pure Python, so it holds the GIL, and freeing its hundreds of thousands of segments lands on the
loop. Measured on a real listener, a small ADT's ACK on another connection waited up to 290 ms
(2.4 s for 5 MB of short segments) inline and up to 340 ms in a thread. So a message above
``INLINE_BYTES`` is read in a small process pool that hands back only what the ACK needs; smaller
ones (nearly all) stay inline, where a process hop would cost more than the read.

The pool (``forkserver``: clean processes, not forks of a loop with threads) has ``configure``'s
size, set from ``Settings.parse_processes``; ``passerelle listen`` and ``passerelle api`` start
it before serving (``start``), elsewhere it starts on first use.
"""

from __future__ import annotations

import asyncio
import multiprocessing
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import TypeVar

__all__ = ["INLINE_BYTES", "configure", "run", "shutdown", "start"]

INLINE_BYTES = 256 * 1024
"""Messages up to this size are read on the loop; larger ones in the pool."""

_T = TypeVar("_T")
_size = 2
_pool: ProcessPoolExecutor | None = None


def configure(processes: int) -> None:
    """Set the pool's size (the next pool started; a running one keeps its size)."""
    global _size
    _size = max(1, processes)


def _executor() -> ProcessPoolExecutor:
    global _pool
    if _pool is None:
        context = multiprocessing.get_context("forkserver")
        _pool = ProcessPoolExecutor(_size, mp_context=context)
    return _pool


def _ready() -> None:
    """Nothing: submitted by ``start`` so the pool's processes exist."""


def start() -> None:
    """Start the pool now (the entrypoints, before serving): starting the forkserver costs the
    loop up to ~100 ms, which the first large message would otherwise pay."""
    _executor().submit(_ready).result()


async def run(function: Callable[..., _T], *args: object) -> _T:
    """Run ``function(*args)`` in the pool and await its result (all must pickle)."""
    return await asyncio.get_running_loop().run_in_executor(_executor(), function, *args)


def shutdown() -> None:
    """Stop the pool's processes (a later ``run`` starts a new pool)."""
    global _pool
    pool, _pool = _pool, None
    if pool is not None:
        pool.shutdown(wait=True, cancel_futures=True)
