"""``passerelle``: serve the broker, run its parts alone, translate offline, check configuration."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any

import typer

from broker.cli.mappings import mappings_app
from broker.cli.dead_letters import dead_letters_app, replay_command
from broker.errors import BrokerError
from broker.log import configure_logging
from broker.settings import Settings

__all__ = ["app", "main"]

app = typer.Typer(
    name="passerelle",
    help="Passerelle: HL7 v2 / FHIR R4 interoperability message broker.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

AdaptersOpt = Annotated[
    Path | None, typer.Option("--adapters", help="Directory of adapter registrations.")
]
MappingsOpt = Annotated[
    Path | None,
    typer.Option(
        "--mappings",
        help="A site's mapping files, loaded over the base set shipped in the package; "
        "a file at the same relative path replaces the base's.",
    ),
]
DataDirOpt = Annotated[
    Path | None, typer.Option("--data-dir", help="Where Redis data, logs and tokens live.")
]
PortOpt = Annotated[int | None, typer.Option("--http-port", help="Port of the HTTP API.")]


def _settings(
    adapters: Path | None = None,
    mappings: Path | None = None,
    data_dir: Path | None = None,
    http_port: int | None = None,
) -> Settings:
    overrides: dict[str, Any] = {}
    if adapters is not None:
        overrides["adapters_dir"] = adapters.resolve()
    if mappings is not None:
        overrides["mappings_dir"] = mappings.resolve()
    if data_dir is not None:
        overrides["data_dir"] = data_dir
    if http_port is not None:
        overrides["http_port"] = http_port
    try:
        settings = Settings(**overrides)
    except ValueError as exc:
        _fail(f"invalid settings: {exc}".splitlines()[0])
    configure_logging(settings.log_format, settings.log_level)
    return settings


def _fail(message: str, code: int = 1) -> Any:
    typer.echo(f"passerelle: {message}", err=True)
    raise typer.Exit(code)


@app.command()
def serve(
    adapters: AdaptersOpt = None,
    mappings: MappingsOpt = None,
    data_dir: DataDirOpt = None,
    http_port: PortOpt = None,
) -> None:
    """Run the whole system on this machine: Redis, listeners, workers, beat and the API."""
    from broker.supervisor import Supervisor

    settings = _settings(adapters, mappings, data_dir, http_port)
    _check(settings)
    supervisor = Supervisor(settings)
    try:
        supervisor.start()
    except BrokerError as exc:
        supervisor.stop()
        _fail(str(exc))
    supervisor.run_forever()


@app.command()
def listen(adapters: AdaptersOpt = None, mappings: MappingsOpt = None) -> None:
    """Run only the inbound listeners (scale-out: needs PASSERELLE_REDIS_URL)."""
    from broker.listen import run_listeners

    settings = _settings(adapters, mappings)
    _check(settings)
    run_listeners(settings)


@app.command()
def worker(adapters: AdaptersOpt = None, mappings: MappingsOpt = None) -> None:
    """Run Celery worker processes that drain the journal and deliver to subscribers."""
    from broker.worker.celery_app import create_celery

    settings = _settings(adapters, mappings)
    _check(settings)
    celery = create_celery(settings, register_tasks=True)
    celery.worker_main(
        [
            "worker",
            f"--concurrency={settings.workers}",
            "--pool=prefork",
            "--queues=passerelle",
            "--hostname=passerelle@%h",
            "--without-gossip",
            "--without-mingle",
            f"--loglevel={settings.log_level}",
        ]
    )


@app.command()
def beat() -> None:
    """Run Celery beat: the periodic re-kick of streams with lag or a dead drainer's entries."""
    from broker.worker.celery_app import create_celery

    settings = _settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    celery = create_celery(settings)
    schedule = settings.data_dir.resolve() / "celerybeat-schedule"
    celery.start(["beat", f"--schedule={schedule}", f"--loglevel={settings.log_level}"])


@app.command()
def api(
    adapters: AdaptersOpt = None,
    mappings: MappingsOpt = None,
    data_dir: DataDirOpt = None,
    http_port: PortOpt = None,
) -> None:
    """Run the HTTP API (health, metrics, queues, messages, inbound http adapters)."""
    import uvicorn

    from broker.api import create_app
    from broker.supervisor import ensure_api_token

    settings = _settings(adapters, mappings, data_dir, http_port)
    _check(settings)
    settings = ensure_api_token(settings)
    uvicorn.run(
        create_app(settings), host=settings.http_host, port=settings.http_port, log_level="warning"
    )


@app.command()
def check(adapters: AdaptersOpt = None, mappings: MappingsOpt = None) -> None:
    """Validate adapter registrations and mappings; print each problem as file:line: key: reason."""
    settings = _settings(adapters, mappings)
    _check(settings)
    typer.echo("configuration ok")


def _check(settings: Settings) -> None:
    """Load the mappings and the registrations as every process does, or exit 1 with one line.

    Run by ``check`` and before ``serve``, ``listen``, ``worker`` and ``api`` start: each
    problem is ``file:line: key: reason`` (an outbound subscriber's ``hl7_version`` that no
    outbound mapping writes among them), never a traceback.
    """
    from broker.adapters.spec import load_adapters
    from broker.mapping import MappingSet

    try:
        mapping_set = MappingSet.load(settings.mapping_roots)
        load_adapters(settings.adapters_dir, hl7_versions=mapping_set.hl7_versions)
    except BrokerError as exc:
        _fail(str(exc))


@app.command()
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
    from broker.translate import dry_run

    # stdout carries the result alone; anything a library logs goes to stderr, errors only.
    configure_logging("console", "ERROR")
    if to not in ("canonical", "fhir", "hl7v2"):
        _fail(f"--to must be canonical, fhir or hl7v2, not {to!r}", 2)
    try:
        settings = Settings(mappings_dir=mappings.resolve()) if mappings else Settings()
    except ValueError as exc:
        _fail(f"invalid settings: {exc}".splitlines()[0])
    for root in settings.mapping_roots:
        if not root.is_dir():
            _fail(f"{root} does not exist; expected a mappings directory", 2)
    try:
        raw = file.read_bytes()
    except OSError as exc:
        _fail(f"cannot read {file}: {exc.strerror}")
    try:
        done = dry_run(
            raw,
            to=to,
            mappings_dir=settings.mapping_roots,
            source=adapter,
            charset=charset,
            trace=trace,
            hl7_version=hl7_version,
        )
    except BrokerError as exc:
        _fail(str(exc).splitlines()[0])
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


@app.command()
def demo(
    data_dir: DataDirOpt = None,
    messages: Annotated[int, typer.Option(help="Messages each simulated hospital sends.")] = 100,
) -> None:
    """Start the embedded system with capture subscribers, send synthetic traffic, report."""
    from broker.demo import run_demo

    settings = _settings(data_dir=data_dir or Path("var/demo"))
    configure_logging(
        settings.log_format, "WARNING"
    )  # the demo's own progress lines are the output
    sys.exit(run_demo(settings, messages))


app.add_typer(mappings_app, name="mappings")
app.add_typer(dead_letters_app, name="dead-letters")
app.command("replay")(replay_command)


def main() -> None:
    """Entry point of the ``passerelle`` command."""
    app()
