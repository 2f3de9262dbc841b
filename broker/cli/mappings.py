"""``passerelle mappings lint|test|review|style``: check and test mapping files before they are deployed.

Exit codes: 0 all is well, 1 findings, failing or unreviewed cases, a refused review, 2 usage
errors (a path that does not exist, unknown options).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from broker.cli._common import fail, load_settings, mapping_roots, print_json
from broker.errors import BrokerError

if TYPE_CHECKING:  # broker.mapping is imported by the commands, not by every CLI start
    from broker.mapping.layers import MappingRoots

__all__ = ["mappings_app"]

mappings_app = typer.Typer(
    name="mappings",
    help="Lint mapping files, run and review their golden test cases, check the FHIR they write.",
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
    """The mappings ``path`` names (exit 2 when it does not exist), or the configured ones."""
    if path is None:
        return mapping_roots(load_settings())
    if not path.exists():
        fail(f"{path} does not exist; expected a mappings directory", 2)
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
        fail(
            f"no mapping files (*.yaml) under {root}; expected a mappings root or a mapping file",
            2,
        )
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
        bool,
        typer.Option(
            "--update",
            help="Write each case's actual output as expected (a changed file is then unreviewed).",
        ),
    ] = False,
) -> None:
    """Run every golden case in PATH/tests/: one line per case (passed, failed, unreviewed).

    A failed case's unified diff follows its line. An unreviewed case maps to its expected file
    but no review in tests/reviews.yaml holds that file's hash: `passerelle mappings review`.
    """
    from broker.mapping.golden import run_cases
    from broker.mapping.layers import layers

    root = _root(path)
    if not any((layer / "tests").is_dir() for layer in layers(root)):
        shown = ", ".join(str(layer) for layer in layers(root))
        fail(
            f"{shown} has no tests/ folder; expected a mappings root whose golden cases are in "
            "PATH/tests/",
            2,
        )
    try:
        results = run_cases(root, update=update)
    except BrokerError as exc:
        for problem in getattr(exc, "problems", [exc]):
            typer.echo(f"passerelle: {str(problem).splitlines()[0]}", err=True)
        raise typer.Exit(1) from None
    for result in results:
        why = f": {result.why}" if result.why else ""
        typer.echo(f"{result.status.upper():<10} {result.key}{why}")
        if result.diff:
            typer.echo(result.diff, nl=False)
    count = {s: sum(r.status == s for r in results) for s in ("passed", "failed", "unreviewed")}
    where = ", ".join(str(t) for layer in layers(root) if (t := layer / "tests").is_dir())
    typer.echo(
        f"{count['passed']} passed, {count['failed']} failed, {count['unreviewed']} unreviewed, "
        f"{len(results)} golden case(s) in {where}"
    )
    if count["unreviewed"]:
        typer.echo(
            "unreviewed: check each against mappings/tests/README.md, then "
            "`passerelle mappings review CASE... --by NAME --against WHAT`",
            err=True,
        )
    if count["failed"] or count["unreviewed"] or not results:
        raise typer.Exit(1)


@mappings_app.command("review")
def review(
    case: Annotated[
        list[str], typer.Argument(help="Case keys: the path under tests/ without suffix (adt_a01).")
    ],
    by: Annotated[str, typer.Option("--by", help="Who reviewed.")],
    against: Annotated[
        list[str],
        typer.Option(
            "--against",
            help="What the output was checked against (repeat): the input's meaning, the "
            "v2-to-FHIR IG map, the code system.",
        ),
    ],
    note: Annotated[str | None, typer.Option("--note", help="Anything worth keeping.")] = None,
    path: Annotated[
        Path | None,
        typer.Option("--mappings", help="The mappings root (default: the configured mappings)."),
    ] = None,
) -> None:
    """Record that CASE's expected file was reviewed: its SHA-256 in tests/reviews.yaml.

    Refused (exit 1, nothing written) when a case's output differs from its expected file.
    """
    from broker.mapping.golden import review_cases

    root = _root(path)
    try:
        done = review_cases(root, case, by=by, against=against, note=note)
    except BrokerError as exc:
        fail(str(exc))
    for key, record in done:
        typer.echo(f"reviewed {key} sha256 {record.sha256} on {record.reviewed} by {record.by}")


@mappings_app.command("style")
def style(
    paths: Annotated[
        list[Path],
        typer.Argument(
            metavar="PATHS...", help="HL7 v2 messages or FHIR JSON inputs, or folders of them."
        ),
    ],
    adapter: Annotated[
        str, typer.Option("--adapter", help="Map as if received from this inbound adapter.")
    ] = "style",
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON array of {file, path, rule, detail}.")
    ] = False,
    mappings: Annotated[
        Path | None,
        typer.Option("--mappings", help="The mappings root (default: the configured mappings)."),
    ] = None,
) -> None:
    """Map each message and print every HL7 leftover, Coding or Identifier without a system.

    One line per finding: file: FHIR path: rule: detail. Exit 1 when there is any finding or a
    message the mappings refuse (reported on stderr).
    """
    from broker.mapping.loader import MappingSet
    from broker.mapping.style import style_of_file

    files: list[Path] = []
    for given in paths:
        if not given.exists():
            fail(f"{given} does not exist; expected a message or a folder", 2)
        if given.is_dir():
            files += sorted(
                p
                for p in given.rglob("*")
                if p.suffix in (".hl7", ".json") and not p.name.endswith(".expected.json")
            )
        else:
            files.append(given)
    try:
        loaded = MappingSet.load(_root(mappings))
    except BrokerError as exc:
        fail(str(exc))
    rows: list[dict[str, str]] = []
    refused = 0
    for file in files:
        try:
            findings = style_of_file(loaded, file, adapter)
        except BrokerError as exc:
            refused += 1
            typer.echo(f"passerelle: {file}: refused: {str(exc).splitlines()[0]}", err=True)
            continue
        rows += [
            {"file": str(file), "path": f.path, "rule": f.rule, "detail": f.detail}
            for f in findings
        ]
    if as_json:
        print_json(rows)
    else:
        for row in rows:
            typer.echo(f"{row['file']}: {row['path']}: {row['rule']}: {row['detail']}")
    typer.echo(f"{len(rows)} finding(s) in {len(files)} message(s), {refused} refused", err=True)
    if rows or refused:
        raise typer.Exit(1)
