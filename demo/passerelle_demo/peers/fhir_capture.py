"""A FHIR capture endpoint: the "national DMP" subscriber of the demo, the tests and the benchmark.

A small HTTP/1.1 server (asyncio streams, keep-alive) that accepts FHIR transaction Bundles,
records them and answers as a FHIR server would, with conditional-update semantics: a resource
sent as ``PUT Patient?identifier=system|value`` is created once and updated on re-delivery, so the
counts of unique resources prove that the broker delivers no duplicates. It runs in its own thread
and event loop, so synchronous tests can drive it.

Routes (``base`` is ``/fhir`` by default)::

    POST {base}                  transaction or batch Bundle → transaction-response (200)
    POST {base}/{type}           one resource, created (201)
    PUT  {base}/{type}?query     one resource, conditional update (201 created / 200 updated)
    PUT  {base}/{type}/{id}      one resource, update or create
    GET  {base}/metadata         a minimal CapabilityStatement

Usage::

    capture = FhirCapture()
    port = capture.start_in_thread()
    ...  # point a subscriber at http://127.0.0.1:{port}/fhir
    capture.mode = "error"       # 503 from now on: the broker must retry
    capture.stop()
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Literal, get_args

from broker.log import get_logger

__all__ = ["FhirCapture", "HeldRequest", "Mode", "StoredResource"]

Mode = Literal["ok", "down", "error", "reject"]
"""``ok`` answers; ``down`` stops listening; ``error`` answers 503; ``reject`` answers 422."""


_MAX_HEADER_BYTES: Final = 64 * 1024
_REASONS: Final[dict[int, str]] = {
    200: "OK",
    201: "Created",
    204: "No Content",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    411: "Length Required",
    413: "Payload Too Large",
    422: "Unprocessable Entity",
    503: "Service Unavailable",
}
_FHIR_JSON: Final = "application/fhir+json"

_log = get_logger(__name__)


@dataclass(slots=True)
class StoredResource:
    """One resource as the capture keeps it.

    Attributes:
        key: the conditional URL (``Patient?identifier=sys|val``) or ``Type/id`` it is stored under.
        resource_type: its FHIR type.
        id: the server-assigned id.
        version: 1 on creation, +1 per update.
        resource: the last JSON received (``{}`` when ``keep_bundles`` is off).
    """

    key: str
    resource_type: str
    id: str
    version: int
    resource: dict[str, Any]


@dataclass(frozen=True, slots=True)
class HeldRequest:
    """A request the capture held for ``latency_s`` before answering.

    Attributes:
        peer: the client's ``(host, port)``: with ``/proc`` it names the process that sent it.
        body: the request body as received.
    """

    peer: tuple[str, int]
    body: bytes

    @property
    def identifier(self) -> str | None:
        """``Bundle.identifier.value`` of the body (the broker's envelope id), if it has one."""
        try:
            document = json.loads(self.body)
        except ValueError:
            return None
        found = document.get("identifier") if isinstance(document, dict) else None
        value = found.get("value") if isinstance(found, dict) else None
        return str(value) if value else None


class _HttpError(Exception):
    def __init__(self, status: int, diagnostics: str) -> None:
        self.status = status
        self.diagnostics = diagnostics
        super().__init__(diagnostics)


def _outcome(code: str, diagnostics: str) -> dict[str, Any]:
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": code, "diagnostics": diagnostics}],
    }


_CAPABILITY: Final[dict[str, Any]] = {
    "resourceType": "CapabilityStatement",
    "status": "active",
    "date": "2025-01-01",
    "kind": "instance",
    "software": {"name": "Passerelle FHIR capture"},
    "fhirVersion": "4.0.1",
    "format": ["json"],
    "rest": [
        {
            "mode": "server",
            "interaction": [{"code": "transaction"}, {"code": "batch"}],
            "resource": [
                {
                    "type": t,
                    "interaction": [{"code": "create"}, {"code": "update"}],
                    "conditionalCreate": True,
                    "conditionalUpdate": True,
                }
                for t in ("Patient", "Encounter", "Observation", "DiagnosticReport", "Coverage")
            ],
        }
    ],
}


