"""File modes: the data directory and everything in it readable by the service user only.

Message bodies are sealed (``broker.sealing``), but the key file, the API token, the Redis
append-only file and socket, and the SQLite store sit in the data directory too. The long-running
roles set a umask of 0o077 at start, so every file they or their children (redis-server,
SQLite's ``-wal`` and ``-shm``) create is 0600 and every directory 0700; ``serve`` also takes
group and other permissions off what an earlier version left readable.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

__all__ = ["PRIVATE_UMASK", "private_process", "tighten"]

PRIVATE_UMASK = 0o077
"""New files 0600, new directories 0700."""


def private_process() -> None:
    """Create every file of this process (and of the children it starts) owner-only."""
    os.umask(PRIVATE_UMASK)


def tighten(data_dir: Path) -> int:
    """Make ``data_dir`` 0700 and take group and other bits off everything under it.

    Symbolic links are not followed (a link out of the directory is left as it is).

    Returns:
        How many files and directories had their mode changed.
    """
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    changed = 0
    for path in (data_dir, *data_dir.rglob("*")):
        info = path.lstat()
        if stat.S_ISLNK(info.st_mode):
            continue
        mode = stat.S_IMODE(info.st_mode)
        private = mode & 0o700
        if mode != private:
            path.chmod(private)
            changed += 1
    return changed
