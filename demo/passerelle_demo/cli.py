"""``passerelle demo`` and ``passerelle capture``, plug-in commands of the broker's CLI (the
entry-point group ``passerelle.cli``).

The broker's CLI registers :func:`demo` with ``app.command("demo")(demo)``, and :func:`capture`
the same way.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

# Only broker.cli's light helpers at module level: every `passerelle` command (``--help``
# included) imports this module to register the command.
from broker.cli import DataDirOpt, load_settings

__all__ = ["capture", "demo"]


def demo(
    data_dir: DataDirOpt = None,
    messages: Annotated[int, typer.Option(help="Messages each simulated hospital sends.")] = 100,
    keep: Annotated[
        bool,
        typer.Option("--keep", help="Leave the system running after the report (Ctrl-C stops it)."),
    ] = False,
) -> None:
    """Start the embedded system with capture subscribers, send synthetic traffic, report."""
    # Imported when the command runs, not when it is registered.
    from broker.log import configure_logging
    from passerelle_demo.demo import run_demo

    settings = load_settings(data_dir=data_dir or Path("var/demo"))
    # The demo's own progress lines are the output.
    configure_logging(settings.log_format, "WARNING")
    sys.exit(run_demo(settings, messages, keep=keep))


_DEFAULT_PORTS = {"fhir": 9090, "mllp": 2576}
"""The ports the repository's registrations send to (``dmp-national``, ``lab-legacy``)."""
_MODES = {"fhir": ("ok", "error", "reject"), "mllp": ("ack", "error", "reject", "silent")}


def capture(
    kind: Annotated[str, typer.Argument(help="fhir (a FHIR server) or mllp (an MLLP receiver).")],
    host: Annotated[str, typer.Option(help="The address to listen on.")] = "127.0.0.1",
    port: Annotated[
        int | None,
        typer.Option(help="The port (fhir: 9090, mllp: 2576 as adapters/ sends; 0: any free)."),
    ] = None,
    mode: Annotated[
        str | None,
        typer.Option(
            help="How to answer. fhir: ok, error (503), reject (422); "
            "mllp: ack (AA), error (AE), reject (AR), silent."
        ),
    ] = None,
    show: Annotated[
        bool, typer.Option("--show", help="Print each body received (patient data!).")
    ] = False,
) -> None:
    """Run a capture subscriber on its own: print where it listens and each message it gets."""
    from broker.cli import fail
    from broker.log import configure_logging

    if kind not in _MODES:
        fail(f"capture what? {kind!r} is neither fhir nor mllp", 2)
    chosen = mode or _MODES[kind][0]
    if chosen not in _MODES[kind]:
        fail(f"--mode {chosen!r}: a {kind} capture answers {', '.join(_MODES[kind])}", 2)
    configure_logging("console", "WARNING")
    port = _DEFAULT_PORTS[kind] if port is None else port
    from passerelle_demo.peers.run import run_capture

    try:
        run_capture(kind, host, port, chosen, show=show)
    except OSError as exc:
        fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}")
