"""``passerelle demo``: the embedded broker, two simulated hospitals and two capture subscribers.

It uses the repository's registrations as written (``adapters/``): CHU Rabat's ADT feed and the
Casablanca laboratory's results come in over MLLP; the national DMP (a built-in FHIR capture
server on 127.0.0.1:9090) and the legacy lab system (a built-in MLLP capture on 127.0.0.1:2576)
subscribe. Every message is synthetic (``passerelle_demo.synthetic``).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import sys
import time
from dataclasses import dataclass
from typing import TextIO

from broker import running
from broker.adapters.spec import AdapterSpec, load_adapters
from broker.errors import BrokerError
from broker.settings import Settings
from broker.supervisor import Supervisor
from broker.testing import wait_for_port, wait_until
from passerelle_demo.peers.fhir_capture import FhirCapture
from passerelle_demo.peers.mllp_capture import MllpCapture
from passerelle_demo.peers.sender import SendResult, send_messages
from passerelle_demo.synthetic import stream

__all__ = ["run_demo"]


@dataclass(frozen=True)
class _Outgoing:
    adapter: AdapterSpec
    events: list[str]
    payloads: list[bytes]


def _hospitals(adapters: dict[str, AdapterSpec], count: int) -> list[_Outgoing]:
    adt_feed = adapters["chu-rabat-adt"]
    adt = list(
        stream(
            count,
            seed=2026,
            mix={"ADT^A01": 4, "ADT^A04": 2, "ADT^A08": 3},
            facility="CHU-RABAT",
            control_prefix="RBT",
        )
    )
    lab_feed = adapters["labo-casa-oru"]
    # The Casablanca lab is an older v2.3 system writing latin-1 without MSH-18, as many do:
    # its adapter's `charset: latin-1` tells the broker how to read it.
    lab = list(
        stream(
            count,
            seed=2027,
            mix={"ORU^R01": 1},
            facility="CHU-IBN-ROCHD",
            version="2.3",
            n_obx=8,
            control_prefix="CAS",
        )
    )
    lab_payloads = [
        text.replace("|MAR|UNICODE", "|MAR|", 1).encode("latin-1") for _, _, text in lab
    ]
    return [
        _Outgoing(adt_feed, [e for _, e, _ in adt], [t.encode("utf-8") for _, _, t in adt]),
        _Outgoing(lab_feed, [e for _, e, _ in lab], lab_payloads),
    ]


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def run_demo(
    settings: Settings, count: int = 100, out: TextIO = sys.stdout, *, keep: bool = False
) -> int:
    """Run the demo; return 0 when every subscriber received everything it subscribed to.

    With ``keep``, the broker and the capture subscribers keep running after the report, for a
    look at the console and the ops commands (``passerelle status``), until SIGINT or SIGTERM.
    """
    adapters = {a.id: a for a in load_adapters(settings.adapters_dir)}
    needed = ["chu-rabat-adt", "labo-casa-oru", "dmp-national", "lab-legacy"]
    missing = [n for n in needed if n not in adapters]
    if missing:
        print(
            f"passerelle demo: the demo needs the registrations {', '.join(missing)} in {settings.adapters_dir}",
            file=sys.stderr,
        )
        return 1
    for adapter in adapters.values():
        if adapter.listen or adapter.connect:
            host, port = adapter.host_port
            if not _port_free(host, port):
                print(
                    f"passerelle demo: {host}:{port} (adapter {adapter.id}) is in use; stop what uses it first",
                    file=sys.stderr,
                )
                return 1
    shutil.rmtree(settings.data_dir, ignore_errors=True)
    settings.data_dir.mkdir(parents=True)
    dmp, lab = adapters["dmp-national"], adapters["lab-legacy"]
    fhir = FhirCapture(
        port=int((dmp.url or "").rsplit(":", 1)[1].split("/")[0]), base="/fhir", validate=True
    )
    fhir.start_in_thread()
    lab_host, lab_port = lab.host_port
    mllp = MllpCapture(
        lab_host, lab_port, journal=settings.data_dir / "lab-legacy.jsonl", name="lab-legacy"
    )
    mllp.start_in_thread()
    supervisor = Supervisor(settings, log_dir=settings.data_dir / "logs")
    hospitals = _hospitals(adapters, count)
    try:
        out.write(
            f"Starting the embedded broker (data in {settings.data_dir}, logs in {settings.data_dir / 'logs'}) ...\n"
        )
        supervisor.start()
        for source in hospitals:
            host, port = source.adapter.host_port
            if not wait_for_port(host, port, 30):
                print(
                    f"passerelle demo: the listener of {source.adapter.id} did not start; see {settings.data_dir / 'logs'}",
                    file=sys.stderr,
                )
                return 1
        out.write(
            f"API on http://{settings.http_host}:{settings.http_port} (token in {settings.data_dir / 'api-token'})\n"
        )
        started = time.monotonic()
        acked: dict[str, int] = {}
        results = asyncio.run(_send_all(hospitals))
        for source, result in zip(hospitals, results, strict=True):
            acked[source.adapter.id] = result.acked_by_code.get("AA", 0)
            out.write(
                f"  {source.adapter.id}: sent {result.sent}, ACK codes {dict(result.acked_by_code)}\n"
            )
        expected = {
            sub.id: sum(
                1
                for h in hospitals
                for e in h.events
                if sub.subscribe and sub.subscribe.wants(e, h.adapter.id)
            )
            for sub in (dmp, lab)
        }
        received = {dmp.id: lambda: len(fhir.envelope_ids), lab.id: lambda: mllp.unique_count}

        interactive = out.isatty()

        def progress() -> bool:
            line = ", ".join(f"{sub} {received[sub]()}/{n}" for sub, n in expected.items())
            # A terminal gets one line updated in place; a log file one line per poll.
            out.write(f"\r  delivered: {line}   " if interactive else f"  delivered: {line}\n")
            out.flush()
            return all(received[sub]() >= n for sub, n in expected.items())

        wait_until(progress, timeout=120, interval=0.5 if interactive else 1.0)
        elapsed = time.monotonic() - started
        out.write(f"\nDone in {elapsed:.1f} s.\n")
        lost_total = 0
        for sub in (dmp, lab):
            sent = expected[sub.id]
            acknowledged = sum(
                acked[h.adapter.id]
                for h in hospitals
                if any(sub.subscribe and sub.subscribe.wants(e, h.adapter.id) for e in h.events)
            )
            delivered = received[sub.id]()
            lost = max(0, sent - delivered)
            lost_total += lost
            out.write(
                f"{sub.id}: sent {sent}, acknowledged {min(sent, acknowledged)}, delivered {delivered}, lost {lost}\n"
            )
        code = 0 if lost_total == 0 else 1
        if keep:
            _keep_running(settings, supervisor, out)
        return code
    except BrokerError as exc:
        print(f"passerelle demo: {exc}", file=sys.stderr)
        return 1
    finally:
        supervisor.stop()
        fhir.stop()
        mllp.stop()


def _keep_running(settings: Settings, supervisor: Supervisor, out: TextIO) -> None:
    """Leave everything running, say how to look at it and how to stop it; wait for a signal."""
    path = running.write(settings)
    data = settings.data_dir.resolve()
    pid = os.getpid()
    out.write(
        "\nThe system keeps running (--keep); the ops commands find it through "
        f"{path}:\n"
        f"  console and API   {running.api_url(settings)}  (API token: cat {data / 'api-token'})\n"
        "  overview          passerelle status\n"
        "  dead letters      passerelle dead-letters list dmp-national\n"
        "  test a subscriber passerelle ping lab-legacy --message\n"
        f"  logs              {data / 'logs'}\n"
        f"Stop it with Ctrl-C here, or `kill {pid}`.\n"
    )
    out.flush()
    try:
        supervisor.run_forever()
    finally:
        running.forget()
        out.write("Stopped.\n")


async def _send_all(hospitals: list[_Outgoing]) -> list[SendResult]:
    tasks = []
    for source in hospitals:
        host, port = source.adapter.host_port
        tasks.append(send_messages(host, port, source.payloads, connections=4))
    return list(await asyncio.gather(*tasks))
