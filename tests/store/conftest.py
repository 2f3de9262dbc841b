"""Databases for the store's tests: a fresh PostgreSQL database per session, and SQLite files.

PostgreSQL: a database with a unique name on the server at 127.0.0.1:5432 (user ``postgres``,
trust authentication, as on the development machines and CI), dropped after the session; safe
under pytest-xdist (one database per worker). Where none answers, the session starts its own
server with Debian's binaries (``/usr/lib/postgresql/*/bin``: initdb, pg_ctl) in a temporary
directory on a free port. Never skipped: no PostgreSQL at all is a failure.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from broker.audit import load_key, read_anchors
from broker.store.schema import audit
from broker.store.verify import Verdict, verify
from broker.testing import free_port

SHARED_SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432/"
"""The machine's PostgreSQL; ``PASSERELLE_TEST_PRIVATE_POSTGRES=1`` ignores it (to test the
fallback)."""


def _reachable(url: str) -> bool:
    for database in ("postgres", "test"):
        engine = sa.create_engine(url + database, connect_args={"connect_timeout": 2})
        try:
            with engine.connect():
                return True
        except sa.exc.OperationalError:
            continue
        finally:
            engine.dispose()
    return False


def _admin_database(url: str) -> str:
    engine = sa.create_engine(url + "postgres", connect_args={"connect_timeout": 2})
    try:
        with engine.connect():
            return "postgres"
    except sa.exc.OperationalError:
        return "test"
    finally:
        engine.dispose()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """The URL (without database) of a PostgreSQL server this session may create databases on."""
    if os.environ.get("PASSERELLE_TEST_PRIVATE_POSTGRES") != "1" and _reachable(SHARED_SERVER):
        yield SHARED_SERVER
        return
    binaries = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not binaries:
        pytest.fail(
            "no PostgreSQL answers on 127.0.0.1:5432 and none is installed to start one "
            "(Debian: apt-get install postgresql)"
        )
    bin_dir = Path(binaries[-1]).parent
    # Not under pytest's tmp dir: as root that is private to root, and the server runs as postgres.
    directory = Path(tempfile.mkdtemp(prefix="passerelle-pg-"))
    data = directory / "data"
    port = free_port()
    # initdb refuses to run as root: run the server as the postgres user then.
    prefix: list[str] = []
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")
        os.chown(directory, user.pw_uid, user.pw_gid)
        prefix = [shutil.which("runuser") or "runuser", "-u", "postgres", "--"]
    subprocess.run(
        [*prefix, str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust"],
        check=True,
        capture_output=True,
    )
    options = f"-p {port} -k {directory} -c listen_addresses=127.0.0.1 -c fsync=off"
    # The server's output goes to its log file: a pipe it inherited would keep run() waiting.
    subprocess.run(
        [
            *prefix,
            str(bin_dir / "pg_ctl"),
            "-D",
            str(data),
            "-o",
            options,
            "-l",
            str(directory / "server.log"),
            "-w",
            "start",
        ],
        check=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        timeout=60,
    )
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/"
    finally:
        subprocess.run(
            [*prefix, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
            check=False,
            capture_output=True,
        )
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_url(postgres_server: str) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for this session (this xdist worker), dropped after."""
    name = f"passerelle_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(
        postgres_server + _admin_database(postgres_server), isolation_level="AUTOCOMMIT"
    )
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield postgres_server + name
    finally:
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def empty_postgres(postgres_url: str) -> Iterator[str]:
    """The session's PostgreSQL database, emptied of every table (and Alembic's) before the test."""
    engine = sa.create_engine(postgres_url)
    with engine.begin() as connection:
        connection.execute(sa.text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
    engine.dispose()
    return postgres_url


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty store on SQLite (a new file) and on PostgreSQL (the session's database)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.sqlite3'}"
    url: str = request.getfixturevalue("empty_postgres")
    return url


def audit_entries(engine: sa.Engine) -> list[dict[str, object]]:
    """(tests/store: the audit trail) Every audit entry of the store, in ``seq`` order."""
    with engine.connect() as connection:
        return [
            dict(r._mapping) for r in connection.execute(sa.select(audit).order_by(audit.c.seq))
        ]


def verify_trail(broker: object) -> Verdict:
    """(tests/store: the audit trail) ``verify`` of an EagerBroker's store, with its anchors."""
    settings = broker.settings  # type: ignore[attr-defined]
    anchors = read_anchors(broker.client, settings.data_dir / "audit-anchors")  # type: ignore[attr-defined]
    return verify(broker.store, load_key(settings), anchors)  # type: ignore[attr-defined]
