"""HTTP(S) connections to a subscriber: one TLS context reused, the server's name checked.

``http.client`` rather than httpx for the delivery hot path (see ``FhirRestSender``). Its
``HTTPSConnection`` checks the certificate against the URL's host; a registration's
``tls.server_name`` names another (a server reached by IP address, or through a tunnel), so
:class:`NamedHTTPSConnection` sends that name instead (SNI, and the name checked).

The connections answer with :class:`Response`, which reads the header fields without the
``email`` package. The FHIR sender encodes its requests' head once (:class:`RequestHead`) and
sends each request in one write (:func:`exchange`): the same bytes as ``conn.request``.
"""

from __future__ import annotations

import http.client
import re
import ssl
import urllib.parse
from collections.abc import Mapping
from typing import BinaryIO

__all__ = [
    "MalformedReplyError",
    "NamedHTTPSConnection",
    "RequestHead",
    "Response",
    "connection_for",
    "exchange",
    "tls_reason",
]

_MAX_LINE = 65536
_MAX_FIELDS = 100
"""http.client's own limits on a header line's length and on the number of header lines."""
_END_OF_FIELDS = (b"\r\n", b"\n", b"")
_LEGAL_NAME = re.compile(rb"[^:\s][^:\r\n]*")
_ILLEGAL_VALUE = re.compile(rb"\n(?![ \t])|\r(?![ \t\n])")
_ILLEGAL_PATH = re.compile("[\x00-\x20\x7f]")
"""http.client's checks against header injection (CVE-2019-9740): names, values, the path."""


class MalformedReplyError(http.client.HTTPException):
    """Raised when a reply's header section is not HTTP: a line without a colon, or too many."""


def _read_fields(fp: BinaryIO) -> http.client.HTTPMessage:
    """Read a reply's header fields, up to and including the empty line that ends them.

    What ``http.client.parse_headers`` returns (an ``HTTPMessage`` of the fields as they came,
    the value's leading blanks and line end removed, an obs-fold continuation line joined to its
    field), without the ``email`` package's generic parser: that cost a third of a FHIR
    delivery's CPU time in the worker's profile. Unlike it, a line that is no field is an error,
    not the silent end of the fields.

    Raises:
        http.client.LineTooLong: a line longer than http.client's limit (64 KiB).
        MalformedReplyError: a line without a colon, or more than 100 lines.
    """
    fields = http.client.HTTPMessage()
    name = value = ""
    count = 0
    while True:
        line = fp.readline(_MAX_LINE + 1)
        if len(line) > _MAX_LINE:
            raise http.client.LineTooLong("header line")
        if line in _END_OF_FIELDS:
            break
        count += 1
        if count > _MAX_FIELDS:
            msg = f"more than {_MAX_FIELDS} header lines"
            raise MalformedReplyError(msg)
        text = line.decode("iso-8859-1")
        if text[0] in " \t" and name:
            value += text.rstrip("\r\n")  # obs-fold: the field goes on (RFC 9112 §5.2)
            continue
        if name:
            fields.set_raw(name, value)
        name, colon, value = text.partition(":")
        if not colon or not name or name[0] in " \t":
            msg = f"header line {count} is not a field (no name and colon)"
            raise MalformedReplyError(msg)
        value = value.lstrip(" \t").rstrip("\r\n")
    if name:
        fields.set_raw(name, value)
    return fields


class Response(http.client.HTTPResponse):
    """An ``HTTPResponse`` that reads its header fields with :func:`_read_fields`.

    ``begin`` is http.client's (Python 3.11-3.13) but for that: interim 1xx replies skipped,
    HTTP/1.0 and 1.1, chunked or Content-Length bodies, and whether the connection stays open
    decided by http.client's own ``_check_close``. The body is read by http.client.
    """

    def begin(self) -> None:
        """Read the status line and the header fields; set how the body is framed."""
        if self.headers is not None:
            return
        while True:
            version, status, reason = self._read_status()
            if status != http.client.CONTINUE:
                break
            _read_fields(self.fp)
        self.code = self.status = status
        self.reason = reason.strip()
        if version in ("HTTP/1.0", "HTTP/0.9"):
            self.version = 10
        elif version.startswith("HTTP/1."):
            self.version = 11
        else:
            raise http.client.UnknownProtocol(version)
        self.headers = self.msg = _read_fields(self.fp)
        coding = self.headers.get("transfer-encoding")
        self.chunked = bool(coding) and coding.lower() == "chunked"
        if self.chunked:
            self.chunk_left = None
        self.will_close = self._check_close()
        self.length = None
        length = self.headers.get("content-length")
        if length and not self.chunked:
            try:
                self.length = int(length)
            except ValueError:
                self.length = None
            else:
                if self.length < 0:
                    self.length = None
        if status in (http.client.NO_CONTENT, http.client.NOT_MODIFIED) or 100 <= status < 200:
            self.length = 0
        if self._method == "HEAD":
            self.length = 0
        if not self.will_close and not self.chunked and self.length is None:
            self.will_close = True


def _field(name: str, value: str) -> bytes:
    """``Name: value\r\n``, checked and encoded as http.client's ``putheader`` does.

    Raises:
        ValueError: a name or value that would inject a header line, or a value beyond Latin-1.
    """
    encoded_name = name.encode("ascii")
    if not _LEGAL_NAME.fullmatch(encoded_name):
        msg = f"Invalid header name {encoded_name!r}"
        raise ValueError(msg)
    encoded = value.encode("latin-1")
    if _ILLEGAL_VALUE.search(encoded):
        msg = f"Invalid header value {encoded!r}"
        raise ValueError(msg)
    return encoded_name + b": " + encoded + b"\r\n"


