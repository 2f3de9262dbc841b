"""``passerelle serve | listen | worker | beat | api``: the broker's long-running roles.

Each role but ``beat`` runs the checks of ``passerelle check`` first and refuses to start on a
configuration ``check`` refuses. Celery, uvicorn and the broker's parts are imported by the
role that runs them.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from broker.cli._common import (
    AdaptersOpt,
    DataDirOpt,
    MappingsOpt,
    PortOpt,
    fail,
    load_settings,
    log_as_configured,
)
from broker.cli.check import check_configuration

if TYPE_CHECKING:
    from broker.settings import Settings

__all__ = ["api", "beat", "listen", "serve", "worker"]


def _checked(
    adapters: Path | None = None,
    mappings: Path | None = None,
    data_dir: Path | None = None,
    http_port: int | None = None,
) -> Settings:
    """The role's settings, logging set up from them, once the configuration is checked."""
    from broker.filemodes import private_process

    private_process()  # every file a long-running role creates is owner-only
    settings = load_settings(
        adapters=adapters, mappings=mappings, data_dir=data_dir, http_port=http_port
    )
    log_as_configured(settings)
    check_configuration(settings)
    return settings


def serve(
    adapters: AdaptersOpt = None,
    mappings: MappingsOpt = None,
    data_dir: DataDirOpt = None,
    http_port: PortOpt = None,
) -> None:
    """Run the whole system on this machine: Redis, listeners, workers, beat and the API.

    Once started it prints one summary (console URL, where the API token is, listeners,
    subscribers) and writes the runtime file the ops commands find it by (``broker.running``).
    """
    import typer

    from broker import running
    from broker.adapters.spec import load_adapters
    from broker.cli.summary import startup_summary
    from broker.errors import BrokerError
    from broker.supervisor import Supervisor

    settings = _checked(adapters, mappings, data_dir, http_port)  # sets the owner-only umask
    _https(settings)  # before any process starts: the API child would fail alone
    supervisor = Supervisor(settings)
    try:
        supervisor.start()
    except BrokerError as exc:
        supervisor.stop()
        fail(str(exc), every_line=True)
    try:
        path: Path | None = running.write(settings)
    except OSError as exc:
        path = None
        typer.echo(
            f"passerelle: note: no runtime file ({exc}); the ops commands need the "
            "PASSERELLE_* settings to find this system",
            err=True,
        )
    try:
        summary = startup_summary(
            settings,
            load_adapters(settings.adapters_dir),
            api_url=running.api_url(settings),
            token_file=running.token_file(settings),
            runtime_file=path,
        )
        typer.echo(summary)
        supervisor.run_forever()
    finally:
        running.forget()


def _https(settings: Settings) -> dict[str, Any]:
    """uvicorn's TLS options (``broker.api.https``), or exit 1 naming the unusable file."""
    from broker.api.https import server_tls
    from broker.errors import ConfigurationError

    try:
        return server_tls(settings)
    except ConfigurationError as exc:
        fail(str(exc))


def listen(adapters: AdaptersOpt = None, mappings: MappingsOpt = None) -> None:
    """Run only the inbound listeners (scale-out: needs PASSERELLE_REDIS_URL)."""
    from broker.listen import run_listeners

    run_listeners(_checked(adapters, mappings))


def worker(adapters: AdaptersOpt = None, mappings: MappingsOpt = None) -> None:
    """Run Celery worker processes that drain the journal and deliver to subscribers."""
    from broker.worker.celery_app import create_celery

    settings = _checked(adapters, mappings)
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


def beat() -> None:
    """Run Celery beat: the periodic re-kick of streams with lag or a dead drainer's entries."""
    from broker.filemodes import private_process
    from broker.worker.celery_app import create_celery

    private_process()
    settings = load_settings()
    log_as_configured(settings)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    celery = create_celery(settings)
    schedule = settings.data_dir.resolve() / "celerybeat-schedule"
    celery.start(["beat", f"--schedule={schedule}", f"--loglevel={settings.log_level}"])


def api(
    adapters: AdaptersOpt = None,
    mappings: MappingsOpt = None,
    data_dir: DataDirOpt = None,
    http_port: PortOpt = None,
) -> None:
    """Run the HTTP API (health, metrics, queues, messages, inbound http adapters)."""
    import uvicorn

    from broker.api import create_app
    from broker.intake import offload
    from broker.supervisor import ensure_api_token

    settings = ensure_api_token(_checked(adapters, mappings, data_dir, http_port))
    tls = _https(settings)
    offload.configure(settings.parse_processes)
    offload.start()  # the first large inbound message does not pay for it
    uvicorn.run(
        create_app(settings),
        host=settings.http_host,
        port=settings.http_port,
        log_level="warning",
        # The root logger's handler (broker.log) strips tracebacks; uvicorn's own would print them.
        log_config=None,
        limit_concurrency=settings.http_limit_concurrency,
        timeout_keep_alive=settings.http_keep_alive_s,
        **tls,
    )
