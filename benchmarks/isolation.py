"""One sender cannot hurt the others: ``python -m benchmarks.isolation [obx|short]``.

A real MLLP listener (``broker.listen.mllp_server``, ``HL7v2Intake``, a private Redis) runs in
this process; the senders run in a child process (``--senders PORT SHAPE``), so their clocks
never stop when the listener's loop does. Per run, connection A sends one 5 MB ADT and waits for
its ACK while connection B sends small ADTs one after another (5 ms apart); printed: A's ACK
time and the largest and median wait of B's ACKs meanwhile. ``obx``: 5 MB of 80-byte OBX
segments; ``short``: 5 MB of ``OBX|1`` segments (the costliest to tokenize per byte).

Measured here (issue 10 item 7), largest wait of B's ACK: inline 230-290 ms (``short``:
1.7-2.4 s), in a thread up to 340 ms, in the process pool 7-28 ms (``short``: 6-29 ms) once
started (``offload.start``; without it the first run's reached ~50 ms).
"""

from __future__ import annotations

import asyncio
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import redis.asyncio

from broker.adapters.mllp import FrameDecoder, frame
from broker.adapters.spec import AdapterSpec
from broker.dispatch import AsyncKicker
from broker.intake import offload
from broker.intake.hl7v2 import HL7v2Intake
from broker.intake.journal import Journal
from broker.listen import mllp_server
from broker.testing import PrivateRedis, StubCelery
from passerelle_demo.synthetic import adt, patients

_ADAPTER = AdapterSpec(id="a", name="A", direction="inbound", transport="mllp", listen="x:1")
_RUNS = 4


def _exchange(sock: socket.socket, payload: bytes) -> bytes:
    decoder = FrameDecoder(16 << 20)
    sock.sendall(frame(payload))
    while not (frames := decoder.feed(sock.recv(65536))):
        pass
    return frames[0].payload


def senders(port: int, shape: str) -> None:
    """Connections A (5 MB) and B (small ADTs meanwhile), ``_RUNS`` times; print the waits."""
    segment = "OBX|1\r" if shape == "short" else "OBX|1|TX|NOTE^Note||" + "x" * 60 + "\r"
    base = adt(patients(1, seed=2)[0], "A01", control_id="BIG").rstrip("\r") + "\r"
    big = (base + segment * ((5 * 1024 * 1024 - len(base)) // len(segment) + 1)).encode()
    small = adt(patients(1, seed=3)[0], "A01", control_id="SMALL").encode()
    for run in range(_RUNS):
        done = threading.Event()
        big_ms: list[float] = []

        def send_big(run: int = run, done: threading.Event = done, big_ms: list[float] = big_ms):
            with socket.create_connection(("127.0.0.1", port)) as sock:
                started = time.perf_counter()
                _exchange(sock, big.replace(b"|BIG|", f"|BIG{run}|".encode(), 1))
                big_ms.append((time.perf_counter() - started) * 1000)
            done.set()

        thread = threading.Thread(target=send_big)
        thread.start()
        waits: list[float] = []
        with socket.create_connection(("127.0.0.1", port)) as sock:
            while not done.is_set():
                started = time.perf_counter()
                control_id = f"|S{run}-{len(waits)}|".encode()
                _exchange(sock, small.replace(b"|SMALL|", control_id, 1))
                waits.append((time.perf_counter() - started) * 1000)
                time.sleep(0.005)
        thread.join()
        waits.sort()
        print(
            f"run {run}: 5 MB ACK {big_ms[0]:.0f} ms; {len(waits)} small ACKs meanwhile: "
            f"max {waits[-1]:.1f} ms, median {waits[len(waits) // 2]:.1f} ms",
            flush=True,
        )


async def _listen(url: str, shape: str) -> None:
    client = redis.asyncio.Redis.from_url(url)
    journal = Journal(client, 60, rejected_head_bytes=65536)
    intake = HL7v2Intake(_ADAPTER, journal, lambda *a: True, 8, AsyncKicker(StubCelery(), client))
    server = mllp_server("127.0.0.1", 0, intake, max_bytes=10 * 1024 * 1024)
    offload.start()  # as `passerelle listen` does before serving
    await server.start()
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "benchmarks.isolation", "--senders", str(server.port), shape
    )
    await child.wait()
    await server.stop()
    await client.aclose()
    offload.shutdown()


def main() -> None:
    if sys.argv[1:2] == ["--senders"]:
        senders(int(sys.argv[2]), sys.argv[3])
        return
    import logging

    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    shape = sys.argv[1] if len(sys.argv) > 1 else "obx"
    with PrivateRedis(Path(tempfile.mkdtemp())) as server:
        asyncio.run(_listen(server.url, shape))


if __name__ == "__main__":
    main()
