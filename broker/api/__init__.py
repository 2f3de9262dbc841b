"""The HTTP API (FastAPI): health, metrics, queues and messages; ``create_app(settings)``."""

from broker.api.app import create_app

__all__ = ["create_app"]
