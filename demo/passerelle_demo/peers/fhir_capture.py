"""A FHIR capture endpoint: the "national DMP" subscriber of the demo, the tests and the benchmark.

A small FastAPI app, served by uvicorn on its own thread and event loop so that synchronous
tests can drive it, in front of a :class:`~passerelle_demo.peers.fhir_store.FhirStore` that
records what it is sent and answers as a FHIR server would. Tests switch its behaviour at run
time (``mode``, ``fail_next``, ``latency_s``) to play a subscriber that is down, failing,
rejecting or slow.

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
import json
import socket
import threading
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Final, Literal, TypeVar, get_args

import uvicorn
from fastapi import FastAPI, Request, Response
from starlette.exceptions import HTTPException
from starlette.types import Receive

from broker.log import get_logger
from passerelle_demo.peers.fhir_store import (
    CAPABILITY,
    Answer,
    FhirStore,
    StoredResource,
    operation_outcome,
)

__all__ = ["FhirCapture", "HeldRequest", "Mode", "StoredResource"]

Mode = Literal["ok", "down", "error", "reject"]
"""``ok`` answers; ``down`` stops listening; ``error`` answers 503; ``reject`` answers 422."""

_FHIR_JSON: Final = "application/fhir+json"
_IDLE_KEEP_ALIVE_S: Final = 3600.0
"""How long an idle keep-alive connection stays open: the broker's pooled connections are
closed by the broker (or by ``down``), never by a capture timing them out under its feet."""
_STOP_WAIT_S: Final = 5.0
"""How long a stop waits for the requests being answered to end once their connection is cut."""
_T = TypeVar("_T")

_log = get_logger(__name__)


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


class FhirCapture(FhirStore):
    """A recording FHIR server on loopback, controllable from tests: a FhirStore served over HTTP.

    Args:
        host: the address to listen on.
        port: the port; 0 picks a free one (kept across ``down``/``ok`` switches).
        base: the FHIR base path.
        validate: validate each received Bundle with ``fhir.resources`` R4B (slow: keep it off
            in the benchmark); an invalid Bundle is answered 422.
        keep_bundles: keep every accepted Bundle in ``received`` (turn off for long benchmarks).

    Attributes:
        observer: called with ``(method, path, status, body)`` once each request is answered
            (``passerelle capture fhir`` prints it); runs on the server's event loop.
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
        super().__init__(base, validate, keep_bundles=keep_bundles)
        self.host = host
        self.port = port
        self.latency_s = 0.0
        self.observer: Callable[[str, str, int, bytes], None] | None = None
        self._mode: Mode = "ok"
        self._fail_left = 0
        self._fail_mode: Mode = "error"
        self._in_flight: dict[int, HeldRequest] = {}
        self._abandoned: list[HeldRequest] = []
        self._app = _app(self)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: uvicorn.Server | None = None
        self._serving: asyncio.Task[None] | None = None

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
            self.port = _free_port(self.host)
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

    def in_flight(self) -> list[HeldRequest]:
        """The requests being held by ``latency_s`` right now, not answered yet."""
        with self._lock:
            return list(self._in_flight.values())

    def abandoned(self) -> list[HeldRequest]:
        """The held requests whose connection closed before they were answered, in order."""
        with self._lock:
            return list(self._abandoned)

    def reset(self) -> None:
        """Forget everything received and stored; the mode is kept."""
        super().reset()
        with self._lock:
            self._abandoned.clear()

    # --- serving ---------------------------------------------------------------------------

    async def handle(self, request: Request, interaction: Callable[[bytes], Answer]) -> Response:
        """Answer one write: hold it ``latency_s``, apply the mode, then ``interaction(body)``.

        Returns:
            The response, or an empty 499 nobody receives when the sender went away while the
            request was held (it is then listed by ``abandoned()``, not recorded).
        """
        body = await request.body()
        if self.latency_s > 0 and not await self._hold(request, body):
            return Response(status_code=499)
        answer = self._failure() or interaction(body)
        self.observe(request.method, request.url.path, answer.status, body)
        return self.respond(answer)

    def observe(self, method: str, path: str, status: int, body: bytes) -> None:
        """Tell the ``observer``, if any, of one request answered."""
        if self.observer is not None:
            self.observer(method, path, status, body)

    def respond(self, answer: Answer) -> Response:
        """The HTTP response for ``answer``, counted in ``status_counts()``."""
        self.count_status(answer.status)
        content = json.dumps(answer.payload, separators=(",", ":")).encode()
        return Response(content, answer.status, answer.headers, media_type=_FHIR_JSON)

    async def _hold(self, request: Request, body: bytes) -> bool:
        """Hold a request ``latency_s``; False when its connection closed meanwhile."""
        client = request.client
        held = HeldRequest((client.host, client.port) if client else ("", 0), body)
        with self._lock:
            self._in_flight[id(held)] = held
        gone = True
        try:
            gone = await _disconnects_within(request.receive, self.latency_s)
        finally:
            with self._lock:
                del self._in_flight[id(held)]
                if gone:
                    self._abandoned.append(held)
        return not gone

    def _failure(self) -> Answer | None:
        with self._lock:
            mode: Mode = self._mode
            if self._fail_left > 0:
                self._fail_left -= 1
                mode = self._fail_mode
        if mode == "error":
            return Answer(
                503, operation_outcome("transient", "the capture endpoint is in error mode")
            )
        if mode == "reject":
            return Answer(
                422, operation_outcome("business-rule", "the capture endpoint rejects this")
            )
        return None

    def _call(self, coro: Coroutine[Any, Any, _T]) -> _T:
        assert self._loop is not None
        if self._thread is threading.current_thread():
            msg = "FhirCapture cannot be controlled from its own event loop thread"
            raise RuntimeError(msg)
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=30)

    async def _listen(self) -> None:
        if self._server is not None:
            return
        # IPPROTO_TCP named, not 0: asyncio sets TCP_NODELAY on the accepted connections only
        # then, and without it every answer waits out the client's delayed ACK (40 ms).
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.port))
        except OSError:
            sock.close()
            raise
        config = uvicorn.Config(
            self._app,
            lifespan="off",
            log_config=None,
            access_log=False,
            http="httptools",
            ws="none",
            proxy_headers=False,
            server_header=False,
            date_header=False,
            timeout_keep_alive=int(_IDLE_KEEP_ALIVE_S),
            backlog=512,
        )
        server = uvicorn.Server(config)
        self._serving = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started:
            if self._serving.done():
                sock.close()
                await self._serving  # raises what stopped it
                msg = f"the FHIR capture did not start on {self.host}:{self.port}"
                raise RuntimeError(msg)
            await asyncio.sleep(0.005)
        self._server = server
        self.port = int(sock.getsockname()[1])
        _log.info("fhir_capture.listening", port=self.port)

    async def _close_all(self) -> None:
        """Stop listening and drop every connection at once, held requests included."""
        server, serving = self._server, self._serving
        self._server = self._serving = None
        if server is None or serving is None:
            return
        # Refuse new connections and cut the open ones now (a subscriber that went away), not
        # uvicorn's graceful shutdown, which would finish and record the held requests.
        for listener in server.servers:
            listener.close()
        for connection in list(server.server_state.connections):
            transport = getattr(connection, "transport", None)
            if transport is not None:
                transport.abort()
        # Nothing is left for uvicorn's shutdown to do: end its loop now rather than at its
        # next tick and pause (0.2 s per stop, paid by every test that starts a capture).
        serving.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await serving
        tasks = list(server.server_state.tasks)
        if tasks:
            await asyncio.wait(tasks, timeout=_STOP_WAIT_S)


