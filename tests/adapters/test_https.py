"""Promises of the subscriber connections' reply reading (broker.adapters.https.Response).

The oracle for the header fields is http.client's own email-based parser; the replies are sent
byte for byte by a scripted loopback peer (tests/scripted_http.py).
"""

from __future__ import annotations

import http.client
import io

import pytest

from broker.adapters.https import (
    MalformedReplyError,
    RequestHead,
    _read_fields,
    connection_for,
    exchange,
)
from tests.scripted_http import CLOSE, ScriptedPeer, reply

HEADERS = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"}


def _post(conn: http.client.HTTPConnection, body: bytes = b"{}") -> tuple[int, bytes, object]:
    conn.request("POST", "/fhir", body, HEADERS)
    response = conn.getresponse()
    return response.status, response.read(), response


@pytest.mark.parametrize(
    "block",
    [
        pytest.param(b"\r\n", id="no-fields"),
        pytest.param(
            b"date: Sat, 05 Dec 2026 00:16:27 GMT\r\nserver: uvicorn\r\n"
            b"content-length: 612\r\ncontent-type: application/fhir+json\r\n\r\n",
            id="uvicorn",
        ),
        pytest.param(
            b'Content-Length:12\r\nETag:  W/"1"  \r\nLocation: Patient/1/_history/1\r\n\r\n',
            id="no-space-and-blanks",
        ),
        pytest.param(
            b"Set-Cookie: a=1\r\nSet-Cookie: b=2\r\nX-Empty:\r\n\n", id="repeated-bare-lf"
        ),
        pytest.param(b"X-Latin: caf\xe9\r\nX-Colon: a:b:c\r\n\r\n", id="latin-1-and-colons"),
    ],
)
def test_the_fields_are_those_http_client_parses(block: bytes) -> None:
    """Names, values (leading blanks and line end removed) and order are http.client's."""
    ours = _read_fields(io.BytesIO(block + b"BODY"))
    theirs = http.client.parse_headers(io.BytesIO(block))
    assert isinstance(ours, http.client.HTTPMessage)
    assert ours.items() == theirs.items()
    assert ours.get("content-length") == theirs.get("content-length")
    assert ours.get_all("set-cookie") == theirs.get_all("set-cookie")


def test_the_fields_stop_at_the_empty_line() -> None:
    """The body after the empty line is left for the body's reader."""
    stream = io.BytesIO(b"A: 1\r\n\r\nBODY")
    _read_fields(stream)
    assert stream.read() == b"BODY"


def test_a_continuation_line_is_joined_to_its_field() -> None:
    """An obs-fold line (starting with a blank) continues the field before it."""
    fields = _read_fields(io.BytesIO(b"X-Long: one\r\n two\r\nY: 3\r\n\r\n"))
    assert fields.items() == [("X-Long", "one two"), ("Y", "3")]


@pytest.mark.parametrize(
    "block",
    [
        pytest.param(b"not a field\r\n\r\n", id="no-colon"),
        pytest.param(b": no name\r\n\r\n", id="no-name"),
        pytest.param(b" X: starts blank\r\n\r\n", id="first-line-continues-nothing"),
        pytest.param(b"".join(b"X-%d: 1\r\n" % i for i in range(101)) + b"\r\n", id="101-lines"),
    ],
)
def test_a_header_section_that_is_not_http_is_refused(block: bytes) -> None:
    """A line that is no field, or more lines than http.client allows: MalformedReplyError."""
    with pytest.raises(MalformedReplyError):
        _read_fields(io.BytesIO(block))


def test_a_line_past_http_clients_limit_is_refused() -> None:
    """A header line longer than 64 KiB: http.client's LineTooLong, nothing read past it."""
    with pytest.raises(http.client.LineTooLong):
        _read_fields(io.BytesIO(b"X: " + b"a" * 70000 + b"\r\n\r\n"))


