"""The supervisor's watch over its embedded Redis, with no other child: a real redis-server."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from structlog.testing import capture_logs

from broker.embedded import EmbeddedRedis
from broker.settings import Settings
from broker.supervisor import Supervisor
from broker.testing import wait_until


@pytest.fixture
def supervisor(tmp_path: Path) -> Iterator[Supervisor]:
    """A supervisor running only the embedded Redis (appendfsync always)."""
    running = Supervisor(
        Settings(data_dir=tmp_path, adapters_dir=tmp_path, appendfsync="always"), roles=()
    )
    running.start()
    yield running
    running.stop()


def client(supervisor: Supervisor) -> redis.Redis:
    return redis.Redis.from_url(supervisor.settings.effective_redis_url)


def test_a_killed_redis_is_started_again_with_its_data(supervisor: Supervisor) -> None:
    """SIGKILL of redis-server: the next watch starts a new one on the same socket, from the AOF."""
    embedded = supervisor.redis
    assert embedded is not None
    assert embedded.process is not None
    before = client(supervisor)
    before.xadd("pl:in:0", {"raw": b"MSH|^~\\&|HIS"})
    before.close()
    victim = embedded.process.pid
    os.kill(victim, signal.SIGKILL)
    assert wait_until(lambda: embedded.died() is not None, 10)
    supervisor.watch_once()
    assert embedded.process.pid != victim
    assert embedded.restarts == 1
    after = client(supervisor)
    assert after.xlen("pl:in:0") == 1
    after.close()


def test_a_redis_stopped_on_purpose_is_left_stopped(supervisor: Supervisor) -> None:
    """stop() is not a death: the watch does not start it again behind the caller's back."""
    embedded = supervisor.redis
    assert embedded is not None
    embedded.stop()
    supervisor.watch_once()
    assert embedded.died() is None
    assert embedded.process is not None
    assert embedded.process.poll() is not None
    assert embedded.restarts == 0


def test_a_redis_that_cannot_start_again_is_retried_every_watch_until_it_can(
    supervisor: Supervisor,
) -> None:
    """A corrupt AOF: each watch logs redis.restart_failed and tries again; repaired, it restarts."""
    embedded = supervisor.redis
    assert embedded is not None
    assert embedded.process is not None
    before = client(supervisor)
    before.xadd("pl:in:0", {"raw": b"MSH|^~\\&|HIS"})
    before.close()
    aof = embedded.directory / "appendonly.aof"
    os.kill(embedded.process.pid, signal.SIGKILL)
    assert wait_until(lambda: embedded.died() is not None, 10)
    intact = aof.read_bytes()
    assert intact, "the write is not in the append-only file"
    # Not a command: redis-server refuses the file ("Bad file format") and exits at once.
    aof.write_bytes(intact + b"this is not a redis command\r\n")

    with capture_logs() as logs:
        supervisor.watch_once()
        supervisor.watch_once()
    failed = [entry for entry in logs if entry["event"] == "redis.restart_failed"]
    assert len(failed) == 2, [entry["event"] for entry in logs]
    assert all(str(embedded.directory / "redis.log") in entry["error"] for entry in failed)
    assert "redis.restarted" not in [entry["event"] for entry in logs]
    assert not EmbeddedRedis.is_running(embedded.socket)
    assert embedded.restarts == 2

    aof.write_bytes(intact)
    with capture_logs() as logs:
        supervisor.watch_once()
    assert [entry["event"] for entry in logs] == ["redis.died", "redis.restarted"]
    assert embedded.restarts == 3
    after = client(supervisor)
    assert after.xlen("pl:in:0") == 1
    after.close()
