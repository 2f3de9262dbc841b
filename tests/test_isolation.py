"""Issue 10 item 7, one sender cannot hurt the others: large messages are read off the loop that
answers ACKs, connections are capped and timed out, logs are redacted by allow-list. Real
listeners on loopback, a real Redis (the FHIR bounds: tests/api/test_inbound_bounds.py)."""

from __future__ import annotations

import ast
import asyncio
import io
import json
import logging
import socket
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import redis.asyncio
import structlog
from structlog.testing import capture_logs

from broker.ack import read_ack
from broker.adapters.mllp import FrameDecoder, MllpServer, frame
from broker.adapters.spec import AdapterSpec
from broker.dispatch import AsyncKicker
from broker.intake import offload
from broker.intake.hl7v2 import HL7v2Intake
from broker.intake.journal import Journal
from broker.listen import mllp_server
from broker.log import ALLOWED_KEYS, configure_logging, get_logger
from broker.settings import REPO_ROOT
from broker.testing import StubCelery
from passerelle_demo.synthetic import adt, patients

ADAPTER = AdapterSpec(
    id="chu-rabat-adt", name="CHU Rabat", direction="inbound", transport="mllp", listen="x:1"
)


def _exchange(sock: socket.socket, payload: bytes) -> bytes:
    decoder = FrameDecoder(16 << 20)
    sock.sendall(frame(payload))
    while True:
        data = sock.recv(65536)
        assert data, "the listener closed the connection"
        if frames := decoder.feed(data):
            return frames[0].payload


