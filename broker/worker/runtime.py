"""What a worker process loads once: registrations, mappings, connections, senders."""

from __future__ import annotations

from dataclasses import dataclass, field

import redis
from celery import Celery

from broker.adapters.spec import AdapterSpec, load_adapters
from broker.delivery.dead_letter import DeadLetterStore
from broker.delivery.send import Sender, make_sender
from broker.dispatch import Kicker
from broker.mapping import MappingSet
from broker.mapping.reload import MappingWatcher
from broker.settings import Settings

__all__ = ["Runtime", "configure", "runtime"]


@dataclass
class Runtime:
    """What a worker process loads once: registrations, mappings, connections."""

    settings: Settings
    celery: Celery
    client: redis.Redis = field(init=False)
    adapters: dict[str, AdapterSpec] = field(init=False)
    subscribers: list[AdapterSpec] = field(init=False)
    watcher: MappingWatcher = field(init=False)
    kicker: Kicker = field(init=False)
    dead_letters: DeadLetterStore = field(init=False)
    senders: dict[str, Sender] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.client = redis.Redis.from_url(self.settings.effective_redis_url)
        directory = self.settings.mapping_roots
        mappings = MappingSet.load(directory)
        # As `passerelle check`: a subscriber's hl7_version must be one the mappings write.
        specs = load_adapters(self.settings.adapters_dir, hl7_versions=mappings.hl7_versions)
        self.adapters = {spec.id: spec for spec in specs}
        self.subscribers = [s for s in specs if s.direction == "outbound" and s.enabled]
        self.watcher = MappingWatcher(directory, mappings)
        self.kicker = Kicker(self.celery, self.client)
        self.dead_letters = DeadLetterStore(self.client)

    @property
    def mappings(self) -> MappingSet:
        """The mappings serving now (reloaded when the files change, if they load cleanly)."""
        return self.watcher.current()

    def sender(self, subscriber: str) -> Sender:
        """The persistent sender of a subscriber in this process."""
        sender = self.senders.get(subscriber)
        if sender is None:
            sender = make_sender(
                self.adapters[subscriber], self.watcher.current, self.settings.delivery_timeout_s
            )
            self.senders[subscriber] = sender
        return sender


_runtime: Runtime | None = None
_settings: Settings | None = None
_celery: Celery | None = None


def runtime() -> Runtime:
    """This process's Runtime, built on first use (after Celery forked the pool process)."""
    global _runtime
    if _runtime is None:
        if _settings is None or _celery is None:
            raise RuntimeError("worker.runtime.configure() was not called in this process")
        _runtime = Runtime(_settings, _celery)
    return _runtime


def configure(app: Celery, settings: Settings) -> None:
    """Record the app and settings this process's Runtime will be built from."""
    global _settings, _celery
    _settings, _celery = settings, app
