"""``passerelle serve``: the whole system on one machine as supervised child processes.

Children: the embedded Redis (unless ``PASSERELLE_REDIS_URL`` is set), the listeners, the Celery
workers, the message store's writer, Celery beat (the periodic re-kick) and the HTTP API. A child that dies is restarted;
Redis first, on the same socket from its append-only file, since every other child waits on it
(they reconnect by themselves: the listeners answer AR "resend later" meanwhile).
Stopping (SIGINT/SIGTERM) goes edge first: listeners stop taking messages, workers finish their
tasks (Celery warm shutdown), the store's writer commits its batch, then beat and the API, and Redis last, which flushes its AOF.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import SecretStr

from broker.audit.key import ensure_key
from broker.children import die_with_parent
from broker.datakeys import ensure_data_key, use_later
from broker.embedded import EmbeddedRedis
from broker.errors import ServiceUnavailable
from broker.filemodes import PRIVATE_UMASK, tighten
from broker.log import get_logger
from broker.settings import Settings

__all__ = ["Supervisor", "ensure_api_token", "settings_env"]

log = get_logger(__name__)
ROLES = ("listen", "worker", "store", "beat", "api")
STOP_ORDER = ("listen", "worker", "store", "beat", "api")


def settings_env(settings: Settings) -> dict[str, str]:
    """Environment variables that rebuild ``settings`` in a child process."""
    env: dict[str, str] = {}
    for name, value in settings.model_dump(mode="json").items():
        if value is None:
            continue
        key = f"PASSERELLE_{name.upper()}"
        secret = getattr(settings, name)
        if isinstance(secret, SecretStr):
            env[key] = secret.get_secret_value()
        elif isinstance(value, dict | list):
            env[key] = json.dumps(value)
        else:
            env[key] = str(value)
    return env


def ensure_api_token(settings: Settings) -> Settings:
    """Return settings with an API token: the configured one, else one kept in the data dir.

    The token file is created readable by its owner only; it never goes into the repository.
    """
    if settings.api_token is not None:
        return settings
    path = settings.data_dir / "api-token"
    if not path.exists():
        settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        path.touch(mode=0o600)
        path.write_text(secrets.token_urlsafe(32), encoding="utf-8")

    return settings.model_copy(
        update={"api_token": SecretStr(path.read_text(encoding="utf-8").strip())}
    )


@dataclass
class _Child:
    role: str
    process: subprocess.Popen[bytes]
    started: float = field(default_factory=time.monotonic)
    restarts: int = 0


class Supervisor:
    """Starts, watches and stops the broker's processes.

    Args:
        settings: the configuration every child rebuilds from its environment.
        roles: which processes to run (all by default).
        log_dir: where children's stdout/stderr go (inherit the terminal when None).
    """

    def __init__(
        self, settings: Settings, roles: tuple[str, ...] = ROLES, log_dir: Path | None = None
    ) -> None:
        self.settings = ensure_data_key(ensure_api_token(settings))
        ensure_key(self.settings)  # the audit chain's, before the store's writer starts
        use_later(self.settings)
        self.roles = roles
        self.log_dir = log_dir
        self.redis: EmbeddedRedis | None = None
        self.children: dict[str, _Child] = {}
        self._stopping = False
        # watch_once may run on another thread than stop() (the test stack's watcher).
        self._lock = threading.RLock()

    def start(self) -> None:
        """Start Redis (embedded unless configured), then every role's process."""
        changed = tighten(self.settings.data_dir)
        if changed:
            log.warning("data_dir.tightened", changed=changed)
        if self.settings.redis_url is None:
            self.redis = EmbeddedRedis(self.settings)
            self.redis.start()
            log.info(
                "redis.started",
                url=self.settings.effective_redis_url,
                appendfsync=self.settings.appendfsync,
            )
        for role in self.roles:
            self.children[role] = _Child(role, self._spawn(role))
        log.info(
            "serve.started",
            roles=list(self.roles),
            http=f"{self.settings.http_host}:{self.settings.http_port}",
        )

    def _spawn(self, role: str) -> subprocess.Popen[bytes]:
        env = {**os.environ, **settings_env(self.settings)}
        out = None
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            out = (self.log_dir / f"{role}.log").open("ab")
        return subprocess.Popen(
            [sys.executable, "-m", "broker", role],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT if out else None,
            # Own session: a terminal's Ctrl-C reaches the supervisor, which stops children in order.
            start_new_session=True,
            preexec_fn=die_with_parent,
            umask=PRIVATE_UMASK,  # the files every role creates are owner-only
        )

    def watch_once(self) -> None:
        """Restart Redis, then any child, that exited while not stopping (with a short backoff)."""
        with self._lock:
            if self._stopping:
                return
            self._watch_redis()
            for role, child in self.children.items():
                code = child.process.poll()
                if code is None:
                    continue
                log.error("serve.child_died", role=role, exit_code=code, restarts=child.restarts)
                if time.monotonic() - child.started < 5:
                    time.sleep(1)
                self.children[role] = _Child(role, self._spawn(role), restarts=child.restarts + 1)

    def _watch_redis(self) -> None:
        if self.redis is None:
            return
        code = self.redis.died()
        if code is None:
            return
        log.error("redis.died", exit_code=code, restarts=self.redis.restarts)
        began = time.monotonic()
        try:
            self.redis.restart()
        except ServiceUnavailable as exc:
            log.error("redis.restart_failed", error=str(exc))
            time.sleep(1)  # the next watch tries again
            return
        log.info(
            "redis.restarted",
            pid=self.redis.process.pid if self.redis.process else None,
            seconds=round(time.monotonic() - began, 2),
            restarts=self.redis.restarts,
        )

    def run_forever(self) -> None:
        """Watch children until SIGINT/SIGTERM, then stop everything in order."""

        def on_signal(signum: int, frame: object) -> None:
            self._stopping = True

        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)
        try:
            while not self._stopping:
                self.watch_once()
                time.sleep(0.5)
        finally:
            self.stop()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop children edge first, each given ``timeout`` seconds to drain, then Redis."""
        self._stopping = True
        with self._lock:
            self._stop_children(timeout)

    def _stop_children(self, timeout: float) -> None:
        for role in STOP_ORDER:
            child = self.children.get(role)
            if child is None or child.process.poll() is not None:
                continue
            child.process.send_signal(signal.SIGTERM)
            try:
                child.process.wait(timeout)
            except subprocess.TimeoutExpired:
                log.error("serve.child_killed", role=role)
                os.killpg(child.process.pid, signal.SIGKILL)
                child.process.wait()
        if self.redis is not None:
            self.redis.stop()
        log.info("serve.stopped")
