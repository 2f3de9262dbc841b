"""MLLP framing, listener and clients (synthetic data only)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import threading
from collections.abc import Awaitable, Callable, Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from broker.adapters.mllp import (
    CARRIAGE_RETURN,
    END_BLOCK,
    START_BLOCK,
    AsyncMllpClient,
    Frame,
    FrameDecoder,
    MllpClient,
    MllpConnectionError,
    MllpServer,
    MllpTimeout,
    frame,
)

ADT = (
    b"MSH|^~\\&|HIS|CHU-RABAT|LAB|LABO|20240315101500||ADT^A01^ADT_A01|MSG0001|P|2.5.1\r"
    b"PID|1||MA123456^^^CHU-RABAT||El Idrissi^Fatima Zahra||19850412|F\r"
)

Handler = Callable[[bytes, str], Awaitable[bytes | None]]


async def echo(payload: bytes, peer: str) -> bytes:
    """Answer every payload with itself, prefixed."""
    return b"ACK:" + payload


@contextlib.contextmanager
def threaded_server(handler: Handler, port: int = 0) -> Iterator[MllpServer]:
    """Run an MllpServer on its own event loop in a thread, for the synchronous client."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    server = MllpServer("127.0.0.1", port, handler)
    asyncio.run_coroutine_threadsafe(server.start(), loop).result()
    try:
        yield server
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(), loop).result()
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()


