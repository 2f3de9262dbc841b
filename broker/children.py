"""What every child process of ``passerelle serve`` does between fork and exec.

Shared by the supervisor (the role processes) and the embedded Redis it starts, so neither
imports the other.
"""

from __future__ import annotations

import ctypes
import signal
import sys

__all__ = ["die_with_parent"]

_PR_SET_PDEATHSIG = 1
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def die_with_parent() -> None:
    """In a child before exec: ask Linux to send SIGTERM when the supervisor dies.

    Children run in their own session (a terminal's Ctrl-C must reach the supervisor only, which
    stops them in order), so without this a SIGKILLed supervisor would leave them running.
    """
    # Runs between fork and exec, possibly beside other threads: only a C call, no import.
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
