"""HTTP(S) connections to a subscriber: one TLS context reused, the server's name checked.

``http.client`` rather than httpx for the delivery hot path (see ``FhirRestSender``). Its
``HTTPSConnection`` checks the certificate against the URL's host; a registration's
``tls.server_name`` names another (a server reached by IP address, or through a tunnel), so
:class:`NamedHTTPSConnection` sends that name instead (SNI, and the name checked).
"""

from __future__ import annotations

import http.client
import re
import ssl
import urllib.parse

__all__ = ["NamedHTTPSConnection", "connection_for", "tls_reason"]


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