async def exchange_raw(port: int, data: bytes, replies: int) -> list[bytes]:
    """Write raw bytes on one connection and read ``replies`` reply frames back."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    decoder = FrameDecoder()
    got: list[bytes] = []
    writer.write(data)
    await writer.drain()
    while len(got) < replies:
        chunk = await asyncio.wait_for(reader.read(65536), 5)
        if not chunk:
            break
        got += [f.payload for f in decoder.feed(chunk)]
    writer.close()
    await writer.wait_closed()
    return got


class TestFrame:
    def test_frame_wraps_payload_in_vt_fs_cr(self) -> None:
        """frame() produces <VT>payload<FS><CR>."""
        assert frame(b"MSH|x") == b"\x0bMSH|x\x1c\x0d"
        assert frame(b"a") == START_BLOCK + b"a" + END_BLOCK + CARRIAGE_RETURN


class TestFrameDecoder:
    def test_byte_by_byte_feed_yields_the_frame_once(self) -> None:
        """A frame fed one byte at a time is emitted once, whole, at its last byte."""
        decoder = FrameDecoder()
        data = frame(ADT)
        emitted = [decoder.feed(data[i : i + 1]) for i in range(len(data))]
        assert all(not batch for batch in emitted[:-1])
        assert emitted[-1] == [Frame(ADT, oversize=False)]

    def test_garbage_before_start_is_skipped_and_counted(self) -> None:
        """Bytes before the start byte are discarded and counted in skipped."""
        decoder = FrameDecoder()
        assert decoder.feed(b"GET / HTTP/1.1\r\n" + frame(ADT)) == [Frame(ADT)]
        assert decoder.skipped == len(b"GET / HTTP/1.1\r\n")

    def test_two_frames_in_one_feed_come_out_in_order(self) -> None:
        """Two frames in one chunk are both emitted, in order."""
        decoder = FrameDecoder()
        assert decoder.feed(frame(b"one") + frame(b"two")) == [Frame(b"one"), Frame(b"two")]
        assert decoder.skipped == 0

    def test_frame_without_end_is_never_emitted(self) -> None:
        """A frame whose end never arrives is never emitted and is reported as pending."""
        decoder = FrameDecoder()
        assert decoder.feed(START_BLOCK + ADT + END_BLOCK) == []
        assert decoder.pending == len(ADT) + 1

    def test_end_split_across_feeds(self) -> None:
        """<FS> at the end of one chunk and <CR> at the start of the next close the frame."""
        decoder = FrameDecoder()
        assert decoder.feed(START_BLOCK + b"abc" + END_BLOCK) == []
        assert decoder.feed(CARRIAGE_RETURN) == [Frame(b"abc")]

    def test_fs_not_followed_by_cr_is_payload(self) -> None:
        """<FS> without <CR> after it belongs to the payload (release 2 ends on FS CR)."""
        decoder = FrameDecoder()
        assert decoder.feed(START_BLOCK + b"a\x1cb" + END_BLOCK + CARRIAGE_RETURN) == [
            Frame(b"a\x1cb")
        ]

    def test_start_byte_inside_a_frame_restarts_it(self) -> None:
        """A new start byte abandons the unfinished frame; its bytes count as skipped."""
        decoder = FrameDecoder()
        assert decoder.feed(START_BLOCK + b"lost" + frame(b"kept")) == [Frame(b"kept")]
        assert decoder.skipped == 5

    def test_oversize_frame_is_flagged_and_truncated(self) -> None:
        """A payload over max_bytes is read to its end, flagged, truncated, sized and hashed."""
        decoder = FrameDecoder(max_bytes=10)
        payload = b"0123456789abcde"
        frames = decoder.feed(frame(payload) + frame(b"ok"))
        whole = hashlib.sha256(payload).hexdigest()
        assert frames == [
            Frame(payload[:10], oversize=True, size=15, sha256=whole),
            Frame(b"ok"),
        ]
        assert not decoder.overflowed

    @settings(max_examples=60, deadline=None)
    @given(
        payload=st.binary(min_size=11, max_size=20).map(
            lambda b: b.replace(START_BLOCK, b"v").replace(END_BLOCK + CARRIAGE_RETURN, b"ee")
        ),
        cuts=st.lists(st.integers(min_value=0, max_value=24), max_size=6),
    )
    def test_the_digest_of_an_oversize_frame_is_of_the_whole_payload(
        self, payload: bytes, cuts: list[int]
    ) -> None:
        """However the bytes arrive, an over-size frame carries the whole payload's size and SHA-256."""
        data = frame(payload)
        decoder = FrameDecoder(max_bytes=10)
        frames: list[Frame] = []
        start = 0
        for cut in [*sorted(c for c in cuts if c < len(data)), len(data)]:
            frames += decoder.feed(data[start:cut])
            start = max(start, cut)
        (got,) = frames
        assert (got.payload, got.oversize, got.size) == (payload[:10], True, len(payload))
        assert got.sha256 == hashlib.sha256(payload).hexdigest()

    def test_an_in_size_frame_has_no_size_or_digest(self) -> None:
        """Hashing is only for over-size frames: an in-size one costs nothing more."""
        (got,) = FrameDecoder(max_bytes=10).feed(frame(b"0123456789"))
        assert (got.oversize, got.size, got.sha256) == (False, None, None)

    def test_frame_over_twice_the_limit_overflows(self) -> None:
        """A frame beyond 2 x max_bytes sets overflowed and the decoder ignores later input."""
        decoder = FrameDecoder(max_bytes=10)
        assert decoder.feed(START_BLOCK + b"x" * 21) == []
        assert decoder.overflowed
        assert decoder.feed(END_BLOCK + CARRIAGE_RETURN + frame(b"ok")) == []

    def test_max_bytes_must_be_positive(self) -> None:
        """A zero limit is refused."""
        with pytest.raises(ValueError, match="at least 1"):
            FrameDecoder(max_bytes=0)


_payload = st.binary(max_size=200).map(lambda b: b.replace(b"\x0b", b"").replace(b"\x1c", b""))
_garbage = st.binary(max_size=30).map(lambda b: b.replace(b"\x0b", b""))


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


