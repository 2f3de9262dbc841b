"""``passerelle translate``: one message through the mappings, offline; the result alone on stdout."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from broker.cli._common import MappingsOpt, fail, load_settings, log_errors_only, mapping_roots

if TYPE_CHECKING:
    from broker.mapping import SourceOptions
    from broker.settings import Settings

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
    charset: Annotated[
        str | None,
        typer.Option(help="Charset when MSH-18 is empty (default: the adapter's, else utf-8)."),
    ] = None,
    adapter: Annotated[
        str,
        typer.Option(
            "--adapter",
            help=(
                "Translate as if received from this inbound adapter: its site mappings and, when "
                "it is registered, its charset, time zone, identifier systems and "
                "on_invalid_segment, as the pipeline applies them."
            ),
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
    settings = load_settings(mappings=mappings)
    roots = mapping_roots(settings)
    source = _registration(settings, adapter, charset)
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
            charset=charset or "utf-8",
            trace=trace,
            settings=source,
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


def _registration(settings: Settings, adapter: str, charset: str | None) -> SourceOptions | None:
    """The inbound registration named ``--adapter`` as map_message reads it, if there is one.

    ``--charset``, when given, replaces the registration's. None when the adapter is not
    registered (the default ``translate``): the pipeline's defaults then apply.
    """
    from broker.adapters.spec import load_adapters
    from broker.errors import BrokerError
    from broker.mapping import SourceOptions

    if not settings.adapters_dir.is_dir():
        return None
    try:
        specs = load_adapters(settings.adapters_dir)
    except BrokerError as exc:
        fail(str(exc), every_line=True)
    spec = next((s for s in specs if s.id == adapter and s.direction == "inbound"), None)
    if spec is None:
        return None
    return SourceOptions(
        charset=charset or spec.charset,
        timezone=spec.timezone,
        identifier_systems=tuple(spec.identifier_systems),
        on_invalid_segment=spec.on_invalid_segment,
    )
