"""Checks the people on call run by hand: send a file of HL7 v2 messages, ping a connection.

``passerelle send`` and ``passerelle ping`` call these; they use the broker's own MLLP client
(``broker.adapters.mllp``) and ACK reader (``broker.ack``), and never log a payload.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from broker.ack import read_ack
from broker.adapters.https import connection_for, tls_reason
from broker.adapters.mllp import MllpClient, MllpError
from broker.errors import HL7v2ParseError

__all__ = [
    "Exchange",
    "Probe",
    "api_health",
    "control_id_of",
    "exchange_all",
    "fhir_metadata",
    "mllp_ping",
    "ping_message",
    "split_messages",
    "tcp_answers",
    "tls_answers",
]

_BATCH_SEGMENTS = (b"FHS", b"BHS", b"BTS", b"FTS")
"""HL7 batch envelope segments (v2.5.1 §2.10.3): a batch file's messages are sent one by one."""


def split_messages(data: bytes) -> list[bytes]:
    """The HL7 v2 messages of a file, each with ``\\r`` segment separators.

    Interface engineers' files end segments with ``\\n``, ``\\r\\n`` or ``\\r``, may hold MLLP
    framing bytes, blank lines between messages and a batch envelope (FHS/BHS/BTS/FTS, dropped).
    A message starts at each ``MSH`` segment.

    Raises:
        ValueError: the file holds no message, or text before its first MSH (says which line).
    """
    text = data.translate(None, b"\x0b\x1c").removeprefix(b"\xef\xbb\xbf")
    lines = text.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
    messages: list[list[bytes]] = []
    for number, line in enumerate(lines, 1):
        if not line.strip() or line[:3] in _BATCH_SEGMENTS:
            continue
        if line.startswith(b"MSH"):
            messages.append([line])
        elif messages:
            messages[-1].append(line)
        else:
            msg = f"line {number} comes before any MSH segment; a message starts with MSH"
            raise ValueError(msg)
    if not messages:
        raise ValueError("no HL7 v2 message in it (no line starts with MSH)")
    return [b"\r".join(segments) + b"\r" for segments in messages]


def control_id_of(message: bytes) -> str:
    """MSH-10 of a message, ``""`` when its MSH is too short (the field separator is MSH-1)."""
    header = message.split(b"\r", 1)[0]
    if len(header) < 4:
        return ""
    fields = header.split(header[3:4])
    return fields[9].decode("utf-8", "replace") if len(fields) > 9 else ""


@dataclass(frozen=True, slots=True)
class Exchange:
    """One message sent and what came back.

    Attributes:
        index: the message's position in the file, from 1.
        control_id: its MSH-10.
        ack_code: MSA-1 of the reply, ``None`` when there was no readable reply.
        text: MSA-3 of the reply, or what went wrong.
        error_code: ERR-3 of the reply, when given.
        acknowledges: MSA-2 of the reply.
        ms: the round trip in milliseconds.
    """

    index: int
    control_id: str
    ack_code: str | None
    text: str
    error_code: str | None = None
    acknowledges: str | None = None
    ms: float | None = None

    @property
    def accepted(self) -> bool:
        """AA or CA, acknowledging this very message (MSA-2 = MSH-10)."""
        return self.ack_code in ("AA", "CA") and self.acknowledges in (None, self.control_id)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, with ``accepted``."""
        return {**asdict(self), "accepted": self.accepted}


def exchange_all(client: MllpClient, messages: list[bytes]) -> Iterator[Exchange]:
    """Send each message and wait for its ACK, in order.

    Raises:
        MllpError: the connection failed or no reply came within the client's timeout; the
            messages before it were exchanged (yielded), the rest not sent.
    """
    for index, message in enumerate(messages, 1):
        control_id = control_id_of(message)
        started = time.perf_counter()
        reply = client.send(message)
        ms = round((time.perf_counter() - started) * 1000, 1)
        try:
            ack = read_ack(reply)
        except HL7v2ParseError:
            yield Exchange(index, control_id, None, "the reply is not an HL7 ACK (no MSA-1)", ms=ms)
            continue
        text = ack.text
        if ack.control_id != control_id:
            text = f"the ACK acknowledges {ack.control_id!r}, not {control_id!r}; {text}".rstrip(
                "; "
            )
        yield Exchange(
            index, control_id, ack.code, text, ack.error_code, ack.control_id or None, ms
        )


@dataclass(frozen=True, slots=True)
class Probe:
    """What a ping found.

    Attributes:
        ok: the peer answered as it should.
        target: what was tried (``host:port`` or a URL).
        summary: one line for the operator.
        ms: the round trip in milliseconds, when it answered.
        details: more, for ``--json`` (an ACK's code and text, a server's software...).
    """

    ok: bool
    target: str
    summary: str
    ms: float | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return asdict(self)


def tcp_answers(host: str, port: int, timeout: float) -> Probe:
    """Whether something accepts a TCP connection on ``host:port``."""
    target = f"{host}:{port}"
    started = time.perf_counter()
    try:
        with socket.create_connection((host, port), timeout):
            ms = round((time.perf_counter() - started) * 1000, 1)
    except OSError as exc:
        return Probe(False, target, f"nothing answers on {target}: {exc.strerror or exc}")
    return Probe(True, target, f"{target} accepts connections", ms)


def tls_answers(
    host: str, port: int, timeout: float, context: ssl.SSLContext, server_name: str | None = None
) -> Probe:
    """Whether ``host:port`` completes a TLS handshake with ``context``: the version and the
    certificate's subject, or why the handshake failed."""
    target = f"{host}:{port}"
    started = time.perf_counter()
    try:
        with socket.create_connection((host, port), timeout) as raw:
            name = server_name or (host if context.check_hostname else None)
            with context.wrap_socket(raw, server_hostname=name) as tls:
                ms = round((time.perf_counter() - started) * 1000, 1)
                version = tls.version()
                der = tls.getpeercert(binary_form=True)
    except ssl.SSLError as exc:
        return Probe(False, target, f"TLS handshake with {target} failed: {tls_reason(exc)}")
    except OSError as exc:
        return Probe(False, target, f"nothing answers on {target}: {exc.strerror or exc}")
    subject = _subject(der)
    details = {"tls_version": version, "certificate": subject}
    line = f"{target} accepts TLS connections ({version}, certificate {subject or 'none'})"
    return Probe(True, target, line, ms, details)


