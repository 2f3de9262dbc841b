"""``passerelle check``, and the same checks before every long-running role starts."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

from broker.cli._common import AdaptersOpt, MappingsOpt, fail, load_settings, log_as_configured

if TYPE_CHECKING:
    from broker.config import Config
    from broker.settings import Settings

__all__ = ["check", "check_configuration"]


def check(adapters: AdaptersOpt = None, mappings: MappingsOpt = None) -> None:
    """Validate adapter registrations, mappings and the alert rules (PASSERELLE_ALERTS_FILE);
    print each problem as file:line: key: reason."""
    settings = load_settings(adapters=adapters, mappings=mappings)
    log_as_configured(settings)
    check_configuration(settings)
    typer.echo("configuration ok")


def check_configuration(settings: Settings) -> Config:
    """Load the configuration as every process role does (``load_config``), or exit 1.

    Run by ``check`` and before ``serve``, ``listen``, ``worker`` and ``api`` start: each
    problem is ``file:line: key: reason`` (an outbound subscriber's ``hl7_version`` that no
    outbound mapping writes among them), never a traceback. The alert rules file, when set, is
    checked too (beat re-reads it at every run, and logs a later error instead).
    """
    from broker.config import load_config
    from broker.errors import BrokerError
    from broker.ops.alerts import load_rules

    try:
        config = load_config(settings)
        load_rules(settings.alerts_file)
        return config
    except BrokerError as exc:
        fail(str(exc), every_line=True)
