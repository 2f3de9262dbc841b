"""Celery: the worker pool and the dispatcher of drain tasks (the queue is a transport)."""

from broker.worker.celery_app import create_celery

__all__ = ["create_celery"]