class TestFrameDecoderFuzz:
    @settings(max_examples=50, deadline=None)
    @given(st.lists(st.binary(max_size=64), max_size=20), st.integers(1, 64))
    def test_random_bytes_never_raise(self, chunks: list[bytes], max_bytes: int) -> None:
        """Arbitrary bytes in arbitrary chunks never make the decoder raise."""
        decoder = FrameDecoder(max_bytes=max_bytes)
        for chunk in chunks:
            for produced in decoder.feed(chunk):
                assert len(produced.payload) <= max_bytes

    @settings(max_examples=50, deadline=None)
    @given(
        st.lists(st.tuples(_garbage, _payload), max_size=8),
        st.lists(st.integers(0, 10_000), max_size=12),
    )
    def test_every_complete_frame_comes_out_in_order(
        self, parts: list[tuple[bytes, bytes]], cuts: list[int]
    ) -> None:
        """Frames separated by garbage and split anywhere are all emitted, in order."""
        stream = b"".join(garbage + frame(payload) for garbage, payload in parts)
        decoder = FrameDecoder()
        got = [f.payload for chunk in _split(stream, cuts) for f in decoder.feed(chunk)]
        assert got == [payload for _, payload in parts]
        assert decoder.skipped == sum(len(garbage) for garbage, _ in parts)


