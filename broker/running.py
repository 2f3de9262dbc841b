"""The runtime file: where a running ``passerelle serve`` tells the ops commands how to reach it.

``serve`` (and ``demo --keep``) writes one small JSON file, readable by its owner only, to a
per-user place (``$XDG_STATE_HOME/passerelle/runtime.json``, ``~/.local/state/...`` by default):
its pid, the API's URL, where the API token is, and the settings it runs with (data directory,
registrations, Redis URL, partitions...), never the API token itself. A configured Redis URL
is kept as it was given, password included (the file is as private as the environment it came
from), so that the ops commands can connect. ``passerelle status``,
``replay``, ``dead-letters`` and ``ping`` lay these settings under the ``PASSERELLE_*``
environment and their options, so an operator needs no environment to find the running system,
and what they set explicitly wins. A file whose pid is gone is stale: it is ignored, with a note.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from broker.settings import Settings

__all__ = ["Runtime", "api_url", "find", "forget", "runtime_path", "token_file", "write"]

_NOT_SHARED = frozenset({"api_token", "data_key"})
"""Settings left out of the file: secrets (the token is in ``token_file``, owner-only)."""


def runtime_path() -> Path:
    """``$XDG_STATE_HOME/passerelle/runtime.json`` (``~/.local/state`` when it is not set)."""
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "passerelle" / "runtime.json"


def api_url(settings: Settings) -> str:
    """The API's base URL, which also serves the console."""
    host = settings.http_host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    elif ":" in host:
        host = f"[{host}]"
    return f"{settings.api_scheme}://{host}:{settings.http_port}"


def token_file(settings: Settings) -> Path | None:
    """Where ``serve`` keeps the API token (``ensure_api_token``), ``None`` when the settings
    give it (``PASSERELLE_API_TOKEN``)."""
    if settings.api_token is not None:
        return None
    return settings.data_dir.resolve() / "api-token"


@dataclass(frozen=True, slots=True)
class Runtime:
    """What a running ``serve`` wrote about itself.

    Attributes:
        pid: the supervisor's process id.
        started_at: when it started, ISO 8601 UTC.
        api_url: the API's (and console's) base URL.
        token_file: the file holding the API token, ``None`` when it came from the environment.
        settings: ``PASSERELLE_*`` name (lower case, no prefix) → value, as JSON, secrets left out.
        path: the file it was read from.
    """

    pid: int
    started_at: str
    api_url: str
    token_file: str | None
    settings: dict[str, Any]
    path: Path

    @property
    def alive(self) -> bool:
        """Whether a process with this pid still runs (signal 0)."""
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # another user's process with the same pid
            return True
        return True


def write(settings: Settings, *, pid: int | None = None, path: Path | None = None) -> Path:
    """Write the runtime file of the system ``settings`` describe, owner-readable only.

    Args:
        settings: the system's settings as its ``serve`` was given them (before it made up an
            API token), so ``token_file`` tells where the token is.
        pid: the supervisor's pid (this process's by default).
        path: the file (``runtime_path()`` by default).

    Returns:
        The file written.
    """
    path = path or runtime_path()
    shared = {
        name: value
        for name, value in settings.model_dump(mode="json").items()
        if name not in _NOT_SHARED and value is not None
    }
    # Relative paths are the serving process's; the reader may run elsewhere.
    shared["data_dir"] = str(settings.data_dir.resolve())
    shared["adapters_dir"] = str(settings.adapters_dir.resolve())
    if settings.mappings_dir is not None:
        shared["mappings_dir"] = str(settings.mappings_dir.resolve())
    if settings.data_key_file is not None:
        shared["data_key_file"] = str(settings.data_key_file.resolve())
    token = token_file(settings)
    document = {
        "pid": os.getpid() if pid is None else pid,
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "api_url": api_url(settings),
        "token_file": str(token) if token else None,
        "settings": shared,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".tmp")
    with contextlib.suppress(FileNotFoundError):
        partial.unlink()
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as out:
        json.dump(document, out, indent=2)
    partial.replace(path)
    return path


def forget(*, pid: int | None = None, path: Path | None = None) -> None:
    """Remove the runtime file if it is this process's (another ``serve`` may have replaced it)."""
    path = path or runtime_path()
    found = _read(path)
    if found is not None and found.pid == (os.getpid() if pid is None else pid):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def find(path: Path | None = None) -> tuple[Runtime | None, str | None]:
    """The running system's runtime file, and a note when one was found but is not used.

    Returns:
        ``(runtime, None)`` for a live one; ``(None, note)`` for a stale or unreadable file;
        ``(None, None)`` when there is none.
    """
    path = path or runtime_path()
    if not path.exists():
        return None, None
    found = _read(path)
    if found is None:
        return None, f"ignoring {path}: it is not a runtime file Passerelle wrote"
    if not found.alive:
        return None, f"ignoring {path}: the serve that wrote it (pid {found.pid}) is gone"
    return found, None


def _read(path: Path) -> Runtime | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return Runtime(
            pid=int(data["pid"]),
            started_at=str(data.get("started_at", "")),
            api_url=str(data["api_url"]),
            token_file=data.get("token_file"),
            settings=dict(data["settings"]),
            path=path,
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None
