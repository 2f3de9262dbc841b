"""Files and sockets readable by the service user only: data dir, keys, token, Redis, SQLite.

The modes are read back from the file system (``stat``), after a real embedded Redis wrote its
append-only file and a real SQLite store its ``-wal`` and ``-shm``.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import redis
import sqlalchemy as sa

from broker.filemodes import tighten
from broker.settings import Settings
from broker.supervisor import Supervisor


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_serve_keeps_the_data_dir_keys_token_and_redis_files_owner_only(tmp_path):
    """A fresh serve (Redis only) on a world-readable umask: the data dir 0700, the key file,
    the API token, the AOF and Redis's log 0600, its socket with no group or other access."""
    data = tmp_path / "data"
    settings = Settings(data_dir=data, adapters_dir=tmp_path, data_key=None)
    before = os.umask(0o022)
    supervisor = Supervisor(settings, roles=())
    try:
        supervisor.start()
        client = redis.Redis.from_url(settings.effective_redis_url)
        client.set("x", "y")
        client.close()
        assert _mode(data) == 0o700
        assert _mode(data / "data-key") == 0o600
        assert _mode(data / "api-token") == 0o600
        redis_dir = data / "redis"
        assert _mode(redis_dir) == 0o700
        files = [p for p in redis_dir.rglob("*") if p.is_file()]
        aof = [p for p in files if "appendonly" in p.name]
        assert aof, f"no append-only file among {[p.name for p in files]}"
        for path in files:
            assert _mode(path) & 0o077 == 0, f"{path.name} is {oct(_mode(path))}"
        assert _mode(settings.redis_socket) & 0o077 == 0
    finally:
        supervisor.stop()
        os.umask(before)


def test_an_upgrade_tightens_what_an_earlier_version_left_readable(tmp_path):
    """A world-readable AOF and data dir from before: 0600 and 0700 after tighten; a symbolic
    link out of the directory is left alone."""
    data = tmp_path / "data"
    (data / "redis").mkdir(parents=True)
    (data / "redis").chmod(0o755)
    aof = data / "redis" / "appendonly.aof"
    aof.write_text("*1\r\n")
    aof.chmod(0o644)
    data.chmod(0o755)
    outside = tmp_path / "outside"
    outside.write_text("x")
    outside.chmod(0o644)
    (data / "link").symlink_to(outside)
    assert tighten(data) == 3
    assert _mode(data) == 0o700
    assert _mode(aof) == 0o600
    assert _mode(data / "redis") == 0o700
    assert _mode(outside) == 0o644


def test_a_role_creates_the_sqlite_store_and_its_wal_owner_only(tmp_path):
    """The store role's umask (filemodes.private_process, run in a fresh interpreter): the
    SQLite file, its -wal and -shm are 0600."""
    path = tmp_path / "store.sqlite3"
    code = (
        "from broker.filemodes import private_process; private_process()\n"
        "from broker.store import connect, upgrade\n"
        f"engine = connect('sqlite:///{path}', create=True); upgrade(engine)\n"
        "import sqlalchemy as sa\n"
        "c = engine.connect(); c.execute(sa.text('select count(*) from messages'))\n"
        "import pathlib, stat\n"
        f"print(sorted((p.name, oct(stat.S_IMODE(p.stat().st_mode))) for p in pathlib.Path('{tmp_path}').iterdir()))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert "('store.sqlite3', '0o600')" in out
    assert "('store.sqlite3-wal', '0o600')" in out
    assert "('store.sqlite3-shm', '0o600')" in out
    assert sa is not None
