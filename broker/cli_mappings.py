"""``passerelle mappings lint|test``: check and test mapping files before they are deployed.

Exit codes: 0 all is well, 1 findings or failing cases, 2 usage errors (a path that does not
exist, unknown options).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from broker.errors import BrokerError

if TYPE_CHECKING:  # broker.mapping is imported by the commands, not by every CLI start
    from broker.mapping.layers import MappingRoots

__all__ = ["mappings_app"]

mappings_app = typer.Typer(
    name="mappings",
    help="Lint mapping files and run their golden test cases.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

PathArg = Annotated[
    Path | None,
    typer.Argument(
        help="A mappings root or, for lint, a file (default: the configured mappings: the "
        "base set, with PASSERELLE_MAPPINGS_DIR's files over it)."
    ),
]


def _root(path: Path | None) -> MappingRoots:
    if path is None:
        from broker.settings import Settings

        roots = Settings().mapping_roots
        missing = [root for root in roots if not root.is_dir()]
        if missing:
            typer.echo(
                f"passerelle: {missing[0]} does not exist; expected a mappings directory",
                err=True,
            )
            raise typer.Exit(2)
        return roots
    if not path.exists():
        typer.echo(f"passerelle: {path} does not exist; expected a mappings directory", err=True)
        raise typer.Exit(2)
    return path


@mappings_app.command()
def lint(path: PathArg = None) -> None:
    """Print every problem of every mapping file as file:line:col: what is wrong; expected."""
    from broker.mapping.layers import overlay
    from broker.mapping.lint import lint as run_lint

    root = _root(path)
    if not (isinstance(root, Path) and root.is_file()) and not overlay(
        root, suffixes=(".yaml", ".yml", ".csv")
    ):
        typer.echo(
            f"passerelle: no mapping files (*.yaml) under {root}; "
            "expected a mappings root or a mapping file",
            err=True,
        )
        raise typer.Exit(2)
    problems = run_lint(root)
    for problem in problems:
        typer.echo(str(problem))
    if problems:
        files = len({p.file for p in problems})
        typer.echo(f"{len(problems)} problem(s) in {files} file(s)", err=True)
        raise typer.Exit(1)
    typer.echo("no problems", err=True)


@mappings_app.command("test")
def run_tests(
    path: PathArg = None,
    update: Annotated[
        bool, typer.Option("--update", help="Write each case's actual output as expected.")
    ] = False,
) -> None:
    """Run every golden case in PATH/tests/; print a unified diff for each mismatch."""
    from broker.mapping.golden import run_cases
    from broker.mapping.layers import layers

    root = _root(path)
    if not any((layer / "tests").is_dir() for layer in layers(root)):
        shown = ", ".join(str(layer) for layer in layers(root))
        typer.echo(
            f"passerelle: {shown} has no tests/ folder; expected a mappings root whose golden "
            "cases are in PATH/tests/",
            err=True,
        )
        raise typer.Exit(2)
    try:
        results = run_cases(root, update=update)
    except BrokerError as exc:
        typer.echo(f"passerelle: {str(exc).splitlines()[0]}", err=True)
        raise typer.Exit(1) from None
    failed = [r for r in results if not r.passed]
    for result in failed:
        typer.echo(result.diff, nl=False)
    passed = len(results) - len(failed)
    where = ", ".join(str(t) for layer in layers(root) if (t := layer / "tests").is_dir())
    typer.echo(f"{passed} passed, {len(failed)} failed, {len(results)} golden case(s) in {where}")
    if failed or not results:
        raise typer.Exit(1)
