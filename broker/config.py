"""The loaded configuration every process role uses: settings, registrations and mappings.

``load_config(settings)`` is the one way a process loads what it runs with, and it runs the
checks of ``passerelle check``: the mappings load (every file of every layer, or a
``MappingSpecError`` naming file and key), then the adapter registrations load against them
(an outbound HL7 v2 subscriber's ``hl7_version`` must be one the outbound mappings write, or an
``AdapterSpecError`` naming file, line and key). The listener, the API, the workers and
``passerelle check`` all call it, so a registration one role refuses every role refuses, with
the same message.

Usage::

    config = load_config(settings)       # raises ConfigurationError, the process refuses to start
    config.watch()                       # asyncio processes: reload changed mappings in a thread
    config.mappings.supports("A01", "2.5.1", "chu-rabat-adt")
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

from broker.adapters.spec import AdapterSpec, load_adapters
from broker.mapping import MappingSet
from broker.mapping.reload import MappingWatcher
from broker.settings import Settings

__all__ = ["Config", "load_config"]


@dataclass(frozen=True)
class Config:
    """What one process loaded: its settings, the registrations and the (hot-reloaded) mappings.

    Build it with ``load_config``, which checks it.

    Attributes:
        settings: the process settings.
        adapters: every registration in ``settings.adapters_dir``, enabled or not, by id (in
            file order).
        watcher: serves the current mappings, reloading them when their files change.
    """

    settings: Settings
    adapters: dict[str, AdapterSpec]
    watcher: MappingWatcher = field(repr=False)

    @property
    def mappings(self) -> MappingSet:
        """The mappings serving now (reloaded when the files change, if they load cleanly)."""
        return self.watcher.current()

    @cached_property
    def subscribers(self) -> list[AdapterSpec]:
        """The enabled outbound registrations, in file order."""
        return [a for a in self.adapters.values() if a.direction == "outbound" and a.enabled]

    def inbound(self, transport: str) -> list[AdapterSpec]:
        """The enabled inbound registrations of one transport (``mllp``, ``http``)."""
        return [
            a
            for a in self.adapters.values()
            if a.direction == "inbound" and a.transport == transport and a.enabled
        ]

    def supports(self, event: str, version: str, adapter: str) -> bool:
        """Tell whether the mappings serving now handle (event, version) from ``adapter``.

        Through the watcher: a mapping added or removed on disk counts within seconds.
        """
        return self.watcher.current().supports(event, version, adapter)

    def watch(self) -> None:
        """Reload changed mappings in a daemon thread from now on (asyncio processes).

        The listener and the API call it, so linting and loading a changed set never holds the
        event loop that answers; a synchronous process (a Celery worker) looks on use instead.
        """
        self.watcher.start()


def load_config(settings: Settings, *, mappings: MappingSet | None = None) -> Config:
    """Load and check the configuration of ``settings``, as ``passerelle check`` does.

    Args:
        settings: the process settings (``mapping_roots``, ``adapters_dir``).
        mappings: the mappings of ``settings.mapping_roots`` when already loaded (a test that
            starts many brokers loads them once); the registrations are checked against them.

    Returns:
        The checked configuration; its watcher is not started (``Config.watch``).

    Raises:
        MappingSpecError: a mapping file is invalid, or the mappings directory is missing.
        AdapterSpecError: a registration is invalid, two share an id, or an outbound HL7 v2
            subscriber's ``hl7_version`` is not one the outbound mappings write.
    """
    roots = settings.mapping_roots
    loaded = mappings if mappings is not None else MappingSet.load(roots)
    specs = load_adapters(settings.adapters_dir, hl7_versions=loaded.hl7_versions)
    return Config(settings, {spec.id: spec for spec in specs}, MappingWatcher(roots, loaded))
