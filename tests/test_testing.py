"""``broker.testing.PrivateRedis``: the tests flush only the Redis server their session started."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from broker.testing import ForeignRedisError, PrivateRedis, free_port, wait_until


@pytest.fixture(scope="module")
def foreign_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A second redis-server started here with a plain Popen: a Redis the session did not start."""
    port = free_port()
    directory = tmp_path_factory.mktemp("foreign-redis")
    process = subprocess.Popen(
        [
            *(_redis_executable(), "--port", str(port), "--bind", "127.0.0.1"),
            *("--save", "", "--appendonly", "no", "--dir", str(directory)),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url, socket_connect_timeout=0.5)
    try:
        assert wait_until(lambda: _pings(client), 15, 0.05), (
            f"the second redis-server did not start on {port}"
        )
        yield url
    finally:
        client.close()
        process.terminate()
        process.wait(10)


@pytest.fixture(name="foreign")
def fixture_foreign(foreign_url: str) -> Iterator[redis.Redis]:
    """A client on the second server, holding one key the guard must leave in place."""
    client = redis.Redis.from_url(foreign_url)
    client.set("someone-elses-data", "keep me")
    try:
        yield client
    finally:
        client.delete("someone-elses-data")
        client.close()


def test_the_guard_refuses_to_flush_a_redis_it_did_not_start(
    private_redis: PrivateRedis, foreign: redis.Redis
) -> None:
    """``flushdb`` on a client of another server raises ForeignRedisError; its data stays."""
    with pytest.raises(ForeignRedisError, match="did not start it"):
        private_redis.flushdb(foreign)
    assert foreign.get("someone-elses-data") == b"keep me"


def test_the_guard_flushes_the_session_redis(private_redis: PrivateRedis) -> None:
    """``flushdb`` on a client of the session's own server empties its database."""
    client = redis.Redis.from_url(private_redis.url)
    try:
        client.set("scratch", "1")
        private_redis.flushdb(client)
        assert client.dbsize() == 0
    finally:
        client.close()


def test_a_server_restarted_on_the_same_port_is_foreign(tmp_path: Path) -> None:
    """Another redis-server later answering on a private server's port is not flushed either."""
    first = PrivateRedis(tmp_path / "first")
    first.start()
    first.stop()
    assert first.process is not None
    assert first.process.wait(10) is not None
    # A stranger takes the freed port (same address, same URL, another server).
    stranger = subprocess.Popen(
        [_redis_executable(), "--port", str(first.port), "--bind", "127.0.0.1", "--save", ""],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=tmp_path,
    )
    client = redis.Redis.from_url(first.url, socket_connect_timeout=0.5)
    try:
        assert wait_until(lambda: _pings(client), 15, 0.05)
        client.set("someone-elses-data", "keep me")
        with pytest.raises(ForeignRedisError):
            first.flushdb(client)
        assert client.get("someone-elses-data") == b"keep me"
    finally:
        client.close()
        stranger.terminate()
        stranger.wait(10)


class TestTheRedisClientFixture:
    """``redis_client`` flushes through the guard, even when ``redis_url`` points elsewhere."""

    @pytest.fixture
    def redis_url(self, foreign_url: str) -> str:
        """``redis_url`` overridden to the second server, as a careless conftest might."""
        return foreign_url

    def test_it_refuses_a_foreign_redis_url(
        self, request: pytest.FixtureRequest, foreign: redis.Redis
    ) -> None:
        """Asking for ``redis_client`` on the second server fails, and its key survives."""
        with pytest.raises(ForeignRedisError):
            request.getfixturevalue("redis_client")
        assert foreign.get("someone-elses-data") == b"keep me"


def _redis_executable() -> str:
    from broker.embedded import redis_executable

    return redis_executable()


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False
