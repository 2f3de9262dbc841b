"""Promises of the subscriber connections' reply reading (broker.adapters.https.Response).

The oracle for the header fields is http.client's own email-based parser; the replies are sent
byte for byte by a scripted loopback peer (tests/scripted_http.py).
"""

from __future__ import annotations

import http.client
import io

import pytest

from broker.adapters.https import MalformedReplyError, _read_fields, connection_for
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
