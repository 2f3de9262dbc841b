"""The Celery app every process builds (``broker.worker.celery_app``): beat's schedule."""

from __future__ import annotations

from broker.dispatch import REKICK
from broker.settings import Settings
from broker.worker.celery_app import create_celery


def test_beat_runs_the_rekick_every_rekick_interval():
    """The beat schedule's one entry is the re-kick, every rekick_interval_s."""
    schedule = create_celery(Settings(rekick_interval_s=3.0)).conf.beat_schedule
    assert [(e["task"], e["schedule"]) for e in schedule.values()] == [(REKICK, 3.0)]
