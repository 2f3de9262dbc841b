"""What ``serve`` prints once it runs: one start-up summary for the operator, without secrets."""

from __future__ import annotations

import importlib.metadata
import os
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

if TYPE_CHECKING:
    from broker.adapters.spec import AdapterSpec
    from broker.settings import Settings

__all__ = ["redact_url", "startup_summary", "where"]


def redact_url(url: str) -> str:
    """``url`` without the password of its user info (``redis://:***@host``)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def where(adapter: AdapterSpec, api_url: str) -> str:
    """Where an adapter listens or sends: ``host:port``, a URL, or the API route it is posted to."""
    if adapter.transport == "mllp":
        return (adapter.listen if adapter.direction == "inbound" else adapter.connect) or "?"
    if adapter.transport == "http":
        return f"{api_url}/inbound/{adapter.id}/{adapter.format}"
    return redact_url(adapter.url or "?")


def _version() -> str:
    try:
        return importlib.metadata.version("passerelle")
    except importlib.metadata.PackageNotFoundError:
        return "(not installed)"


def startup_summary(
    settings: Settings,
    adapters: list[AdapterSpec],
    *,
    api_url: str,
    token_file: Path | None,
    runtime_file: Path | None,
) -> str:
    """The lines ``serve`` prints once every process is started.

    Args:
        settings: the running system's settings.
        adapters: its registrations.
        api_url: the API's (and console's) URL.
        token_file: where the API token is; ``None`` when ``PASSERELLE_API_TOKEN`` gives it.
        runtime_file: where the ops commands find this system (``None``: it could not be
            written).
    """
    token = str(token_file) if token_file else "PASSERELLE_API_TOKEN (from the environment)"
    redis = (
        redact_url(settings.redis_url)
        if settings.redis_url
        else f"embedded, {settings.effective_redis_url}"
    )
    lines = [
        f"Passerelle {_version()} is running (pid {os.getpid()}); Ctrl-C or `kill {os.getpid()}` stops it.",
        f"  console and API  {api_url}",
        f"  API token        in {token}",
        f"  data directory   {settings.data_dir.resolve()}",
        f"  registrations    {settings.adapters_dir.resolve()}",
        f"  Redis            {redis}",
    ]
    for title, direction in (("listeners", "inbound"), ("subscribers", "outbound")):
        chosen = [a for a in adapters if a.direction == direction and a.enabled]
        if not chosen:
            lines.append(f"  {title:<16} none")
            continue
        width = max(len(a.id) for a in chosen)
        for i, adapter in enumerate(chosen):
            label = title if i == 0 else ""
            lines.append(
                f"  {label:<16} {adapter.id:<{width}}  {adapter.transport:<9}  {where(adapter, api_url)}"
            )
    found = f"found through {runtime_file}" if runtime_file else "with this system's PASSERELLE_*"
    lines.append(f"  on call          `passerelle status` ({found})")
    return "\n".join(lines)
