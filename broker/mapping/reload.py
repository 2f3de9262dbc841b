"""Hot reload: a running process picks up changed mapping files without a restart.

Every file under the mappings root counts: inbound and outbound mappings, site files, the FHIR
inbound files (``fhir/``), the shared tables (``tables/*.yaml``, ``*.csv``); with layers (a
site's directory over the packaged base set), every file of every layer. A changed directory
is linted and loaded in full before it replaces what serves; a set of files with any lint
finding (as ``passerelle mappings lint`` reports it: a duplicate key that loading would silently
take, an unused value map) or that fails to load is refused with a ``mappings.rejected`` log
event naming file, line, column and problem, and the previous mappings keep serving until the
files change again. Files are looked at every second at most, on use, so a change serves within
a few seconds.

In an asyncio process (the MLLP listener, the HTTP API) call ``start()``: the files are then
looked at and reloaded by a daemon thread, so linting and loading a changed set (a few seconds
on a busy 2-core machine) never holds the event loop that answers ACKs; ``current()`` only
reads an attribute. Synchronous callers (Celery tasks) look on use.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass

from broker.audit import sink as audit_sink
from broker.errors import MappingSpecError
from broker.log import get_logger
from broker.mapping.layers import MappingRoots, layers
from broker.mapping.lint import lint
from broker.mapping.loader import MappingSet

__all__ = ["MappingWatcher", "RejectedReload"]

log = get_logger(__name__)


def _audit_rejected(rejected: RejectedReload) -> None:
    """Tell the audit trail a changed set was refused (by this process), where and why."""
    audit_sink.send(
        "mappings.rejected",
        who=f"passerelle:{os.getpid()}",
        why=rejected.reason[:500],
        details={"file": rejected.file, "line": rejected.line},
    )


def _fingerprint(directory: MappingRoots) -> tuple[tuple[str, int, int], ...]:
    """Every mapping file's path, modification time and size: cheap to take every few seconds.

    Every layer is walked afresh each time, so a file added to, changed in or removed from a
    site's directory or the base set counts.
    """
    found = []
    for root, _, files in (walked for layer in layers(directory) for walked in os.walk(layer)):
        for name in files:
            if name.endswith((".yaml", ".yml", ".csv")):
                path = os.path.join(root, name)
                try:
                    stat = os.stat(path)
                except FileNotFoundError:
                    continue  # removed while walking (an editor's temporary file): next look
                found.append((path, stat.st_mtime_ns, stat.st_size))
    return tuple(sorted(found))


@dataclass(frozen=True, slots=True)
class RejectedReload:
    """A changed set of mapping files that was refused (the previous set kept serving).

    Attributes:
        at: epoch seconds of the refusal.
        file: the file at fault, when known.
        line: its line, when known.
        reason: what is wrong (a sentence naming the problem, never message data).
    """

    at: float
    file: str | None
    line: int | None
    reason: str


class MappingWatcher:
    """Serves the current MappingSet of a directory, reloading it when its files change.

    Args:
        directory: the mappings root, or its layers (a site's directory over the base set).
        interval_s: how often the files are looked at (at most), on use.
        mappings: the set already loaded (it is checked at start-up by the caller).
    """

    def __init__(
        self, directory: MappingRoots, mappings: MappingSet, interval_s: float = 1.0
    ) -> None:
        self.directory = directory
        self.interval_s = interval_s
        self._mappings = mappings
        self._seen = _fingerprint(directory)
        self._checked = time.monotonic()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.rejected: RejectedReload | None = None
        """The last refused reload of this process, ``None`` when none was refused."""

    def start(self) -> None:
        """Look for changed files in a daemon thread from now on (idempotent)."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._watch, name="mapping-watcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread ``start()`` began (it finishes a reload in progress first)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _watch(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self._maybe_reload()
            except Exception as exc:  # never let the thread die: the next look tries again
                log.error("mappings.watch_failed", error=type(exc).__name__)

    def current(self) -> MappingSet:
        """The mappings to use now; without ``start()`` looks at the files every ``interval_s``."""
        if self._thread is not None:
            return self._mappings
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
            problems = lint(self.directory)
            if problems:
                first = problems[0]
                log.error(
                    "mappings.rejected",
                    file=first.file,
                    line=first.line,
                    col=first.col,
                    reason=first.reason,
                    problems=len(problems),
                )
                self.rejected = RejectedReload(time.time(), first.file, first.line, first.reason)
                _audit_rejected(self.rejected)
                return
            fresh = MappingSet.load(self.directory, full_validation=self._mappings.full_validation)
        except MappingSpecError as exc:
            log.error(
                "mappings.rejected", file=exc.file, line=exc.line, key=exc.key, reason=exc.reason
            )
            self.rejected = RejectedReload(time.time(), exc.file, exc.line, exc.reason)
            _audit_rejected(self.rejected)
            return
        except OSError as exc:
            log.error("mappings.rejected", error=str(exc))
            self.rejected = RejectedReload(time.time(), None, None, str(exc))
            _audit_rejected(self.rejected)
            return
        self._mappings = fresh
        fhir = fresh.fhir
        serving = [f"{r.id}@{r.sha256[:12]}" for r in fresh.refs]
        fhir_files = [f"{m.id}@{m.sha256[:12]}" for m in fhir.files()] if fhir is not None else []
        log.info("mappings.reloaded", mappings=serving, fhir=fhir_files)
        audit_sink.send(
            "mappings.reloaded",
            who=f"passerelle:{os.getpid()}",
            details={"mappings": serving, "fhir": fhir_files},
        )