class TestReplies:
    """Replies as servers send them, through a connection built by connection_for."""

    def test_content_length_replies_keep_the_connection(self) -> None:
        """Two requests, one connection; the body is exactly Content-Length bytes."""
        with ScriptedPeer([reply(200, b'{"a":1}'), reply(201, b'{"b":2}')]) as peer:
            conn = connection_for(peer.url, timeout=5, context=None)
            first = _post(conn)
            second = _post(conn)
            conn.close()
        assert first[:2] == (200, b'{"a":1}')
        assert second[:2] == (201, b'{"b":2}')
        assert peer.connections == 1

    def test_a_chunked_reply_is_read_whole(self) -> None:
        """Chunks with an extension and a trailer; the connection serves the next request."""
        chunked = (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b'4;ext=1\r\n{"a"\r\n3\r\n:1}\r\n0\r\nX-Trailer: t\r\n\r\n'
        )
        with ScriptedPeer([chunked, reply(200, b"{}")]) as peer:
            conn = connection_for(peer.url, timeout=5, context=None)
            status, body, _ = _post(conn)
            again = _post(conn)
            conn.close()
        assert (status, body) == (200, b'{"a":1}')
        assert again[:2] == (200, b"{}")
        assert peer.connections == 1

    def test_connection_close_opens_a_new_connection(self) -> None:
        """``Connection: close``: the body is read, and the next request connects again."""
        with ScriptedPeer(
            [(reply(200, b"{}", "Connection: close"), CLOSE), reply(200, b"{}")]
        ) as peer:
            conn = connection_for(peer.url, timeout=5, context=None)
            first = _post(conn)
            second = _post(conn)
            conn.close()
        assert first[:2] == second[:2] == (200, b"{}")
        assert peer.connections == 2

    def test_an_http_1_0_body_without_length_ends_with_the_connection(self) -> None:
        """HTTP/1.0 and no Content-Length: the body is everything until the server closes."""
        old = b'HTTP/1.0 200 OK\r\nContent-Type: application/fhir+json\r\n\r\n{"old":true}'
        with ScriptedPeer([(old, CLOSE)]) as peer:
            conn = connection_for(peer.url, timeout=5, context=None)
            status, body, response = _post(conn)
            conn.close()
        assert (status, body) == (200, b'{"old":true}')
        assert response.will_close  # type: ignore[attr-defined]

    def test_an_http_1_1_body_without_length_ends_with_the_connection(self) -> None:
        """HTTP/1.1, neither Content-Length nor chunked: read until the close, then reconnect."""
        unframed = b"HTTP/1.1 200 OK\r\nContent-Type: application/fhir+json\r\n\r\n{}"
        with ScriptedPeer([(unframed, CLOSE), reply(200, b"[]")]) as peer:
            conn = connection_for(peer.url, timeout=5, context=None)
            first = _post(conn)
            second = _post(conn)
            conn.close()
        assert first[:2] == (200, b"{}")
        assert second[:2] == (200, b"[]")
        assert peer.connections == 2

    def test_an_interim_100_is_skipped(self) -> None:
        """A 100 Continue (with a field) before the final reply: the final reply is read."""
        interim = b"HTTP/1.1 100 Continue\r\nX-Interim: 1\r\n\r\n" + reply(201, b"{}")
        with ScriptedPeer([interim]) as peer:
            conn = connection_for(peer.url, timeout=5, context=None)
            status, body, response = _post(conn)
            conn.close()
        assert (status, body) == (201, b"{}")
        assert response.getheader("X-Interim") is None  # type: ignore[attr-defined]

    def test_a_204_has_no_body(self) -> None:
        """204 without Content-Length: no body, the connection is kept."""
        with ScriptedPeer([reply(204, b"", length=False), reply(200, b"{}")]) as peer:
            conn = connection_for(peer.url, timeout=5, context=None)
            first = _post(conn)
            second = _post(conn)
            conn.close()
        assert first[:2] == (204, b"")
        assert second[:2] == (200, b"{}")
        assert peer.connections == 1

    def test_a_malformed_header_line_is_an_http_error(self) -> None:
        """A reply whose header line has no colon: MalformedReplyError, an HTTPException."""
        bad = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\ngarbage\r\n\r\n{}"
        with ScriptedPeer([bad]) as peer:
            conn = connection_for(peer.url, timeout=5, context=None)
            with pytest.raises(MalformedReplyError, match="header line 2"):
                _post(conn)
            conn.close()


def _recorded(conn_class: type[http.client.HTTPConnection], *args: object) -> type:
    class Recording(conn_class):  # type: ignore[valid-type,misc]
        """http.client's connection, the bytes it would send kept instead."""

        def send(self, data: bytes) -> None:
            self.sent.append(bytes(data))

    Recording.sent = []
    return Recording


FIELDS = {
    "Content-Type": "application/fhir+json",
    "Accept": "application/fhir+json",
    "User-Agent": "passerelle",
}


