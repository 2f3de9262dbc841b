"""Fixtures of the users-and-tokens tests: the store's databases (SQLite and PostgreSQL, as
tests/store has them), upgraded, and a way to make a user's token in one line."""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from broker.store import connect, upgrade
from broker.store.credentials import add_user, create_token
from tests.store import conftest as store_fixtures

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=r"Using `httpx` with `starlette\.testclient`")
    import fastapi.testclient  # noqa: F401

# The store's databases, as tests/store has them (fixtures are found by their name here).
postgres_server = store_fixtures.postgres_server
postgres_url = store_fixtures.postgres_url
empty_postgres = store_fixtures.empty_postgres
store_url = store_fixtures.store_url


@pytest.fixture(name="engine")
def fixture_engine(store_url: str) -> Iterator[sa.Engine]:
    """The store at ``store_url`` (SQLite, then PostgreSQL), at the newest revision."""
    engine = connect(store_url, create=True)
    upgrade(engine)
    yield engine
    engine.dispose()


def token_for(
    engine: sa.Engine,
    name: str,
    role: str,
    *,
    adapter: str | None = None,
    expires_at: float | None = None,
    permissions: list[str] | None = None,
) -> str:
    """A new user ``name`` with ``role`` and a token of it (the token itself)."""
    now = time.time()
    add_user(engine, name, role, adapter=adapter, by="test", now=now)
    made, _ = create_token(
        engine, name, by="test", now=now, expires_at=expires_at, permissions=permissions
    )
    return made.token
