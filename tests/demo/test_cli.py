"""``passerelle demo`` is a plug-in command: an entry point of the group ``passerelle.cli``."""

from __future__ import annotations

import importlib.metadata
from typing import Any

import typer
from typer.testing import CliRunner

from passerelle_demo.cli import demo


def _entry_point() -> importlib.metadata.EntryPoint:
    (found,) = importlib.metadata.entry_points(group="passerelle.cli", name="demo")
    return found


def test_the_demo_command_is_declared_in_the_passerelle_cli_group() -> None:
    """The installed distribution names passerelle_demo.cli:demo under ``passerelle.cli``."""
    entry = _entry_point()
    assert entry.value == "passerelle_demo.cli:demo"
    assert entry.dist is not None
    assert entry.dist.name == "passerelle-demo"
    assert entry.load() is demo


def test_typer_registers_the_function_with_the_options_of_the_demo() -> None:
    """``app.command("demo")(function)`` gives `demo --data-dir PATH --messages N --keep`."""
    app = typer.Typer()
    app.command("demo")(_entry_point().load())

    @app.command("other")
    def other() -> None:
        """A second command, so that typer keeps `demo` as a subcommand name."""

    group: Any = typer.main.get_command(app)
    options = {p.name: (p.opts, p.default) for p in group.commands["demo"].params}
    assert options == {
        "data_dir": (["--data-dir"], None),
        "messages": (["--messages"], 100),
        "keep": (["--keep"], False),
    }


def test_invalid_settings_end_the_command_with_one_line() -> None:
    """A bad PASSERELLE_ setting is one `passerelle: invalid settings` line and exit code 1."""
    app = typer.Typer()
    app.command("demo")(demo)

    @app.command("other")
    def other() -> None:
        """A second command, so that typer keeps `demo` as a subcommand name."""

    done = CliRunner().invoke(app, ["demo"], env={"PASSERELLE_HTTP_PORT": "not-a-port"})
    assert done.exit_code == 1, done.output
    assert done.stderr.startswith("passerelle: invalid settings:"), done.stderr
    assert len(done.stderr.splitlines()) == 1, done.stderr