class TestRequestHead:
    """The encoded request is byte for byte what http.client's request() sends."""

    @pytest.mark.parametrize(
        ("conn_class", "host", "port"),
        [
            pytest.param(http.client.HTTPConnection, "127.0.0.1", 8080, id="http-port"),
            pytest.param(http.client.HTTPConnection, "fhir.example.org", None, id="http-default"),
            pytest.param(http.client.HTTPConnection, "fhir.example.org", 80, id="http-80"),
            pytest.param(http.client.HTTPSConnection, "dmp.example.ma", None, id="https-default"),
            pytest.param(http.client.HTTPSConnection, "dmp.example.ma", 8443, id="https-port"),
            pytest.param(http.client.HTTPConnection, "::1", 8080, id="ipv6"),
            pytest.param(http.client.HTTPConnection, "fe80::1%eth0", 8080, id="ipv6-zone"),
            pytest.param(http.client.HTTPConnection, "bücher.example", 8080, id="idna"),
        ],
    )
    @pytest.mark.parametrize(
        "more",
        [
            pytest.param((), id="no-token"),
            pytest.param((("Authorization", "Bearer a.b-c"),), id="token"),
        ],
    )
    def test_the_bytes_are_http_clients(self, conn_class, host, port, more) -> None:
        """Request line, Host, Accept-Encoding, Content-Length, the fields in order, the body."""
        recording = _recorded(conn_class)(host, port)
        body = '{"resourceType":"Bundle","type":"transaction","note":"é"}'.encode()
        recording.request("POST", "/fhir/R4", body, {**FIELDS, **dict(more)})
        ours = RequestHead(conn_class(host, port), "POST", "/fhir/R4", FIELDS)
        assert ours.encode(body, *more) == b"".join(recording.sent)

    @pytest.mark.parametrize(
        "value",
        [
            pytest.param("Bearer x\r\nX-Injected: 1", id="crlf"),
            pytest.param("Bearer x\nX-Injected: 1", id="lf"),
            pytest.param("Bearer x\rX", id="cr"),
            pytest.param("Bearer ☃", id="beyond-latin-1"),
        ],
    )
    def test_a_value_that_would_inject_a_field_is_refused(self, value: str) -> None:
        """As http.client's putheader: a ValueError, nothing encoded."""
        head = RequestHead(http.client.HTTPConnection("127.0.0.1", 8080), "POST", "/fhir", FIELDS)
        with pytest.raises(ValueError):  # noqa: PT011 (http.client raises a plain ValueError)
            head.encode(b"{}", ("Authorization", value))
        with pytest.raises(ValueError):  # noqa: PT011
            _recorded(http.client.HTTPConnection)("127.0.0.1", 8080).request(
                "POST", "/fhir", b"{}", {"Authorization": value}
            )

    def test_a_path_with_a_control_character_is_refused(self) -> None:
        """As http.client's putrequest: InvalidURL."""
        with pytest.raises(http.client.InvalidURL):
            RequestHead(http.client.HTTPConnection("127.0.0.1", 8080), "POST", "/fhir x", FIELDS)


class TestExchange:
    """One request and its reply on a connection: opened when needed, closed when the reply says."""

    def test_the_peer_receives_the_request_and_the_connection_is_kept(self) -> None:
        """Two exchanges on one connection; the peer got exactly the encoded bytes."""
        with ScriptedPeer([reply(200, b"{}"), reply(201, b"[]")]) as peer:
            conn = connection_for(peer.url, timeout=5, context=None)
            head = RequestHead(conn, "POST", "/fhir", FIELDS)
            first = exchange(conn, head.encode(b'{"a":1}'), "POST")
            second = exchange(conn, head.encode(b'{"b":2}'), "POST")
            conn.close()
        assert (first, second) == ((200, b"{}"), (201, b"[]"))
        assert peer.requests == [head.encode(b'{"a":1}'), head.encode(b'{"b":2}')]
        assert peer.connections == 1

    def test_connection_close_closes_and_the_next_exchange_reconnects(self) -> None:
        """``Connection: close``: the socket is closed after the body; the next one opens anew."""
        with ScriptedPeer(
            [(reply(200, b"{}", "Connection: close"), CLOSE), reply(200, b"{}")]
        ) as peer:
            conn = connection_for(peer.url, timeout=5, context=None)
            head = RequestHead(conn, "POST", "/fhir", FIELDS)
            exchange(conn, head.encode(b"{}"), "POST")
            assert conn.sock is None
            exchange(conn, head.encode(b"{}"), "POST")
            conn.close()
        assert peer.connections == 2

    def test_a_chunked_reply_keeps_the_connection(self) -> None:
        """A chunked body is read to its last chunk and the connection serves the next request."""
        chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n"
        with ScriptedPeer([chunked, chunked]) as peer:
            conn = connection_for(peer.url, timeout=5, context=None)
            head = RequestHead(conn, "POST", "/fhir", FIELDS)
            assert exchange(conn, head.encode(b"{}"), "POST") == (200, b"{}")
            assert exchange(conn, head.encode(b"{}"), "POST") == (200, b"{}")
            conn.close()
        assert peer.connections == 1

    def test_a_server_that_closes_without_answering_is_remote_disconnected(self) -> None:
        """No reply at all: http.client's RemoteDisconnected (the sender's cue to reconnect)."""
        with ScriptedPeer([(b"", CLOSE)]) as peer:
            conn = connection_for(peer.url, timeout=5, context=None)
            with pytest.raises(http.client.RemoteDisconnected):
                exchange(conn, RequestHead(conn, "POST", "/fhir", FIELDS).encode(b"{}"), "POST")
            conn.close()