class FhirCapture:
    """A recording FHIR server on loopback, controllable from tests.

    Args:
        host: the address to listen on.
        port: the port; 0 picks a free one (kept across ``down``/``ok`` switches).
        base: the FHIR base path.
        validate: validate each received Bundle with ``fhir.resources`` R4B (slow: keep it off
            in the benchmark); an invalid Bundle is answered 422.
        keep_bundles: keep every accepted Bundle in ``received`` (turn off for long benchmarks).

    Attributes:
        latency_s: seconds to wait before answering each request (simulates a slow subscriber).
            While a request waits it is listed by ``in_flight()``; one whose connection closes
            before its answer (the sender died or gave up) moves to ``abandoned()`` and is
            neither answered nor recorded.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        base: str = "/fhir",
        validate: bool = False,
        *,
        keep_bundles: bool = True,
    ) -> None:
        self.host = host
        self.port = port
        self.base = "/" + base.strip("/") if base.strip("/") else ""
        self.validate = validate
        self.keep_bundles = keep_bundles
        self.latency_s = 0.0
        self._mode: Mode = "ok"
        self._fail_left = 0
        self._fail_mode: Mode = "error"
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._transports: set[asyncio.Transport] = set()
        self._received: list[dict[str, Any]] = []
        self._received_count = 0
        self._control_ids: list[str] = []
        self._arrivals: list[float] = []
        self._resources: dict[str, StoredResource] = {}
        self._statuses: Counter[int] = Counter()
        self._plain_creates: Counter[str] = Counter()
        self._invalid = 0
        self._in_flight: dict[int, HeldRequest] = {}
        self._abandoned: list[HeldRequest] = []
        self._ids = itertools.count(1)
        self._id_prefix = uuid.uuid4().hex[:8]
        self._validator: Callable[[dict[str, Any]], object] | None = None

    # --- lifecycle -------------------------------------------------------------------------

    def start_in_thread(self) -> int:
        """Start the server on a background thread and event loop.

        Returns:
            The port it listens on.

        Raises:
            RuntimeError: when already started.
            OSError: when the address cannot be bound.
        """
        if self._thread is not None:
            raise RuntimeError("this FhirCapture is already started")
        loop = asyncio.new_event_loop()
        ready = threading.Event()
        self._loop = loop

        def run() -> None:
            asyncio.set_event_loop(loop)
            ready.set()
            loop.run_forever()
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

        self._thread = threading.Thread(target=run, name="fhir-capture", daemon=True)
        self._thread.start()
        ready.wait()
        if self._mode != "down":
            try:
                self._call(self._listen())
            except BaseException:
                self.stop()
                raise
        elif self.port == 0:
            self._call(self._reserve_port())
        return self.port

    def stop(self) -> None:
        """Close every connection, stop listening and end the thread; idempotent."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        if loop.is_running():
            with contextlib.suppress(Exception):
                self._call(self._close_all())
            loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        self._loop = None
        self._thread = None

    def __enter__(self) -> FhirCapture:
        self.start_in_thread()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """The FHIR base URL, e.g. ``http://127.0.0.1:43117/fhir``."""
        return f"http://{self.host}:{self.port}{self.base}"

    @property
    def mode(self) -> Mode:
        """How the server behaves now: ``ok``, ``down``, ``error`` (503) or ``reject`` (422).

        Setting ``down`` stops listening and drops open connections (clients get connection
        refused); setting any other mode listens again on the same port.
        """
        return self._mode

    @mode.setter
    def mode(self, value: Mode) -> None:
        if value not in get_args(Mode):
            msg = f"unknown mode {value!r}; expected one of {', '.join(get_args(Mode))}"
            raise ValueError(msg)
        previous, self._mode = self._mode, value
        with self._lock:
            self._fail_left = 0
        if self._loop is None:
            return
        if value == "down" and previous != "down":
            self._call(self._close_all())
        elif value != "down" and previous == "down":
            self._call(self._listen())

    def fail_next(self, count: int, mode: Literal["error", "reject"] = "error") -> None:
        """Answer the next ``count`` requests as ``mode`` would, then behave as ``ok`` again.

        Args:
            count: how many requests fail.
            mode: ``error`` (503) or ``reject`` (422).
        """
        with self._lock:
            self._fail_left = count
            self._fail_mode = mode

    # --- what was received -----------------------------------------------------------------

    @property
    def received(self) -> list[dict[str, Any]]:
        """Every accepted Bundle, in arrival order (empty when ``keep_bundles`` is off)."""
        with self._lock:
            return list(self._received)

    @property
    def received_count(self) -> int:
        """How many Bundles (or single resources) were accepted."""
        with self._lock:
            return self._received_count

    @property
    def count(self) -> int:
        """Alias of ``received_count``: accepted Bundles (or single resources)."""
        return self.received_count

    @property
    def invalid(self) -> int:
        """Bundles answered 422 because ``validate`` found them not valid FHIR R4B."""
        with self._lock:
            return self._invalid

    @property
    def envelope_ids(self) -> set[str]:
        """The distinct ``Bundle.identifier`` values received: one per envelope delivered."""
        with self._lock:
            return set(self._control_ids)

    @property
    def received_control_ids(self) -> list[str]:
        """``Bundle.identifier.value`` of every accepted Bundle, in arrival order, repeats kept.

        The broker sets it to the envelope id (system ``urn:passerelle:envelope``), so a repeat
        is a duplicate delivery and a missing id a loss.
        """
        with self._lock:
            return list(self._control_ids)

    def arrivals(self) -> list[tuple[str, float]]:
        """``(Bundle.identifier.value, epoch seconds)`` of every accepted Bundle, in order."""
        with self._lock:
            return list(zip(self._control_ids, self._arrivals, strict=True))

    def in_flight(self) -> list[HeldRequest]:
        """The requests being held by ``latency_s`` right now, not answered yet."""
        with self._lock:
            return list(self._in_flight.values())

    def abandoned(self) -> list[HeldRequest]:
        """The held requests whose connection closed before they were answered, in order."""
        with self._lock:
            return list(self._abandoned)

    def duplicate_control_ids(self) -> dict[str, int]:
        """Identifier values received more than once → how many times."""
        with self._lock:
            counts = Counter(self._control_ids)
        return {value: n for value, n in counts.items() if n > 1}

    def unique_resources(self) -> dict[str, int]:
        """Resource type → number of distinct resources.

        A conditional update or create counts once per conditional URL, an update by id once
        per id, and each plain ``POST`` (no ``ifNoneExist``) counts as a new resource.
        """
        with self._lock:
            counts = Counter(r.resource_type for r in self._resources.values())
            counts.update(self._plain_creates)
        return dict(counts)

    def stored(self, key: str) -> StoredResource | None:
        """The resource stored under ``key`` (``Patient?identifier=sys|val`` or ``Type/id``)."""
        with self._lock:
            return self._resources.get(key)

    def status_counts(self) -> dict[int, int]:
        """HTTP status → number of responses sent with it."""
        with self._lock:
            return dict(self._statuses)

    def reset(self) -> None:
        """Forget everything received and stored; the mode is kept."""
        with self._lock:
            self._received.clear()
            self._received_count = 0
            self._control_ids.clear()
            self._arrivals.clear()
            self._resources.clear()
            self._statuses.clear()
            self._plain_creates.clear()
            self._invalid = 0
            self._abandoned.clear()

    # --- server ----------------------------------------------------------------------------

    def _call(self, coro: Any) -> Any:
        assert self._loop is not None
        if self._thread is threading.current_thread():
            msg = "FhirCapture cannot be controlled from its own event loop thread"
            raise RuntimeError(msg)
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=10)

    async def _reserve_port(self) -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: _Connection(self), self.host, self.port)
        self.port = server.sockets[0].getsockname()[1]
        server.close()

    async def _listen(self) -> None:
        if self._server is not None:
            return
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Connection(self), self.host, self.port, reuse_address=True, backlog=512
        )
        self.port = self._server.sockets[0].getsockname()[1]
        _log.info("fhir_capture.listening", port=self.port)

    async def _close_all(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for transport in list(self._transports):
            transport.abort()
        self._transports.clear()
        if server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), timeout=2)

    def _hold(self, connection: _Connection, request: _Request) -> None:
        with self._lock:
            self._in_flight[id(connection)] = HeldRequest(connection.peer, request.body)

    def _settle(self, connection: _Connection, *, answered: bool) -> None:
        with self._lock:
            held = self._in_flight.pop(id(connection), None)
            if held is not None and not answered:
                self._abandoned.append(held)

    def _answer(self, transport: asyncio.Transport, request: _Request) -> None:
        status, payload, extra = self._dispatch(request.method, request.target, request.body)
        self._respond(transport, status, payload, request.keep_alive, extra)

    def _respond(
        self,
        transport: asyncio.BaseTransport,
        status: int,
        payload: dict[str, Any] | None,
        keep_alive: bool,
        extra: dict[str, str] | None = None,
    ) -> None:
        body = b"" if payload is None else json.dumps(payload, separators=(",", ":")).encode()
        head = [
            f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}",
            f"Content-Length: {len(body)}",
            f"Connection: {'keep-alive' if keep_alive else 'close'}",
        ]
        if payload is not None:
            head.append(f"Content-Type: {_FHIR_JSON}")
        head.extend(f"{k}: {v}" for k, v in (extra or {}).items())
        assert isinstance(transport, asyncio.WriteTransport)
        transport.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)
        with self._lock:
            self._statuses[status] += 1

    # --- FHIR semantics --------------------------------------------------------------------

    def _dispatch(
        self, method: str, target: str, body: bytes
    ) -> tuple[int, dict[str, Any] | None, dict[str, str] | None]:
        path, _, query = target.partition("?")
        if self.base and not (path == self.base or path.startswith(self.base + "/")):
            return 404, _outcome("not-found", "no FHIR endpoint at this path"), None
        rest = path[len(self.base) :].strip("/")
        if method == "GET" and rest == "metadata":
            return 200, _CAPABILITY, None
        if method not in ("POST", "PUT"):
            return 405, _outcome("not-supported", f"{method} is not supported here"), None
        failure = self._failure()
        if failure is not None:
            return failure
        try:
            document = json.loads(body)
        except (UnicodeDecodeError, ValueError):
            return 400, _outcome("structure", "the body is not JSON"), None
        if not isinstance(document, dict):
            return 400, _outcome("structure", "the body is not a JSON object"), None
        try:
            if not rest and method == "POST":
                return 200, self._transaction(document), None
            if (method == "POST" and "/" not in rest) or (method == "PUT" and rest):
                return self._single(method, rest, query, document)
        except _HttpError as exc:
            return exc.status, _outcome("invalid", exc.diagnostics), None
        return 404, _outcome("not-found", "unsupported interaction"), None

    def _failure(self) -> tuple[int, dict[str, Any], None] | None:
        with self._lock:
            mode: Mode = self._mode
            if self._fail_left > 0:
                self._fail_left -= 1
                mode = self._fail_mode
        if mode == "error":
            return 503, _outcome("transient", "the capture endpoint is in error mode"), None
        if mode == "reject":
            return 422, _outcome("business-rule", "the capture endpoint rejects this"), None
        return None

    def _check(self, document: dict[str, Any]) -> None:
        if not self.validate:
            return
        if self._validator is None:
            from fhir.resources.R4B.bundle import Bundle  # slow import: only when validating

            self._validator = Bundle.model_validate
        try:
            self._validator(document)
        except ValueError as exc:  # pydantic's ValidationError is a ValueError
            msg = f"the Bundle is not valid FHIR R4B: {exc.__class__.__name__}"
            errors = getattr(exc, "errors", None)
            if callable(errors):
                where = [".".join(str(p) for p in e.get("loc", ())) for e in errors()[:5]]
                msg += f" at {', '.join(where)}"
            with self._lock:
                self._invalid += 1
            raise _HttpError(422, msg) from None

    def _transaction(self, bundle: dict[str, Any]) -> dict[str, Any]:
        if bundle.get("resourceType") != "Bundle":
            raise _HttpError(400, "POST to the base expects a Bundle")
        kind = bundle.get("type")
        if kind not in ("transaction", "batch"):
            raise _HttpError(400, "the Bundle type must be transaction or batch")
        self._check(bundle)
        entries = bundle.get("entry") or []
        if not isinstance(entries, list):
            raise _HttpError(400, "Bundle.entry must be an array")
        # Check every entry before storing any: a transaction succeeds or fails as a whole.
        requests: list[tuple[str, str, dict[str, Any], Any]] = []
        for index, entry in enumerate(entries):
            request = entry.get("request") if isinstance(entry, dict) else None
            resource = entry.get("resource") if isinstance(entry, dict) else None
            method = str((request or {}).get("method", "")).upper()
            if method not in ("POST", "PUT") or not isinstance(resource, dict):
                msg = f"Bundle.entry[{index}] needs a resource and request.method POST or PUT"
                raise _HttpError(400, msg)
            assert request is not None
            requests.append(
                (method, str(request.get("url", "")), resource, request.get("ifNoneExist"))
            )
        responses = []
        with self._lock:
            for method, url, resource, if_none_exist in requests:
                status, stored = self._store(method, url, resource, if_none_exist)
                responses.append(
                    {
                        "response": {
                            "status": "201 Created" if status == 201 else "200 OK",
                            "location": f"{stored.resource_type}/{stored.id}"
                            f"/_history/{stored.version}",
                            "etag": f'W/"{stored.version}"',
                        }
                    }
                )
            self._record(bundle)
        return {
            "resourceType": "Bundle",
            "id": self._new_id(),
            "type": f"{kind}-response",
            "entry": responses,
        }

    def _single(
        self, method: str, rest: str, query: str, resource: dict[str, Any]
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        url = f"{rest}?{query}" if query else rest
        if not isinstance(resource.get("resourceType"), str):
            raise _HttpError(400, "the body is not a FHIR resource (no resourceType)")
        with self._lock:
            status, stored = self._store(method, url, resource, None)
            self._record(resource)
            answer = {
                **stored.resource,
                "id": stored.id,
                "meta": {"versionId": str(stored.version)},
            }
        location = f"{self.base}/{stored.resource_type}/{stored.id}/_history/{stored.version}"
        return status, answer, {"Location": location, "ETag": f'W/"{stored.version}"'}

    def _store(
        self, method: str, url: str, resource: dict[str, Any], if_none_exist: Any
    ) -> tuple[int, StoredResource]:
        """Apply one create or update to the store (lock held); return (status, stored)."""
        path, _, query = url.partition("?")
        resource_type = str(resource.get("resourceType") or path.split("/")[0])
        if method == "PUT":
            key = url if query else path  # conditional update or Type/id update (RESTful API)
        elif if_none_exist:
            key = f"{path}?{if_none_exist}"  # conditional create
            found = self._resources.get(key)
            if found is not None:
                return 200, found
        else:
            # A plain create always makes a new resource: counted, not stored (the benchmark
            # sends hundreds of thousands).
            self._plain_creates[resource_type] += 1
            return 201, StoredResource("", resource_type, self._new_id(), 1, {})
        kept = resource if self.keep_bundles else {}
        found = self._resources.get(key)
        if found is not None:
            found.version += 1
            found.resource = kept
            return 200, found
        rid = path.split("/")[1] if method == "PUT" and "/" in path else self._new_id()
        stored = StoredResource(key, resource_type, rid, 1, kept)
        self._resources[key] = stored
        return 201, stored

    def _new_id(self) -> str:
        # A counter, not uuid4: uuid4 costs more than the rest of a request's bookkeeping.
        return f"{self._id_prefix}{next(self._ids):x}"

    def _record(self, document: dict[str, Any]) -> None:
        """Count one accepted request and keep its identifier (lock held)."""
        self._received_count += 1
        if self.keep_bundles:
            self._received.append(document)
        identifier = (
            document.get("identifier") if document.get("resourceType") == "Bundle" else None
        )
        if isinstance(identifier, dict) and identifier.get("value"):
            self._control_ids.append(str(identifier["value"]))
            self._arrivals.append(time.time())


@dataclass(frozen=True, slots=True)
class _Request:
    method: str
    target: str
    body: bytes
    keep_alive: bool


def _chunked_body(buf: bytearray, start: int) -> tuple[bytes, int] | None:
    """Decode a chunked body starting at ``start``: (body, end offset), or None if incomplete."""
    chunks: list[bytes] = []
    pos = start
    while True:
        line_end = buf.find(b"\r\n", pos)
        if line_end < 0:
            return None
        size_text = bytes(buf[pos:line_end]).split(b";")[0].strip() or b"0"
        try:
            size = int(size_text, 16)
        except ValueError:
            raise _HttpError(400, "malformed chunk size") from None
        pos = line_end + 2
        if size == 0:
            trailer_end = buf.find(b"\r\n", pos)
            return (b"".join(chunks), trailer_end + 2) if trailer_end >= 0 else None
        if len(buf) < pos + size + 2:
            return None
        chunks.append(bytes(buf[pos : pos + size]))
        pos += size + 2


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 connection: requests are answered in order, keep-alive by default.

    A protocol rather than asyncio streams: it halves the per-request cost, which is what lets
    the capture keep up with the benchmark.
    """

    def __init__(self, capture: FhirCapture) -> None:
        self.capture = capture
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.busy = False
        self.peer: tuple[str, int] = ("", 0)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            self.peer = (str(peer[0]), int(peer[1]))
        self.capture._transports.add(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is not None:
            self.capture._transports.discard(self.transport)
        if self.busy:
            self.capture._settle(self, answered=False)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.busy:
            self._process()

    def _process(self) -> None:
        transport = self.transport
        while transport is not None and not transport.is_closing():
            try:
                request = self._next_request()
            except _HttpError as exc:
                outcome = _outcome("structure", exc.diagnostics)
                self.capture._respond(transport, exc.status, outcome, False)
                transport.close()
                return
            if request is None:
                return
            delay = self.capture.latency_s
            if delay > 0:
                # Reading goes on while the request is held (later bytes wait in the buffer),
                # so a sender that disconnects meanwhile is seen: its request is abandoned.
                self.busy = True
                self.capture._hold(self, request)
                asyncio.get_running_loop().call_later(delay, self._delayed, request)
                return
            self.capture._answer(transport, request)
            if not request.keep_alive:
                transport.close()
                return

    def _delayed(self, request: _Request) -> None:
        transport = self.transport
        self.busy = False
        if transport is None or transport.is_closing():
            self.capture._settle(self, answered=False)
            return
        self.capture._settle(self, answered=True)
        self.capture._answer(transport, request)
        if not request.keep_alive:
            transport.close()
            return
        self._process()

    def _next_request(self) -> _Request | None:
        buf = self.buffer
        head_end = buf.find(b"\r\n\r\n")
        if head_end < 0:
            if len(buf) > _MAX_HEADER_BYTES:
                raise _HttpError(413, "request headers are too large")
            return None
        lines = bytes(buf[:head_end]).decode("latin-1").split("\r\n")
        try:
            method, target, version = lines[0].split(" ", 2)
        except ValueError:
            raise _HttpError(400, "malformed request line") from None
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        connection = headers.get("connection", "").lower()
        keep_alive = connection != "close" and (version == "HTTP/1.1" or connection == "keep-alive")
        start = head_end + 4
        if headers.get("transfer-encoding", "").lower() == "chunked":
            decoded = _chunked_body(buf, start)
            if decoded is None:
                return None
            body, end = decoded
        else:
            length = headers.get("content-length", "0")
            if not length.isdigit():
                raise _HttpError(400, "Content-Length is not a number")
            end = start + int(length)
            if len(buf) < end:
                return None
            body = bytes(buf[start:end])
        del buf[:end]
        return _Request(method, target, body, keep_alive)
