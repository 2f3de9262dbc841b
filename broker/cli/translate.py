"""``passerelle translate``: one message through the mappings, offline; the result alone on stdout."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer

from broker.cli._common import MappingsOpt, fail, load_settings, log_errors_only, mapping_roots

__all__ = ["translate"]


def translate(
    file: Annotated[
        Path,
        typer.Argument(
            help="An HL7 v2 message (ER7) or a FHIR R4 resource or Bundle (JSON), detected."
        ),
    ],
    to: Annotated[str, typer.Option("--to", help="canonical | fhir | hl7v2")] = "canonical",
    mappings: MappingsOpt = None,
    charset: Annotated[str, typer.Option(help="Charset when MSH-18 is empty.")] = "utf-8",
    adapter: Annotated[
        str,
        typer.Option(
            "--adapter", help="Translate as if received from this inbound adapter (site mappings)."
        ),
    ] = "translate",
    trace: Annotated[
        bool,
        typer.Option(
            "--trace",
            help="On stderr, one line per output element: file:line source -> target = value.",
        ),
    ] = False,
    unmapped: Annotated[
        bool,
        typer.Option(
            "--unmapped",
            help=(
                "On stderr, the fields present that no rule read (FHIR: elements not kept) "
                "and the malformed segment groups dropped."
            ),
        ),
    ] = False,
    hl7_version: Annotated[
        str,
        typer.Option("--hl7-version", help="MSH-12 written with --to hl7v2 (default 2.5.1)."),
    ] = "2.5.1",
) -> None:
    """Translate one message with the mappings, offline; the result alone goes to stdout.

    --trace prints the patient's values to stderr: a dry-run tool, never for logs.
    """
    from broker.errors import BrokerError
    from broker.translate import dry_run

    log_errors_only()
    if to not in ("canonical", "fhir", "hl7v2"):
        fail(f"--to must be canonical, fhir or hl7v2, not {to!r}", 2)
    roots = mapping_roots(load_settings(mappings=mappings))
    try:
        raw = file.read_bytes()
    except OSError as exc:
        fail(f"cannot read {file}: {exc.strerror}")
    try:
        done = dry_run(
            raw,
            to=to,
            mappings_dir=roots,
            source=adapter,
            charset=charset,
            trace=trace,
            hl7_version=hl7_version,
        )
    except BrokerError as exc:
        fail(str(exc))
    out = done.output if done.output.endswith("\n") else done.output + "\n"
    # UTF-8 whatever the locale: --to hl7v2 names UNICODE UTF-8 in MSH-18, and JSON is UTF-8.
    buffer = getattr(sys.stdout, "buffer", None)
    if buffer is None:
        sys.stdout.write(out)
    else:
        sys.stdout.flush()
        buffer.write(out.encode("utf-8"))
        buffer.flush()
    here = Path.cwd()
    for step in done.trace:
        file = Path(step.file)
        shown = file.relative_to(here) if file.is_relative_to(here) else file
        typer.echo(str(replace(step, file=str(shown))), err=True)
    if trace or unmapped:
        typer.echo(f"unmapped: {', '.join(done.unmapped) or '(none)'}", err=True)
        for finding in done.findings:
            if finding.code == "segment-dropped":
                typer.echo(
                    f"dropped: {finding.location} ({finding.rule}): {finding.message}", err=True
                )