def _subject(der: bytes | None) -> str | None:
    """The RFC 4514 subject of a DER certificate (the one a server presented)."""
    if not der:
        return None
    from cryptography import x509

    return x509.load_der_x509_certificate(der).subject.rfc4514_string()


def unverified_context() -> ssl.SSLContext:
    """A TLS client context that checks nothing: to see that one's own listener speaks TLS
    (its CA is that of its clients, not necessarily of its own certificate)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def ping_message(receiving_application: str, receiving_facility: str = "") -> bytes:
    """A synthetic network-management query (NMQ^N01, HL7 v2.5.1 ch. 14), processing id ``T``.

    It names no patient: a receiver that does not take NMQ answers AE or AR, which still shows
    that it reads messages and acknowledges them.
    """
    now = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
    control = f"PING{int(time.time() * 1000)}"
    msh = (
        f"MSH|^~\\&|PASSERELLE|PING|{receiving_application}|{receiving_facility}|{now}||"
        f"NMQ^N01^NMQ_N01|{control}|T|2.5.1"
    )
    return f"{msh}\rNCK|{now}\r".encode()


def mllp_ping(
    host: str,
    port: int,
    timeout: float,
    message: bytes | None,
    *,
    tls: ssl.SSLContext | None = None,
    server_name: str | None = None,
) -> Probe:
    """Connect to an MLLP peer (a TLS handshake with ``tls``) and, given ``message``, send it
    and read the ACK."""
    if tls is not None:
        reachable = tls_answers(host, port, timeout, tls, server_name)
    else:
        reachable = tcp_answers(host, port, timeout)
    if not reachable.ok or message is None:
        return reachable
    with MllpClient(host, port, timeout=timeout, tls=tls, server_name=server_name) as client:
        try:
            (answer,) = list(exchange_all(client, [message]))
        except MllpError as exc:
            return Probe(False, reachable.target, str(exc))
    details = answer.as_dict()
    line = f"{reachable.target} answered {answer.ack_code or 'no ACK'}"
    if answer.text:
        line += f": {answer.text}"
    return Probe(answer.accepted, reachable.target, line, answer.ms, details)


def fhir_metadata(
    base_url: str,
    timeout: float,
    *,
    context: ssl.SSLContext | None = None,
    server_name: str | None = None,
    authorization: str | None = None,
) -> Probe:
    """``GET [base]/metadata``: the HTTP status and the CapabilityStatement's software and
    fhirVersion (FHIR R4 §3.1.0.2.1 ``capabilities`` interaction).

    Args:
        base_url: the subscriber's ``url``.
        timeout: seconds to connect and to wait for the answer.
        context: the subscriber's TLS client context (its ``tls:``), for https.
        server_name: the name the server's certificate must carry (``tls.server_name``).
        authorization: the ``Authorization`` header (the subscriber's bearer token).
    """
    url = base_url.rstrip("/") + "/metadata"
    headers = {"Accept": "application/fhir+json", "User-Agent": "passerelle"}
    if authorization is not None:
        headers["Authorization"] = authorization
    conn = connection_for(url, timeout=timeout, context=context, server_name=server_name)
    started = time.perf_counter()
    try:
        conn.request("GET", urllib.parse.urlsplit(url).path, headers=headers)
        response = conn.getresponse()
        status, body = response.status, response.read()
    except ssl.SSLError as exc:
        return Probe(False, url, f"TLS handshake with {url} failed: {tls_reason(exc)}")
    except (OSError, http.client.HTTPException) as exc:
        reason = getattr(exc, "strerror", None) or exc
        return Probe(False, url, f"cannot reach {url}: {reason}")
    finally:
        conn.close()
    ms = round((time.perf_counter() - started) * 1000, 1)
    if not 200 <= status < 300:
        return Probe(False, url, f"{url} answered HTTP {status}", ms, {"status": status})
    try:
        statement = json.loads(body)
    except ValueError:
        statement = None
    if not isinstance(statement, dict) or statement.get("resourceType") != "CapabilityStatement":
        line = f"{url} answered HTTP {status} but not with a CapabilityStatement"
        return Probe(False, url, line, ms, {"status": status})
    software = statement.get("software") or {}
    name = " ".join(str(software.get(k)) for k in ("name", "version") if software.get(k))
    version = statement.get("fhirVersion")
    details = {"status": status, "software": name or None, "fhir_version": version}
    line = f"{url} answered HTTP {status}: {name or 'unnamed software'}, FHIR {version or '?'}"
    return Probe(True, url, line, ms, details)


def api_health(api_url: str, timeout: float) -> Probe:
    """``GET /healthz`` of the API, which also serves the inbound HTTP adapters."""
    url = f"{api_url}/healthz"
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            status = int(response.status)
    except urllib.error.HTTPError as exc:
        return Probe(False, url, f"the API answered HTTP {exc.code} at {url}")
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return Probe(False, url, f"the API does not answer at {url}: {reason}")
    ms = round((time.perf_counter() - started) * 1000, 1)
    return Probe(status == 200, url, f"the API answers at {url} (HTTP {status})", ms)
