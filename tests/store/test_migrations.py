"""The migrations build exactly the schema the code declares, on SQLite and on PostgreSQL."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from broker.errors import ConfigurationError
from broker.store import check_current, connect, current_revision, head_revision, upgrade
from broker.store.schema import metadata


def test_the_migrations_produce_the_models_schema(store_url):
    """After `upgrade`, Alembic's autogenerate comparison finds no difference with schema.py."""
    engine = connect(store_url, create=True)
    try:
        assert current_revision(engine) is None
        assert upgrade(engine) == head_revision()
        with engine.connect() as connection:
            differences = compare_metadata(MigrationContext.configure(connection), metadata)
            tables = set(sa.inspect(connection).get_table_names())
        assert differences == []
        assert {"messages", "identifiers", "deliveries", "attempts", "actions"} <= tables
        upgrade(engine)  # idempotent
        check_current(engine)
    finally:
        engine.dispose()


def test_a_store_without_schema_is_refused_with_what_to_run(tmp_path):
    """Readers refuse a store whose schema is not this version's and say `passerelle store upgrade`."""
    engine = connect(f"sqlite:///{tmp_path / 's.sqlite3'}", create=True)
    with pytest.raises(ConfigurationError, match="passerelle store upgrade"):
        check_current(engine)
    engine.dispose()


def test_sqlite_store_runs_in_wal_mode(tmp_path):
    """The embedded store journals in WAL mode, so the API reads while the writer commits."""
    engine = connect(f"sqlite:///{tmp_path / 's.sqlite3'}", create=True)
    with engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    engine.dispose()
