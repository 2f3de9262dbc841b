"""The store's database: the engine for a URL, and the migrations that bring its schema up to date.

SQLite (the default, ``data_dir/store.sqlite3``) runs in WAL mode, so the API and the CLI read
while the writer commits; PostgreSQL is reached through psycopg 3 (``postgresql+psycopg://``).
The schema is Alembic's: the migrations ship inside the package (``broker/store/migrations``)
and are run programmatically, no ``alembic.ini`` needed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from broker.errors import ConfigurationError, ServiceUnavailable

__all__ = ["MIGRATIONS", "check_current", "connect", "current_revision", "head_revision", "upgrade"]

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
"""Alembic's script directory, inside the package (a wheel ships it)."""


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


def connect(url: str, *, create: bool = False) -> sa.Engine:
    """An engine on the store at ``url``; SQLite runs in WAL mode.

    Args:
        url: a SQLAlchemy URL.
        create: for SQLite, create the file (and its directory) when missing: the writer and
            ``store upgrade`` do; readers (CLI, API) do not, and are told the store is missing.

    Raises:
        ConfigurationError: the URL is not one SQLAlchemy can use (unknown dialect, driver).
        ServiceUnavailable: a SQLite store that does not exist yet, without ``create``.
    """
    try:
        parsed = sa.engine.make_url(url)
    except sa.exc.ArgumentError as exc:
        msg = f"the store URL is not a database URL ({exc}); expected e.g. postgresql+psycopg://user@host/db"
        raise ConfigurationError(msg) from exc
    try:
        if parsed.get_backend_name() == "sqlite":
            if parsed.database and parsed.database != ":memory:":
                path = Path(parsed.database)
                if not create and not path.exists():
                    msg = (
                        f"there is no message store at {path} yet: the writer "
                        "(`passerelle store`, started by `passerelle serve`) creates it"
                    )
                    raise ServiceUnavailable(msg)
                path.parent.mkdir(parents=True, exist_ok=True)
            engine = sa.create_engine(parsed)
            sa.event.listen(engine, "connect", _sqlite_pragmas)
            return engine
        return sa.create_engine(parsed, pool_pre_ping=True)
    except (sa.exc.ArgumentError, ImportError) as exc:
        msg = f"the store URL {parsed.render_as_string(hide_password=True)} cannot be used: {exc}"
        raise ConfigurationError(msg) from exc


def _alembic_config(connection: sa.Connection) -> AlembicConfig:
    config = AlembicConfig()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    """The revision the code expects (the newest migration)."""
    script = ScriptDirectory(str(MIGRATIONS))
    head = script.get_current_head()
    if head is None:  # pragma: no cover - the package always ships its migrations
        raise ConfigurationError("the store's migrations are missing from the package")
    return head


def current_revision(engine: sa.Engine) -> str | None:
    """The revision the database is at (``None``: no schema yet)."""
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    except sa.exc.OperationalError as exc:
        msg = f"the message store cannot be reached ({type(exc.orig).__name__})"
        raise ServiceUnavailable(msg) from exc


def upgrade(engine: sa.Engine) -> str:
    """Bring the schema to the newest revision (idempotent); return it.

    Raises:
        ServiceUnavailable: the database cannot be reached.
    """
    try:
        with engine.begin() as connection:
            command.upgrade(_alembic_config(connection), "head")
    except sa.exc.OperationalError as exc:
        msg = f"the message store cannot be reached ({type(exc.orig).__name__})"
        raise ServiceUnavailable(msg) from exc
    return head_revision()


def check_current(engine: sa.Engine) -> None:
    """Refuse a database whose schema is not the one this code expects.

    Raises:
        ConfigurationError: the schema is missing or at another revision; says to run
            ``passerelle store upgrade``.
    """
    current, head = current_revision(engine), head_revision()
    if current != head:
        msg = (
            f"the message store's schema is at {current or 'nothing'}, this version needs {head}; "
            "run `passerelle store upgrade`"
        )
        raise ConfigurationError(msg)
