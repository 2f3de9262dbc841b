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
    """Validate adapter registrations and mappings; print each problem as file:line: key: reason."""
    settings = load_settings(adapters=adapters, mappings=mappings)
    log_as_configured(settings)
    check_configuration(settings)
    typer.echo("configuration ok")


def check_configuration(settings: Settings) -> Config:
    """Load the configuration as every process role does (``load_config``), or exit 1.

    Run by ``check`` and before ``serve``, ``listen``, ``worker`` and ``api`` start: each
    problem is ``file:line: key: reason`` (an outbound subscriber's ``hl7_version`` that no
    outbound mapping writes among them), never a traceback.
    """
    from broker.config import load_config
    from broker.errors import BrokerError

    try:
        return load_config(settings)
    except BrokerError as exc:
        fail(str(exc), every_line=True)