def _app(capture: FhirCapture) -> FastAPI:
    """The capture's routes under ``capture.base``; everything else is an OperationOutcome."""
    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None, redirect_slashes=False)
    base = capture.base

    @app.get(f"{base}/metadata")
    async def metadata() -> Response:
        capture.observe("GET", f"{base}/metadata", 200, b"")
        return capture.respond(Answer(200, CAPABILITY))

    @app.post(base + "/")
    @app.post(base or "/")
    async def transaction(request: Request) -> Response:
        return await capture.handle(request, capture.transaction)

    @app.post(base + "/{resource_type}")
    async def create(request: Request, resource_type: str) -> Response:
        return await capture.handle(request, _writer(capture, "POST", request))

    @app.put(base + "/{path:path}")
    async def update(request: Request, path: str) -> Response:
        return await capture.handle(request, _writer(capture, "PUT", request))

    @app.exception_handler(HTTPException)
    async def not_here(request: Request, exc: HTTPException) -> Response:
        code = "not-supported" if exc.status_code == 405 else "not-found"
        diagnostics = f"{request.method} {request.url.path}: {exc.detail}"
        return capture.respond(Answer(exc.status_code, operation_outcome(code, diagnostics)))

    return app


def _writer(capture: FhirCapture, method: str, request: Request) -> Callable[[bytes], Answer]:
    """``capture.write`` for the URL of ``request`` relative to the base, query included."""
    url = request.url.path[len(capture.base) :].strip("/")
    query = request.url.query
    return lambda body: capture.write(method, f"{url}?{query}" if query else url, body)


async def _disconnects_within(receive: Receive, seconds: float) -> bool:
    """Whether the client disconnects within ``seconds`` (the body has been read already)."""
    try:
        async with asyncio.timeout(seconds):
            while (await receive())["type"] != "http.disconnect":
                pass
    except TimeoutError:
        return False
    return True


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])
