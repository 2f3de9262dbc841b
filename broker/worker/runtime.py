"""What a worker process loads once: its configuration, connections and senders."""

from __future__ import annotations

from dataclasses import dataclass, field

import redis
from celery import Celery

from broker import standby
from broker.adapters.spec import AdapterSpec
from broker.audit import sink as audit_sink
from broker.config import Config, load_config
from broker.delivery.dead_letter import DeadLetterStore
from broker.delivery.send import Sender, make_sender
from broker.dispatch import Kicker
from broker.gctuning import tune_gc
from broker.mapping import MappingSet
from broker.mapping.reload import MappingWatcher
from broker.settings import Settings

__all__ = ["Runtime", "configure", "runtime"]


@dataclass
class Runtime:
    """What a worker process runs with: the loaded configuration, Redis, kicker and senders.

    Args:
        config: the configuration ``load_config`` loaded and checked (as ``passerelle check``).
        celery: the Celery app tasks are queued on.
    """

    config: Config
    celery: Celery
    client: redis.Redis = field(init=False)
    kicker: Kicker = field(init=False)
    dead_letters: DeadLetterStore = field(init=False)
    senders: dict[str, Sender] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.client = redis.Redis.from_url(self.settings.effective_redis_url)
        audit_sink.configure(self.client)  # mapping reloads, into the audit trail
        hand = standby.hand if self.settings.standby_s > 0 else None
        self.kicker = Kicker(self.celery, self.client, hand)
        self.dead_letters = DeadLetterStore(self.client)

    @property
    def settings(self) -> Settings:
        """The process settings."""
        return self.config.settings

    @property
    def adapters(self) -> dict[str, AdapterSpec]:
        """Every registration by id."""
        return self.config.adapters

    @property
    def subscribers(self) -> list[AdapterSpec]:
        """The enabled outbound registrations."""
        return self.config.subscribers

    @property
    def watcher(self) -> MappingWatcher:
        """Serves the current mappings (a worker looks for changed files on use)."""
        return self.config.watcher

    @property
    def mappings(self) -> MappingSet:
        """The mappings serving now (reloaded when the files change, if they load cleanly)."""
        return self.config.mappings

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
    """This process's Runtime, built on first use (after Celery forked the pool process).

    Raises:
        ConfigurationError: the configuration does not load or is refused (``load_config``).
    """
    global _runtime
    if _runtime is None:
        if _settings is None or _celery is None:
            raise RuntimeError("worker.runtime.configure() was not called in this process")
        _runtime = Runtime(load_config(_settings), _celery)
        tune_gc()  # the configuration and compiled mappings stay out of every collection
    return _runtime


def configure(app: Celery, settings: Settings) -> None:
    """Record the app and settings this process's Runtime will be built from."""
    global _settings, _celery
    _settings, _celery = settings, app
