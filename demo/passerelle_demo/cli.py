"""``passerelle demo``, a plug-in command of the broker's CLI (entry-point group ``passerelle.cli``).

The broker's CLI registers :func:`demo` with ``app.command("demo")(demo)``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from broker.log import configure_logging
from broker.settings import Settings

__all__ = ["demo"]


def demo(
    data_dir: Annotated[
        Path | None, typer.Option("--data-dir", help="Where Redis data, logs and tokens live.")
    ] = None,
    messages: Annotated[int, typer.Option(help="Messages each simulated hospital sends.")] = 100,
) -> None:
    """Start the embedded system with capture subscribers, send synthetic traffic, report."""
    # Imported when the command runs: every `passerelle` command loads this module to register it.
    from passerelle_demo.demo import run_demo

    try:
        settings = Settings(data_dir=data_dir or Path("var/demo"))
    except ValueError as exc:
        typer.echo(f"passerelle: {f'invalid settings: {exc}'.splitlines()[0]}", err=True)
        raise typer.Exit(1) from None
    # The demo's own progress lines are the output.
    configure_logging(settings.log_format, "WARNING")
    sys.exit(run_demo(settings, messages))