@pytest.fixture(name="listener")
def fixture_listener(redis_url: str, redis_client: redis.Redis) -> Iterator[MllpServer]:
    """A real MLLP listener (HL7v2Intake, real Redis) on its own event loop in a thread."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def start() -> tuple[MllpServer, redis.asyncio.Redis]:
        client = redis.asyncio.Redis.from_url(redis_url)
        journal = Journal(client, 60, rejected_head_bytes=1024)
        kicker = AsyncKicker(StubCelery(), client)
        intake = HL7v2Intake(ADAPTER, journal, lambda *a: True, 8, kicker)
        server = mllp_server("127.0.0.1", 0, intake, max_bytes=8 << 20, name=ADAPTER.id)
        await server.start()
        return server, client

    server, client = asyncio.run_coroutine_threadsafe(start(), loop).result()
    try:
        yield server
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(), loop).result()
        asyncio.run_coroutine_threadsafe(client.aclose(), loop).result()
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()
        offload.shutdown()


class TestOffTheLoop:
    @pytest.mark.slow  # ~2 s: the 5 MB message of the issue, read in the pool
    def test_a_small_adt_is_answered_while_a_5_mb_message_is_being_read(
        self, listener: MllpServer
    ) -> None:
        """Connection A sends 5 MB (short segments: ~2 s to read here), B a small ADT right
        after: B's AA comes first. Read on the loop, B waited for all of A (2.4 s measured)."""
        base = adt(patients(1, seed=2)[0], "A01", control_id="BIG0001").rstrip("\r")
        big = (base + "\r" + "OBX|1\r" * (5 * 1024 * 1024 // 6)).encode()
        small = adt(patients(1, seed=3)[0], "A01", control_id="SMALL0001").encode()
        answered: list[tuple[str, str]] = []
        sent = threading.Event()

        def send_big() -> None:
            with socket.create_connection(("127.0.0.1", listener.port)) as sock:
                decoder = FrameDecoder()
                sock.sendall(frame(big))
                sent.set()
                while not (frames := decoder.feed(sock.recv(65536))):
                    pass
                ack = read_ack(frames[0].payload)
                answered.append((ack.control_id, ack.code))

        a = threading.Thread(target=send_big)
        a.start()
        assert sent.wait(30)
        time.sleep(0.1)  # A's last bytes are read: its frame is complete and being read
        with socket.create_connection(("127.0.0.1", listener.port)) as sock:
            ack = read_ack(_exchange(sock, small))
            answered.append((ack.control_id, ack.code))
        a.join(60)
        assert answered == [("SMALL0001", "AA"), ("BIG0001", "AA")]

    def test_one_connection_is_still_answered_in_order(self, listener: MllpServer) -> None:
        """A large message then a small one on one connection: two AAs, in the order sent."""
        base = adt(patients(1, seed=4)[0], "A01", control_id="ORD0001").rstrip("\r")
        big = (base + "\r" + ("OBX|1|TX|||" + "x" * 70 + "\r") * 5000).encode()
        small = adt(patients(1, seed=5)[0], "A01", control_id="ORD0002").encode()
        assert len(big) > offload.INLINE_BYTES
        with socket.create_connection(("127.0.0.1", listener.port)) as sock:
            sock.sendall(frame(big) + frame(small))
            decoder, replies = FrameDecoder(), []
            while len(replies) < 2:
                replies += decoder.feed(sock.recv(65536))
        acks = [read_ack(r.payload) for r in replies]
        assert [(a.control_id, a.code) for a in acks] == [("ORD0001", "AA"), ("ORD0002", "AA")]


async def _echo(payload: bytes, peer: str) -> bytes:
    return b"ok:" + payload


def _closed(sock: socket.socket, within: float = 5.0) -> bool:
    """The peer closed ``sock`` within ``within`` seconds (EOF or reset)."""
    sock.settimeout(within)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


class TestCapsAndTimeouts:
    def run(self, scenario: Any, **options: Any) -> list[dict[str, Any]]:
        async def go() -> None:
            server = MllpServer("127.0.0.1", 0, _echo, name="lab-in", **options)
            await server.start()
            try:
                await asyncio.to_thread(scenario, server.port)
            finally:
                await server.stop()

        with capture_logs() as logs:
            asyncio.run(go())
        return logs

    def test_a_connection_over_the_cap_is_closed_at_once_and_logged(self) -> None:
        def scenario(port: int) -> None:
            held = [socket.create_connection(("127.0.0.1", port)) for _ in range(2)]
            for sock in held:
                assert _exchange(sock, b"hi") == b"ok:hi"  # both served: they are counted
            with socket.create_connection(("127.0.0.1", port)) as extra:
                assert _closed(extra)
            assert _exchange(held[0], b"still") == b"ok:still"
            for sock in held:
                sock.close()

        logs = self.run(scenario, max_connections=2)
        (refused,) = [e for e in logs if e["event"] == "mllp.connection_refused"]
        assert (refused["adapter"], refused["cap"]) == ("lab-in", 2)

    def test_an_idle_connection_is_closed_and_logged(self) -> None:
        def scenario(port: int) -> None:
            with socket.create_connection(("127.0.0.1", port)) as sock:
                assert _exchange(sock, b"hi") == b"ok:hi"
                assert _closed(sock)

        logs = self.run(scenario, idle_timeout_s=0.3)
        assert [e["event"] for e in logs].count("mllp.idle_timeout") == 1

    def test_an_unfinished_frame_is_closed_after_the_read_timeout(self) -> None:
        """A frame started and never finished: closed after the read timeout, though the idle
        timeout is long and bytes keep trickling in."""

        def scenario(port: int) -> None:
            with socket.create_connection(("127.0.0.1", port)) as sock:
                sock.sendall(b"\x0bMSH|")
                for _ in range(3):
                    time.sleep(0.2)
                    sock.sendall(b"x")
                assert _closed(sock)

        logs = self.run(scenario, idle_timeout_s=60, read_timeout_s=0.5)
        (timed_out,) = [e for e in logs if e["event"] == "mllp.read_timeout"]
        assert timed_out["after_s"] == 0.5


@pytest.fixture(name="stderr")
def fixture_stderr(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    """Logging as ``passerelle`` sets it up, at debug, writing to this buffer (stderr)."""
    buffer = io.StringIO()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    monkeypatch.setattr(sys, "stderr", buffer)
    configure_logging("json", "DEBUG")
    yield buffer
    structlog.reset_defaults()
    root.handlers[:] = handlers
    root.setLevel(level)


class TestRedaction:
    def test_every_key_the_broker_logs_is_on_the_allow_list(self) -> None:
        """A key a log call passes and the list lacks prints ``[redacted]`` in production: the
        listener's `tls` flag did, after two changes met. Read from the source, every call."""
        calls = ("debug", "info", "warning", "error", "exception", "critical")
        missing: dict[str, str] = {}
        for path in sorted((REPO_ROOT / "broker").rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                    continue
                owner = node.func.value
                name = owner.id if isinstance(owner, ast.Name) else getattr(owner, "attr", "")
                if node.func.attr not in calls or "log" not in name.lower():
                    continue
                for keyword in node.keywords:
                    if keyword.arg is not None and keyword.arg not in ALLOWED_KEYS:
                        missing.setdefault(keyword.arg, f"{path.name}:{node.lineno}")
        assert missing == {}

    def test_a_key_not_on_the_allow_list_is_masked_at_debug_too(self, stderr: io.StringIO) -> None:
        log = get_logger("test")
        log.debug("patient.seen", name="FATIMA ZAHRA", adapter="chu-rabat-adt")
        log.info("patient.seen", surname="ZAHRA", control_id="C1")
        lines = [json.loads(line) for line in stderr.getvalue().splitlines()]
        assert "ZAHRA" not in json.dumps(lines)
        assert (lines[0]["name"], lines[0]["adapter"]) == ("[redacted]", "chu-rabat-adt")
        assert (lines[1]["surname"], lines[1]["control_id"]) == ("[redacted]", "C1")

    def test_an_exception_is_logged_as_its_class_never_its_message_or_traceback(
        self, stderr: io.StringIO, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # As `passerelle serve` leaves uvicorn's loggers (log_config=None): propagating to the
        # root handler. A server started earlier in this test process with uvicorn's own
        # logging configuration stops them at "uvicorn".
        for name in ("uvicorn", "uvicorn.error"):
            logger = logging.getLogger(name)
            monkeypatch.setattr(logger, "handlers", [])
            monkeypatch.setattr(logger, "propagate", True)
            monkeypatch.setattr(logger, "disabled", False)
            monkeypatch.setattr(logger, "level", logging.NOTSET)
        payload = "MSH|^~\\&|HIS|CHU||||||ADT^A01|1|P|2.5\rPID|||1||ZAHRA^FATIMA"
        try:
            raise ValueError(payload)
        except ValueError:
            get_logger("test").exception("mllp.handler_failed", adapter="lab-in")
            logging.getLogger("uvicorn.error").exception("Exception in ASGI application")
        err = stderr.getvalue()
        assert "ZAHRA" not in err
        assert "Traceback" not in err
        event = json.loads(err.splitlines()[0])
        assert (event["event"], event["error"], event["adapter"]) == (
            "mllp.handler_failed",
            "ValueError",
            "lab-in",
        )
        assert event["frames"][-1].endswith("its_message_or_traceback")
        assert "Exception in ASGI application [ValueError at " in err
