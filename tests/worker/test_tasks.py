"""The Celery tasks (``broker.worker.tasks``): the five wrappers, registered under their names.

The logic they wrap is tested in process where it lives (``tests/pipeline/test_drain.py``,
``tests/delivery/``, ``tests/ops/test_housekeeping.py``); the integration tests run them in
Celery worker processes.
"""

from __future__ import annotations

from broker.dispatch import DRAIN_APP_ACKS, DRAIN_INBOUND, DRAIN_OUTBOUND, REKICK, RELEASE_PATIENT
from broker.settings import Settings
from broker.worker import tasks
from broker.worker.celery_app import create_celery


def test_every_task_a_kick_or_beat_queues_is_registered_on_the_workers_app():
    """A worker's app runs each task name the broker queues, with the wrapper of that name."""
    app = create_celery(Settings(), register_tasks=True)
    registered = {name: app.tasks[name].run for name in app.tasks if name.startswith("passerelle.")}
    assert registered == {
        DRAIN_INBOUND: tasks.drain_inbound,
        DRAIN_OUTBOUND: tasks.drain_outbound,
        RELEASE_PATIENT: tasks.release_patient,
        DRAIN_APP_ACKS: tasks.drain_app_acks,
        REKICK: tasks.rekick,
    }
