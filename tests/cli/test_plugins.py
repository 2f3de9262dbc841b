"""Plug-in commands: the entry-point group ``passerelle.cli``, ``demo`` among them.

The plug-ins are real modules written to a temporary folder on ``sys.path`` and loaded the way
the installed command loads them: through a tiny distribution's ``entry_points.txt`` found by
importlib.metadata, or through ``broker.cli.plugins.entry_points`` answering with entry points
that name them (to leave out whatever plug-ins this environment has installed).
"""

from __future__ import annotations

import importlib.metadata
import sys
import textwrap
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import typer

from broker.cli import build_app
from broker.settings import REPO_ROOT
from broker.testing import CliRun, run_cli

DEMO_LINE = (
    "passerelle: the demo is a separate package: run `make demo` in a checkout, "
    "or `pip install 'passerelle[demo]'`"
)
"""What the brief of issue 11 asks ``passerelle demo`` to say when the demo is not installed."""

PLUGIN = '''
from typing import Annotated

import typer

from broker.cli import DataDirOpt, fail, load_settings


def hello(name: Annotated[str, typer.Option("--name")] = "world") -> None:
    """Say hello."""
    typer.echo(f"hello {name}")


def demo(messages: Annotated[int, typer.Option("--messages")] = 100) -> None:
    """A stand-in for the demo distribution's command."""
    typer.echo(f"demo of {messages} messages")


def where(data_dir: DataDirOpt = None) -> None:
    """Uses the helpers broker.cli offers plug-ins."""
    settings = load_settings(data_dir=data_dir)
    if not settings.data_dir.name.startswith("var-"):
        fail(f"{settings.data_dir} is not a var- folder", 2)
    typer.echo(settings.data_dir)


def check() -> None:
    """A plug-in that would take a built-in command's name."""
    typer.echo("not the real check")


NOT_A_FUNCTION = 42


def unreadable(
    count: Annotated[int, typer.Option("--count"), typer.Option("--number")] = 1,
) -> None:
    """typer refuses two Option annotations on one parameter."""
'''

Plugins = Callable[..., typer.Typer]


