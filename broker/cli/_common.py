"""What every ``passerelle`` command shares: settings, the one-line failure, JSON, option types.

A command fails one way: one line ``passerelle: what went wrong`` on stderr and an exit code
(1 refused or failed, 2 a usage error), never a traceback. Settings come from the
``PASSERELLE_*`` environment with the command's options laid over it. ``broker.settings`` and
``broker.log`` (pydantic, structlog) are imported when a command runs, not by every CLI start.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

if TYPE_CHECKING:
    import sqlalchemy

    from broker.settings import Settings

__all__ = [
    "AdaptersOpt",
    "DataDirOpt",
    "MappingsOpt",
    "PortOpt",
    "content_reason",
    "fail",
    "load_settings",
    "log_as_configured",
    "log_errors_only",
    "mapping_roots",
    "open_store",
    "print_json",
]

AdaptersOpt = Annotated[
    Path | None, typer.Option("--adapters", help="Directory of adapter registrations.")
]
MappingsOpt = Annotated[
    Path | None,
    typer.Option(
        "--mappings",
        help="A site's mapping files, loaded over the base set shipped in the package; "
        "a file at the same relative path replaces the base's.",
    ),
]
DataDirOpt = Annotated[
    Path | None, typer.Option("--data-dir", help="Where Redis data, logs and tokens live.")
]
PortOpt = Annotated[int | None, typer.Option("--http-port", help="Port of the HTTP API.")]


def content_reason(reason: str | None) -> str | None:
    """``--reason`` checked (``broker.audit.reasons``): ``None`` when not given; exit 2 with
    its problem when it is blank or too short to say anything."""
    from broker.audit.reasons import ReasonError, check_reason

    if reason is None:
        return None
    try:
        return check_reason(reason)
    except ReasonError as exc:
        fail(f"--reason: {exc}", 2)


def fail(message: str, code: int = 1, *, every_line: bool = False) -> NoReturn:
    """Print ``passerelle: MESSAGE`` on stderr and exit with ``code``.

    Args:
        message: What went wrong; only its first line is printed unless ``every_line``.
        code: 1 refused or failed, 2 a usage error.
        every_line: Print every line: a configuration error lists one problem per line.

    Raises:
        typer.Exit: Always, with ``code``.
    """
    text = f"passerelle: {message}"
    typer.echo(text if every_line else text.splitlines()[0], err=True)
    raise typer.Exit(code)


def load_settings(
    *,
    adapters: Path | None = None,
    mappings: Path | None = None,
    data_dir: Path | None = None,
    http_port: int | None = None,
    running: bool = False,
) -> Settings:
    """The settings from the ``PASSERELLE_*`` environment, with the options given laid over it.

    Args:
        adapters: ``--adapters``.
        mappings: ``--mappings``.
        data_dir: ``--data-dir``.
        http_port: ``--http-port``.
        running: a command on the running system (``status``, ``replay``...): the settings of
            the running ``serve`` (its runtime file, ``broker.running``) go under the
            environment and the options, which win; a stale file is ignored with a note.

    Exits 1 with one line (``invalid settings: ...``) when a value is invalid.
    """
    from broker.settings import Settings

    overrides: dict[str, Any] = _running_settings() if running else {}
    if adapters is not None:
        overrides["adapters_dir"] = adapters.resolve()
    if mappings is not None:
        overrides["mappings_dir"] = mappings.resolve()
    if data_dir is not None:
        overrides["data_dir"] = data_dir
    if http_port is not None:
        overrides["http_port"] = http_port
    try:
        settings = Settings(**overrides)
    except ValueError as exc:
        fail(f"invalid settings: {exc}")
    from broker.datakeys import use_later

    use_later(settings)  # the keys these settings name open and seal bodies in this process
    return settings


def _running_settings() -> dict[str, Any]:
    """The running ``serve``'s settings that neither the environment nor an option sets."""
    import os

    from broker import running
    from broker.settings import Settings

    found, note = running.find()
    if note is not None:
        typer.echo(f"passerelle: note: {note}", err=True)
    if found is None:
        return {}
    explicit = {name.upper() for name in os.environ}
    return {
        name: value
        for name, value in found.settings.items()
        if name in Settings.model_fields and f"PASSERELLE_{name.upper()}" not in explicit
    }


def mapping_roots(settings: Settings) -> tuple[Path, ...]:
    """The settings' mapping layers, or exit 2 naming the first that is not a directory."""
    for root in settings.mapping_roots:
        if not root.is_dir():
            fail(f"{root} does not exist; expected a mappings directory", 2)
    return settings.mapping_roots


def log_as_configured(settings: Settings) -> None:
    """Log as the settings say (``log_format``, ``log_level``): what a process role does."""
    from broker import log

    log.configure_logging(settings.log_format, settings.log_level)


def log_errors_only() -> None:
    """Let libraries log errors only, to stderr: stdout carries the command's result alone."""
    from broker import log

    log.configure_logging("console", "ERROR")


def open_store(data_dir: Path | None) -> tuple[Settings, sqlalchemy.Engine]:
    """The settings and the message store they name, its schema checked; exit 1 with one line
    when the store cannot be used (unreachable, or its schema not current)."""
    from broker.errors import BrokerError
    from broker.store import check_current, connect

    log_errors_only()
    settings = load_settings(data_dir=data_dir)
    try:
        engine = connect(settings.effective_store_url)
        check_current(engine)
    except BrokerError as exc:
        fail(str(exc))
    return settings, engine


def print_json(data: Any) -> None:
    """Print ``data`` on stdout as indented JSON, non-ASCII characters kept as they are."""
    sys.stdout.write(json.dumps(data, ensure_ascii=False, indent=2) + "\n")
