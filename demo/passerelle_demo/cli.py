"""``passerelle demo``, a plug-in command of the broker's CLI (entry-point group ``passerelle.cli``).

The broker's CLI registers :func:`demo` with ``app.command("demo")(demo)``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

# Only broker.cli's light helpers at module level: every `passerelle` command (``--help``
# included) imports this module to register the command.
from broker.cli import DataDirOpt, load_settings

__all__ = ["demo"]


def demo(
    data_dir: DataDirOpt = None,
    messages: Annotated[int, typer.Option(help="Messages each simulated hospital sends.")] = 100,
) -> None:
    """Start the embedded system with capture subscribers, send synthetic traffic, report."""
    # Imported when the command runs, not when it is registered.
    from broker.log import configure_logging
    from passerelle_demo.demo import run_demo

    settings = load_settings(data_dir=data_dir or Path("var/demo"))
    # The demo's own progress lines are the output.
    configure_logging(settings.log_format, "WARNING")
    sys.exit(run_demo(settings, messages))