@pytest.fixture(name="module")
def fixture_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The name of a fresh plug-in module (``PLUGIN``) importable from ``tmp_path``."""
    name = f"passerelle_test_plugin_{uuid.uuid4().hex}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(PLUGIN), encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


@pytest.fixture(name="app_with")
def fixture_app_with(monkeypatch: pytest.MonkeyPatch) -> Plugins:
    """``app_with(demo="module:demo", ...)``: the app built with exactly these plug-ins."""

    def build(**objects: str) -> typer.Typer:
        found = [
            importlib.metadata.EntryPoint(name=name, value=value, group="passerelle.cli")
            for name, value in objects.items()
        ]
        monkeypatch.setattr("broker.cli.plugins.entry_points", lambda: found)
        return build_app()

    return build


def one_line(run: CliRun) -> str:
    """The single stderr line of a run that failed cleanly (exit 1, no traceback)."""
    assert run.code == 1, run
    assert not run.crashed, run.exception
    assert run.stdout == ""
    lines = run.stderr.splitlines()
    assert len(lines) == 1, run.stderr
    return lines[0]


class TestDemoMissing:
    @pytest.mark.parametrize(
        "args",
        [
            pytest.param((), id="bare"),
            pytest.param(("--messages", "10", "--data-dir", "var/x"), id="with-demo-options"),
        ],
    )
    def test_demo_says_how_to_get_it_and_exits_1(self, app_with: Plugins, args: tuple[str, ...]):
        """Without a demo plug-in, `passerelle demo` is one line saying how to get it, exit 1."""
        run = run_cli("demo", *args, app=app_with())
        assert one_line(run) == DEMO_LINE

    @pytest.mark.parametrize("args", [(), ("mllp", "--port", "0", "--show")])
    def test_capture_says_how_to_get_it_and_exits_1(self, app_with: Plugins, args):
        """Without the demo distribution, `passerelle capture` says how to get the peers."""
        run = run_cli("capture", *args, app=app_with())
        assert one_line(run) == (
            "passerelle: the capture peers come with the demo, a separate package: run "
            "`make demo` in a checkout, or `pip install 'passerelle[demo]'`"
        )

    def test_demo_is_listed(self, app_with: Plugins):
        """`passerelle --help` still lists `demo`."""
        run = run_cli("--help", app=app_with())
        assert run.code == 0, run
        assert "│ demo " in run.stdout


class TestRegisteredPlugins:
    def test_a_demo_plugin_is_the_demo_command(self, app_with: Plugins, module: str):
        """A `demo` entry point replaces the stand-in, with its own options."""
        run = run_cli("demo", "--messages", "7", app=app_with(demo=f"{module}:demo"))
        assert (run.code, run.stdout, run.stderr) == (0, "demo of 7 messages\n", "")

    def test_an_installed_distribution_adds_its_command(
        self, tmp_path: Path, module: str, monkeypatch: pytest.MonkeyPatch
    ):
        """A distribution's entry_points.txt on sys.path is read by the real lookup."""
        dist = tmp_path / "passerelle_test_plugin-0.1.dist-info"
        dist.mkdir()
        (dist / "METADATA").write_text(
            "Metadata-Version: 2.1\nName: passerelle-test-plugin\nVersion: 0.1\n", encoding="utf-8"
        )
        (dist / "entry_points.txt").write_text(
            f"[passerelle.cli]\nhello-{module} = {module}:hello\n", encoding="utf-8"
        )
        importlib.invalidate_caches()
        run = run_cli(f"hello-{module}", "--name", "Rabat", app=build_app())
        assert (run.code, run.stdout, run.stderr) == (0, "hello Rabat\n", "")

    @pytest.mark.parametrize(
        ("data_dir", "code", "stdout", "stderr"),
        [
            pytest.param("var-x", 0, "var-x\n", "", id="helpers-used"),
            pytest.param("x", 2, "", "passerelle: x is not a var- folder\n", id="fail-helper"),
        ],
    )
    def test_a_plugin_may_use_the_cli_helpers(
        self, app_with: Plugins, module: str, data_dir: str, code: int, stdout: str, stderr: str
    ):
        """A plug-in importing broker.cli's helpers loads, and fails the way built-ins do."""
        run = run_cli("where", "--data-dir", data_dir, app=app_with(where=f"{module}:where"))
        assert (run.code, run.stdout, run.stderr) == (code, stdout, stderr)

    def test_a_plugin_cannot_replace_a_builtin_command(self, app_with: Plugins, module: str):
        """A plug-in named `check` is left out: `check` is still the configuration check."""
        run = run_cli("check", app=app_with(check=f"{module}:check"))
        assert run.code == 0, run
        assert run.stdout == "configuration ok\n"


class TestBrokenPlugins:
    @pytest.mark.parametrize(
        ("value", "why"),
        [
            pytest.param(
                "passerelle_no_such_module:demo",
                "ModuleNotFoundError: No module named 'passerelle_no_such_module'",
                id="import-fails",
            ),
            pytest.param("{module}:missing", "AttributeError: ", id="no-such-function"),
            pytest.param("{module}:NOT_A_FUNCTION", "TypeError: ", id="not-a-function"),
            pytest.param(
                "{module}:unreadable",
                "MultipleTyperAnnotationsError: ",
                id="signature-typer-refuses",
            ),
        ],
    )
    def test_a_broken_plugin_is_one_line_and_the_others_work(
        self, app_with: Plugins, module: str, value: str, why: str
    ):
        """Running it: one line naming it and why, exit 1; the other commands are untouched."""
        value = value.format(module=module)
        app = app_with(broken=value, hello=f"{module}:hello")
        line = one_line(run_cli("broken", "--any", "thing", app=app))
        assert line.startswith(
            f"passerelle: the plug-in command 'broken' ({value}) cannot be loaded: {why}"
        ), line
        hello = run_cli("hello", app=app)
        assert (hello.code, hello.stdout, hello.stderr) == (0, "hello world\n", "")
        sample = REPO_ROOT / "tests" / "samples" / "hl7v2" / "adt_a04.hl7"
        translated = run_cli("translate", str(sample), "--to", "fhir", app=app)
        assert translated.code == 0, translated
        assert translated.stderr == ""
        assert '"resourceType": "Bundle"' in translated.stdout