class TestMllpServer:
    @settings(max_examples=50, deadline=None)
    @given(st.lists(st.tuples(_garbage, _payload), min_size=1, max_size=5))
    def test_answers_every_frame_and_survives_garbage(
        self, parts: list[tuple[bytes, bytes]]
    ) -> None:
        """The listener answers each complete frame in order, and stays up after garbage."""

        async def scenario() -> tuple[list[bytes], list[bytes]]:
            server = MllpServer("127.0.0.1", 0, echo)
            await server.start()
            try:
                stream = b"".join(g + frame(p) for g, p in parts) + b"\x0bunfinished"
                first = await exchange_raw(server.port, stream, len(parts))
                second = await exchange_raw(server.port, frame(b"still up"), 1)
            finally:
                await server.stop()
            return first, second

        first, second = asyncio.run(scenario())
        assert first == [b"ACK:" + p for _, p in parts]
        assert second == [b"ACK:still up"]

    def test_handler_exception_keeps_connection_and_answers_nothing(self) -> None:
        """A failing handler is logged, answers nothing, and the same connection still works."""

        async def flaky(payload: bytes, peer: str) -> bytes:
            if payload == b"boom":
                raise RuntimeError("handler bug")
            return b"ok:" + payload

        async def scenario() -> list[bytes]:
            server = MllpServer("127.0.0.1", 0, flaky, name="lab-in")
            await server.start()
            try:
                return await exchange_raw(server.port, frame(b"boom") + frame(b"next"), 1)
            finally:
                await server.stop()

        with capture_logs() as logs:
            replies = asyncio.run(scenario())
        assert replies == [b"ok:next"]
        failed = [e for e in logs if e["event"] == "mllp.handler_failed"]
        assert len(failed) == 1
        assert failed[0]["adapter"] == "lab-in"

    def test_unfinished_frame_is_never_handled(self) -> None:
        """A frame cut off by the connection closing never reaches the handler."""
        seen: list[bytes] = []

        async def record(payload: bytes, peer: str) -> None:
            seen.append(payload)

        async def scenario() -> None:
            server = MllpServer("127.0.0.1", 0, record)
            await server.start()
            try:
                await exchange_raw(server.port, START_BLOCK + ADT, 0)
                await exchange_raw(server.port, b"", 0)
            finally:
                await server.stop()

        asyncio.run(scenario())
        assert seen == []

    def test_oversize_frame_goes_to_on_oversize(self) -> None:
        """A frame over max_bytes is given truncated to on_oversize, whose reply is sent."""
        seen: list[Frame] = []

        async def on_oversize(received: Frame, peer: str) -> bytes:
            seen.append(received)
            return b"AR"

        async def scenario() -> list[bytes]:
            server = MllpServer("127.0.0.1", 0, echo, max_bytes=16, on_oversize=on_oversize)
            await server.start()
            try:
                return await exchange_raw(server.port, frame(b"y" * 20) + frame(b"small"), 2)
            finally:
                await server.stop()

        assert asyncio.run(scenario()) == [b"AR", b"ACK:small"]
        whole = hashlib.sha256(b"y" * 20).hexdigest()
        assert seen == [Frame(b"y" * 16, oversize=True, size=20, sha256=whole)]

    def test_oversize_without_callback_is_not_answered(self) -> None:
        """Without on_oversize an oversize frame is dropped and the next frame still answered."""

        async def scenario() -> list[bytes]:
            server = MllpServer("127.0.0.1", 0, echo, max_bytes=16)
            await server.start()
            try:
                return await exchange_raw(server.port, frame(b"y" * 20) + frame(b"small"), 1)
            finally:
                await server.stop()

        assert asyncio.run(scenario()) == [b"ACK:small"]

    def test_frame_over_twice_the_limit_closes_the_connection(self) -> None:
        """A frame beyond 2 x max_bytes closes its connection without a reply."""

        async def scenario() -> bytes:
            server = MllpServer("127.0.0.1", 0, echo, max_bytes=16)
            await server.start()
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
                writer.write(START_BLOCK + b"z" * 40)
                await writer.drain()
                rest = await asyncio.wait_for(reader.read(), 5)
                writer.close()
                return rest
            finally:
                await server.stop()

        assert asyncio.run(scenario()) == b""

    def test_many_connections_are_served_concurrently(self) -> None:
        """Several clients on separate connections each get their own replies."""

        async def slow_echo(payload: bytes, peer: str) -> bytes:
            await asyncio.sleep(0)
            return b"ACK:" + payload

        async def scenario() -> list[bytes]:
            server = MllpServer("127.0.0.1", 0, slow_echo)
            await server.start()
            clients = [AsyncMllpClient("127.0.0.1", server.port, timeout=5) for _ in range(5)]
            try:
                return list(
                    await asyncio.gather(
                        *(c.send(f"MSG{i}".encode()) for i, c in enumerate(clients))
                    )
                )
            finally:
                for client in clients:
                    await client.close()
                await server.stop()

        assert asyncio.run(scenario()) == [f"ACK:MSG{i}".encode() for i in range(5)]

    def test_stop_lets_a_running_handler_finish(self) -> None:
        """stop() waits for an in-flight handler, whose reply still reaches the client."""

        async def scenario() -> bytes:
            release = asyncio.Event()
            entered = asyncio.Event()

            async def held(payload: bytes, peer: str) -> bytes:
                entered.set()
                await release.wait()
                return b"done"

            server = MllpServer("127.0.0.1", 0, held)
            await server.start()
            client = AsyncMllpClient("127.0.0.1", server.port, timeout=5)
            sending = asyncio.create_task(client.send(b"MSG"))
            await entered.wait()
            stopping = asyncio.create_task(server.stop())
            await asyncio.sleep(0)
            assert not stopping.done()
            release.set()
            reply = await sending
            await stopping
            await client.close()
            return reply

        assert asyncio.run(scenario()) == b"done"

    def test_port_zero_reports_the_bound_port(self) -> None:
        """With port 0 the server reports the real port once started."""

        async def scenario() -> int:
            server = MllpServer("127.0.0.1", 0, echo)
            await server.start()
            port = server.port
            await server.stop()
            return port

        assert asyncio.run(scenario()) > 0

    def test_it_counts_the_peers_connected_and_says_when_they_change(self) -> None:
        """Two peers connect, one leaves: 0 → 1 → 2 → 1 → 0, each change announced."""

        async def scenario() -> tuple[list[int], list[int]]:
            seen: list[int] = []
            server = MllpServer("127.0.0.1", 0, echo, on_connections=lambda: seen.append(-1))
            await server.start()
            counts = [server.connections]

            async def settled(expected: int) -> None:
                for _ in range(500):
                    if server.connections == expected:
                        break
                    await asyncio.sleep(0.01)
                counts.append(server.connections)

            first = await asyncio.open_connection("127.0.0.1", server.port)
            await settled(1)
            second = await asyncio.open_connection("127.0.0.1", server.port)
            await settled(2)
            first[1].close()
            await first[1].wait_closed()
            await settled(1)
            await server.stop()
            second[1].close()
            counts.append(server.connections)
            return counts, seen

        counts, announced = asyncio.run(scenario())
        assert counts == [0, 1, 2, 1, 0]
        assert len(announced) == 4  # two connections opened and closed


