"""create_celery(settings): Celery on the broker's Redis, configured for at-least-once drains."""

from __future__ import annotations

from typing import Any

from celery import Celery

from broker.dispatch import QUEUE, REKICK
from broker.settings import Settings

__all__ = ["celery_broker_url", "create_celery"]


def celery_broker_url(redis_url: str) -> str:
    """Translate a redis-py URL into kombu's form (``unix://`` becomes ``redis+socket://``)."""
    if redis_url.startswith("unix://"):
        return "redis+socket://" + redis_url.removeprefix("unix://")
    return redis_url


def create_celery(settings: Settings, *, register_tasks: bool = False) -> Celery:
    """Build the Celery app every process uses to queue (and workers to run) drain tasks.

    Settings that matter for "nothing lost" (ARCHITECTURE §2): ``task_acks_late`` and
    ``task_reject_on_worker_lost`` (a killed worker's task is redelivered),
    ``worker_prefetch_multiplier=1`` (a worker holds one task it has not started), and a
    visibility timeout above the longest task. Tasks carry stream coordinates, never patient
    data, and a periodic re-kick makes a lost task cost a delay, not a message.
    """
    app = Celery("passerelle", broker=celery_broker_url(settings.effective_redis_url))
    longest_task_s = settings.drain_budget_s + settings.delivery_timeout_s * 2 + 60
    conf: dict[str, Any] = {
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_ignore_result": True,
        "task_default_queue": QUEUE,
        "task_serializer": "json",
        "accept_content": ["json"],
        "broker_connection_retry_on_startup": True,
        # Redis going away (a restart, or `serve` restarting a killed embedded Redis) must cost
        # a reconnect, never the worker: retry for ever, and let running drains finish or fail
        # on their own (their streams are taken over through the re-kick, not Celery's acks).
        "broker_connection_max_retries": None,
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        "broker_transport_options": {"visibility_timeout": max(3600, longest_task_s * 10)},
        "worker_hijack_root_logger": False,
        "worker_send_task_events": False,
        "beat_schedule": {
            "rekick": {
                "task": REKICK,
                "schedule": settings.rekick_interval_s,
                "options": {"expires": settings.rekick_interval_s * 2},
            },
        },
        "timezone": "UTC",
    }
    app.conf.update(conf)
    if register_tasks:
        from broker.worker import tasks

        tasks.register(app, settings)
    return app
