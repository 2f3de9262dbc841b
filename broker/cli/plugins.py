"""Commands other distributions add to ``passerelle``: the entry-point group ``passerelle.cli``.

A distribution declares one entry point per command: the name is the command's name, the object
a plain function with typer annotations, registered as ``app.command(name)(function)``::

    [project.entry-points."passerelle.cli"]
    demo = "passerelle_demo.cli:demo"

Its module is imported whenever ``passerelle`` starts, so it imports what is heavy inside the
function. A plug-in that cannot be loaded (its import fails, or it is not a command) breaks no
other command: its name stays, and running it prints one line saying why and exits 1. A
plug-in cannot replace a built-in command. Without the demo distribution, ``passerelle demo``
and ``passerelle capture`` (its capture peers) say how to get it.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import typer

from broker.cli._common import fail

if TYPE_CHECKING:
    from typer.models import CommandInfo

__all__ = ["CAPTURE_MISSING", "DEMO_MISSING", "GROUP", "entry_points", "register_plugins"]

GROUP = "passerelle.cli"
"""The entry-point group ``passerelle`` reads its plug-in commands from."""

DEMO_MISSING = (
    "the demo is a separate package: run `make demo` in a checkout, "
    "or `pip install 'passerelle[demo]'`"
)
"""What ``passerelle demo`` says when no distribution provides the demo."""

CAPTURE_MISSING = (
    "the capture peers come with the demo, a separate package: run `make demo` in a checkout, "
    "or `pip install 'passerelle[demo]'`"
)
"""What ``passerelle capture`` says when the demo distribution is not installed."""

_STAND_INS = {
    "demo": ("Not installed here: says how to get the demo (a separate package).", DEMO_MISSING),
    "capture": (
        "Not installed here: says how to get the capture peers (the demo package).",
        CAPTURE_MISSING,
    ),
}

# A stand-in accepts whatever it is given, so `demo --messages 10` gets its line, not a usage error.
_ANY_ARGUMENTS = {"allow_extra_args": True, "ignore_unknown_options": True}


def entry_points() -> Iterable[importlib.metadata.EntryPoint]:
    """The entry points of the group ``passerelle.cli`` of every installed distribution."""
    return importlib.metadata.entry_points(group=GROUP)


def register_plugins(app: typer.Typer) -> None:
    """Add each plug-in command to ``app``, a stand-in for each broken one, and ``demo``.

    Called once the built-in commands are on ``app``; a plug-in named as one of them, or as a
    plug-in already added, is left out.
    """
    taken = {_name_of(info) for info in app.registered_commands}
    taken |= {info.name for info in app.registered_groups if info.name}
    for entry_point in entry_points():
        name = entry_point.name
        if name in taken:
            continue
        taken.add(name)
        try:
            command = _load(entry_point)
        # Whatever a plug-in's import raises is its own failure, not every command's.
        except Exception as exc:
            why = f"{type(exc).__name__}: {exc}"
            line = f"the plug-in command {name!r} ({entry_point.value}) cannot be loaded: {why}"
            help_ = f"Not available: the plug-in {entry_point.value} cannot be loaded."
            app.command(name, help=help_, context_settings=_ANY_ARGUMENTS)(_saying(line))
        else:
            app.command(name)(command)
    for name, (help_, line) in _STAND_INS.items():
        if name not in taken:
            app.command(name, help=help_, context_settings=_ANY_ARGUMENTS)(_saying(line))


def _name_of(info: CommandInfo) -> str:
    """A registered command's name: the one given, or typer's from its function's name."""
    if info.name:
        return info.name
    return typer.main.get_command_name(getattr(info.callback, "__name__", ""))


def _load(entry_point: importlib.metadata.EntryPoint) -> Callable[..., Any]:
    """Import the plug-in's function and check that typer can make a command of it.

    Raises:
        Exception: Whatever importing it raises; ``TypeError`` when it is not a function;
            what typer raises on a signature it cannot read (when the app runs, that would
            stop every command).
    """
    command = entry_point.load()
    if not callable(command):
        msg = f"{entry_point.value} is a {type(command).__name__}, not a function"
        raise TypeError(msg)
    probe = typer.Typer()
    probe.command(entry_point.name)(command)
    typer.main.get_command(probe)
    return command  # type: ignore[no-any-return]


def _saying(line: str) -> Callable[[], None]:
    """A command that prints ``passerelle: LINE`` on stderr and exits 1."""

    def stand_in() -> None:
        fail(line)

    return stand_in