class RequestHead:
    """The head of one connection's requests with a body, encoded once.

    The same bytes as http.client's ``request(method, path, body, fields)``: the request line,
    ``Host`` and ``Accept-Encoding: identity`` (``putrequest``), ``Content-Length``, then
    ``fields`` in their order; checked as it checks them. Encoding them per request was a
    quarter of a FHIR send's CPU in the worker's profile (six ``putheader`` calls).

    Args:
        conn: the connection the requests go on (its host, port and default port make ``Host``).
        method: the request method (``POST``).
        path: the request target.
        fields: the header fields every request carries.

    Raises:
        http.client.InvalidURL: a path with a control character or a space.
        ValueError: a field that would inject a header line.
    """

    def __init__(
        self,
        conn: http.client.HTTPConnection,
        method: str,
        path: str,
        fields: Mapping[str, str],
    ) -> None:
        if _ILLEGAL_PATH.search(path):
            msg = f"URL can't contain control characters. {path!r}"
            raise http.client.InvalidURL(msg)
        self.method = method
        self._start = f"{method} {path} HTTP/1.1\r\n".encode("ascii") + _field("Host", _host(conn))
        self._start += b"Accept-Encoding: identity\r\n"
        self._fields = b"".join(_field(name, value) for name, value in fields.items())

    def encode(self, body: bytes, *more: tuple[str, str]) -> bytes:
        """The request: head, ``more`` fields after the fixed ones (``Authorization``), body."""
        extra = b"".join(_field(name, value) for name, value in more)
        length = b"Content-Length: %d\r\n" % len(body)
        return b"".join((self._start, length, self._fields, extra, b"\r\n", body))


def _host(conn: http.client.HTTPConnection) -> str:
    """``Host`` as http.client's ``putrequest`` writes it: brackets around IPv6, no zone, the
    port unless it is the scheme's default."""
    host = conn.host.encode("idna").decode("ascii") if not conn.host.isascii() else conn.host
    if ":" in host:
        host = "[" + host.partition("%")[0] + "]"
    return host if conn.port == conn.default_port else f"{host}:{conn.port}"


def exchange(conn: http.client.HTTPConnection, request: bytes, method: str) -> tuple[int, bytes]:
    """Send ``request`` (encoded by :class:`RequestHead`) in one write; read the whole reply.

    Opens ``conn`` when it is not open, and closes it when the reply says it closes (http.client's
    ``getresponse`` does both). ``conn.request`` is not used: it would encode the head again and
    write it and the body in two system calls.

    Returns:
        The status and the body.

    Raises:
        OSError, http.client.HTTPException: as ``conn.request`` and ``getresponse`` raise them;
            the caller closes ``conn``, which may be anywhere in an exchange.
    """
    if conn.sock is None:
        conn.connect()
    conn.sock.sendall(request)
    response = Response(conn.sock, method=method)
    try:
        response.begin()
        body = response.read()
    finally:
        response.close()
    if response.will_close:
        conn.close()
    return response.status, body


class NamedHTTPSConnection(http.client.HTTPSConnection):
    """An ``HTTPSConnection`` whose TLS handshake names ``server_name`` instead of the host."""

    def __init__(
        self,
        host: str,
        port: int | None,
        *,
        timeout: float,
        context: ssl.SSLContext,
        server_name: str,
    ) -> None:
        super().__init__(host, port, timeout=timeout, context=context)
        self._tls_context = context
        self._server_name = server_name

    def connect(self) -> None:
        """Open the TCP connection, then the TLS session for ``server_name``."""
        http.client.HTTPConnection.connect(self)
        self.sock = self._tls_context.wrap_socket(self.sock, server_hostname=self._server_name)


def connection_for(
    url: str,
    *,
    timeout: float,
    context: ssl.SSLContext | None,
    server_name: str | None = None,
) -> http.client.HTTPConnection:
    """A connection (not opened yet) to the host of ``url``: TLS with ``context`` for https.

    Args:
        url: an ``http://`` or ``https://`` URL.
        timeout: seconds to connect, and to wait for each read.
        context: the client context (``TlsSpec.client_context``); the system's CAs without one.
        server_name: the name the server's certificate must carry, when not the URL's host.
    """
    conn = _connection(url, timeout=timeout, context=context, server_name=server_name)
    conn.response_class = Response
    return conn


def _connection(
    url: str, *, timeout: float, context: ssl.SSLContext | None, server_name: str | None
) -> http.client.HTTPConnection:
    parts = urllib.parse.urlsplit(url)
    host, port = parts.hostname or "", parts.port
    if parts.scheme != "https":
        return http.client.HTTPConnection(host, port, timeout=timeout)
    context = context or ssl.create_default_context()
    if server_name is not None:
        return NamedHTTPSConnection(
            host, port, timeout=timeout, context=context, server_name=server_name
        )
    return http.client.HTTPSConnection(host, port, timeout=timeout, context=context)


def tls_reason(exc: ssl.SSLError) -> str:
    """Why a handshake failed, in OpenSSL's words (``certificate verify failed: unable to get
    local issuer certificate``, ``tlsv13 alert certificate required``)."""
    if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_message:
        return f"certificate verify failed: {exc.verify_message}"
    if isinstance(exc, ssl.SSLEOFError):
        return "the server closed the connection (does it want a client certificate?)"
    if exc.reason:
        return str(exc.reason).replace("_", " ").lower()
    return re.sub(r"\s*\(_ssl\.c:\d+\)", "", str(exc)) or type(exc).__name__
