"""``passerelle capture fhir|mllp``: one capture peer in the foreground, printing what it gets.

One line per message or request (time, control id or Bundle identifier, event, the answer), no
body unless ``show``: a capture pointed at by a real subscriber registration receives patient
data. It runs until SIGINT or SIGTERM.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
from datetime import datetime
from typing import Any

from passerelle_demo.peers.fhir_capture import FhirCapture
from passerelle_demo.peers.mllp_capture import CapturedMessage, MllpCapture

__all__ = ["describe_bundle", "run_capture"]


def _now() -> str:
    return datetime.now().astimezone().isoformat(timespec="seconds")


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def describe_bundle(body: bytes) -> str:
    """``transaction Bundle, 4 entries, identifier X``: what a FHIR body is, not what it says."""
    try:
        document: Any = json.loads(body)
    except ValueError:
        return f"{len(body)} bytes, not JSON"
    if not isinstance(document, dict):
        return "JSON, not a resource"
    kind = document.get("resourceType", "?")
    if kind != "Bundle":
        return str(kind)
    entries = len(document.get("entry") or [])
    identifier = (document.get("identifier") or {}).get("value")
    named = f", identifier {identifier}" if identifier else ""
    return f"{document.get('type', '?')} Bundle, {entries} entries{named}"


def _event(text: str) -> str:
    header = text.split("\r", 1)[0].split("\n", 1)[0]
    fields = header.split(header[3:4]) if len(header) > 3 else []
    return fields[8] if len(fields) > 8 else "?"


def run_capture(kind: str, host: str, port: int, mode: str, *, show: bool = False) -> None:
    """Listen until SIGINT/SIGTERM, printing one line per message (and its body with ``show``).

    Raises:
        OSError: the address cannot be bound.
    """
    stop = threading.Event()
    previous = {
        signum: signal.signal(signum, lambda *_: stop.set())
        for signum in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        if kind == "fhir":
            _run_fhir(host, port, mode, show, stop)
        else:
            _run_mllp(host, port, mode, show, stop)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _run_fhir(host: str, port: int, mode: str, show: bool, stop: threading.Event) -> None:
    server = FhirCapture(host, port, keep_bundles=False)

    def observed(method: str, path: str, status: int, body: bytes) -> None:
        what = describe_bundle(body) if body else ""
        _say(f"{_now()}  {method} {path}  {status}  {what}".rstrip())
        if show and body:
            _say(body.decode("utf-8", "replace"))

    server.observer = observed
    server.mode = mode  # type: ignore[assignment]
    server.start_in_thread()
    _say(f"FHIR capture listening on {server.url} (answers: {mode}); Ctrl-C stops it")
    try:
        stop.wait()
    finally:
        server.stop()
    _say(f"stopped after {server.received_count} Bundle(s)")


def _run_mllp(host: str, port: int, mode: str, show: bool, stop: threading.Event) -> None:
    server = MllpCapture(host, port, mode=mode, name="capture")  # type: ignore[arg-type]

    def observed(record: CapturedMessage) -> None:
        answer = record.answer or "nothing"
        _say(
            f"{_now()}  {record.control_id or '(no MSH-10)'}  {_event(record.text)}  answered {answer}"
        )
        if show:
            _say(record.text.replace("\r", "\n").rstrip("\n"))

    server.observer = observed
    bound_host, bound_port = server.start_in_thread()
    _say(f"MLLP capture listening on {bound_host}:{bound_port} (answers: {mode}); Ctrl-C stops it")
    try:
        stop.wait()
    finally:
        server.stop()
    _say(f"stopped after {server.count} message(s)")