class TestMllpClient:
    def test_send_returns_the_reply(self) -> None:
        """send() frames the payload and returns the reply's payload, on one connection."""
        with threaded_server(echo) as server, MllpClient("127.0.0.1", server.port) as client:
            assert client.send(ADT) == b"ACK:" + ADT
            assert client.send(b"second") == b"ACK:second"

    def test_reconnects_after_the_server_side_closes(self) -> None:
        """After the listener restarts (closing the connection), the next send reconnects."""
        with threaded_server(echo) as server:
            port = server.port
            client = MllpClient("127.0.0.1", port, timeout=5)
            assert client.send(b"before") == b"ACK:before"
        with threaded_server(echo, port=port):
            try:
                assert client.send(b"after") == b"ACK:after"
            finally:
                client.close()

    def test_silent_peer_raises_timeout_then_next_send_reconnects(self) -> None:
        """No reply within the timeout is MllpTimeout; the following send works again."""

        async def silent_once(payload: bytes, peer: str) -> bytes | None:
            return None if payload == b"ignored" else b"ACK:" + payload

        with threaded_server(silent_once) as server:
            client = MllpClient("127.0.0.1", server.port, timeout=0.2)
            with pytest.raises(MllpTimeout, match="no MLLP reply"):
                client.send(b"ignored")
            assert client.send(b"answered") == b"ACK:answered"
            client.close()

    def test_refused_connection_is_a_connection_error(self) -> None:
        """Nobody listening is MllpConnectionError, not a raw OSError."""
        with threaded_server(echo) as server:
            port = server.port
        with pytest.raises(MllpConnectionError, match="cannot connect"):
            MllpClient("127.0.0.1", port, timeout=1).send(ADT)


class TestAsyncMllpClient:
    def test_send_timeout_and_reconnect(self) -> None:
        """The async client returns replies, times out on silence, then reconnects."""

        async def silent_once(payload: bytes, peer: str) -> bytes | None:
            return None if payload == b"ignored" else b"ACK:" + payload

        async def scenario() -> list[bytes]:
            server = MllpServer("127.0.0.1", 0, silent_once)
            await server.start()
            try:
                async with AsyncMllpClient("127.0.0.1", server.port, timeout=0.2) as client:
                    await client.connect()
                    first = await client.send(b"one")
                    with pytest.raises(MllpTimeout):
                        await client.send(b"ignored")
                    second = await client.send(b"two")
                    return [first, second]
            finally:
                await server.stop()

        assert asyncio.run(scenario()) == [b"ACK:one", b"ACK:two"]

    def test_reconnects_after_the_server_side_closes(self) -> None:
        """After the listener restarts on the same port, the next send reconnects."""

        async def scenario() -> list[bytes]:
            server = MllpServer("127.0.0.1", 0, echo)
            await server.start()
            port = server.port
            client = AsyncMllpClient("127.0.0.1", port, timeout=5)
            first = await client.send(b"before")
            await server.stop()
            again = MllpServer("127.0.0.1", port, echo)
            await again.start()
            try:
                second = await client.send(b"after")
            finally:
                await client.close()
                await again.stop()
            return [first, second]

        assert asyncio.run(scenario()) == [b"ACK:before", b"ACK:after"]

    def test_refused_connection_is_a_connection_error(self) -> None:
        """Nobody listening is MllpConnectionError."""

        async def scenario() -> None:
            server = MllpServer("127.0.0.1", 0, echo)
            await server.start()
            port = server.port
            await server.stop()
            await AsyncMllpClient("127.0.0.1", port, timeout=1).send(ADT)

        with pytest.raises(MllpConnectionError):
            asyncio.run(scenario())
