"""Alembic's environment for the message store: run on the connection ``broker.store.db`` gives."""

from __future__ import annotations

from alembic import context

from broker.store.schema import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
