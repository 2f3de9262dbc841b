"""Hot reload: a running process picks up changed mapping files without a restart.

A changed directory is loaded and checked in full before it replaces what serves; a set of files
that fails to load is refused with a log event naming file, line and problem, and the previous
mappings keep serving until the files change again.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from broker.errors import MappingSpecError
from broker.log import get_logger
from broker.mapping.loader import MappingSet

__all__ = ["MappingWatcher"]

log = get_logger(__name__)


def _fingerprint(directory: Path) -> tuple[tuple[str, int, int], ...]:
    """Every mapping file's path, modification time and size: cheap to take every few seconds."""
    found = []
    for root, _, files in os.walk(directory):
        for name in files:
            if name.endswith((".yaml", ".yml", ".csv")):
                stat = os.stat(os.path.join(root, name))
                found.append((os.path.join(root, name), stat.st_mtime_ns, stat.st_size))
    return tuple(sorted(found))


class MappingWatcher:
    """Serves the current MappingSet of a directory, reloading it when its files change.

    Args:
        directory: the mappings root.
        interval_s: how often the files are looked at (at most), on use.
        mappings: the set already loaded (it is checked at start-up by the caller).
    """

    def __init__(self, directory: Path, mappings: MappingSet, interval_s: float = 2.0) -> None:
        self.directory = directory
        self.interval_s = interval_s
        self._mappings = mappings
        self._seen = _fingerprint(directory)
        self._checked = time.monotonic()

    def current(self) -> MappingSet:
        """The mappings to use now; looks for changed files at most every ``interval_s``."""
        now = time.monotonic()
        if now - self._checked >= self.interval_s:
            self._checked = now
            self._maybe_reload()
        return self._mappings

    def _maybe_reload(self) -> None:
        seen = _fingerprint(self.directory)
        if seen == self._seen:
            return
        self._seen = seen
        try:
            fresh = MappingSet.load(self.directory, full_validation=self._mappings.full_validation)
        except MappingSpecError as exc:
            log.error(
                "mappings.rejected", file=exc.file, line=exc.line, key=exc.key, reason=exc.reason
            )
            return
        except OSError as exc:
            log.error("mappings.rejected", error=str(exc))
            return
        self._mappings = fresh
        fhir = fresh.fhir
        log.info(
            "mappings.reloaded",
            mappings=[f"{r.id}@{r.sha256[:12]}" for r in fresh.refs],
            fhir=[f"{m.id}@{m.sha256[:12]}" for m in fhir.files()] if fhir is not None else [],
        )
