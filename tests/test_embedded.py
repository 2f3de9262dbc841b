"""The embedded Redis as ``passerelle serve`` starts it: its durability settings, read back by CONFIG GET.

docs/reliability.md §1 and the README promise ``appendonly yes``, ``appendfsync everysec`` (or
``always``), ``maxmemory-policy noeviction`` with a ``maxmemory`` limit, no RDB snapshots, and a
Unix socket only its owner can use. The server is started by the supervisor with no other child,
as ``serve`` starts it, and asked what it actually runs with.
"""

from __future__ import annotations

import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from broker.settings import Settings
from broker.supervisor import Supervisor


@pytest.fixture(name="embedded", params=["everysec", "always"])
def fixture_embedded(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[redis.Redis]:
    """A client of the embedded Redis of a supervisor started as serve does (no other role)."""
    settings = Settings(data_dir=tmp_path, adapters_dir=tmp_path, appendfsync=request.param)
    supervisor = Supervisor(settings, roles=())
    supervisor.start()
    client = redis.Redis.from_url(settings.effective_redis_url, decode_responses=True)
    try:
        yield client
    finally:
        client.close()
        supervisor.stop()


def config(client: redis.Redis, name: str) -> str:
    """What the running server says one setting is (CONFIG GET)."""
    value: dict[str, str] = client.config_get(name)  # type: ignore[assignment]
    return value[name]


def test_the_journal_is_in_an_append_only_file_with_the_configured_fsync(
    embedded: redis.Redis, request: pytest.FixtureRequest
) -> None:
    """appendonly yes, appendfsync as PASSERELLE_APPENDFSYNC says, no RDB snapshots."""
    assert config(embedded, "appendonly") == "yes"
    assert config(embedded, "appendfsync") == request.node.callspec.params["embedded"]
    assert config(embedded, "save") == ""
    embedded.xadd("pl:in:0", {"raw": "MSH|"})
    directory = Path(config(embedded, "dir"))
    aof = directory / config(embedded, "appendfilename")
    assert aof.is_file()
    assert aof.stat().st_size > 0, "the write is not in the append-only file"


def test_a_full_redis_refuses_writes_instead_of_evicting(embedded: redis.Redis) -> None:
    """maxmemory 2gb (PASSERELLE_REDIS_MAXMEMORY's default) with maxmemory-policy noeviction."""
    assert config(embedded, "maxmemory-policy") == "noeviction"
    assert int(config(embedded, "maxmemory")) == 2 * 1024**3


def test_it_listens_only_on_a_socket_its_owner_can_use(embedded: redis.Redis) -> None:
    """No TCP port; the Unix socket's mode is 0700 (unixsocketperm), so no other user connects."""
    assert config(embedded, "port") == "0"
    socket = Path(config(embedded, "unixsocket"))
    assert stat.S_IMODE(socket.stat().st_mode) == 0o700
    assert config(embedded, "unixsocketperm") == "700"
