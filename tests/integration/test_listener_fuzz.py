"""Fuzzing the real MLLP listener (issue 4 point 8): every complete frame gets exactly one ACK.

The listener under test is the broker's own :class:`~broker.listen.Listeners` (MLLP server,
HL7 v2 intake, journal, Celery kicks) on a real Redis (the ``redis_url`` fixture), running in
its own event loop on a thread. Which frames a byte string holds, which frames come back and
what ACK code each reply carries are decided by ``tests/oracles/mllp.py``, a counter written from
the MLLP block format (HL7 v2.5.1 Appendix C) that imports nothing from ``broker``: not by the
listener's own :class:`~broker.adapters.mllp.FrameDecoder` or :func:`~broker.ack.read_ack`.
"""

from __future__ import annotations

import asyncio
import itertools
import socket
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker.config import load_config
from broker.listen import Listeners
from broker.settings import Settings
from broker.testing import free_port, wait_for_port, write_adapter
from passerelle_demo.synthetic import adt, patients
from tests.oracles.mllp import (
    ack_code,
    acknowledged_id,
    control_id,
    count_frames,
    frame,
    payloads,
)

pytestmark = pytest.mark.integration

CODES = {"AA", "AE", "AR"}
FUZZ = settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
_ids = itertools.count(1)
_PATIENTS = patients(20, seed=4242)
tally: Counter[str] = Counter()


def valid(prefix: str = "FZ") -> bytes:
    """A fresh valid ADT^A01 (a new MSH-10 each time)."""
    n = next(_ids)
    return adt(_PATIENTS[n % len(_PATIENTS)], "A01", control_id=f"{prefix}{n:07d}").encode()


@pytest.fixture(scope="module")
def listener(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """The broker's MLLP listener on a free port, journalling to the test Redis."""
    root: Path = tmp_path_factory.mktemp("fuzz")
    port = free_port()
    write_adapter(
        root / "adapters",
        {
            "id": "fuzz-in",
            "name": "Fuzz",
            "direction": "inbound",
            "transport": "mllp",
            "listen": f"127.0.0.1:{port}",
        },
    )
    config = Settings(data_dir=root, adapters_dir=root / "adapters", redis_url=redis_url)
    listeners = Listeners(load_config(config))
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="fuzz-listener", daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(listeners.start(), loop).result(30)
    assert wait_for_port("127.0.0.1", port, 10)
    try:
        yield port
    finally:
        asyncio.run_coroutine_threadsafe(listeners.stop(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
        print(f"[fuzz] reply codes over every example: {dict(tally)}")


def exchange(port: int, data: bytes) -> list[bytes]:
    """Send ``data`` on a new connection, half-close, and read every byte until EOF.

    Returns the payloads of the reply frames, as the independent counter finds them in all the
    bytes received (a reply split across reads is still one frame).
    """
    received = bytearray()
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        while chunk := sock.recv(65536):
            received += chunk
    return payloads(bytes(received))


def check(port: int, data: bytes, what: str) -> list[str]:
    """Every complete frame got exactly one reply, an ACK with AA, AE or AR."""
    wanted = count_frames(data)
    replies = exchange(port, data)
    assert len(replies) == wanted, (
        f"{what}: {wanted} frames, {len(replies)} replies: {data[:200]!r}"
    )
    codes = []
    for reply in replies:
        code = ack_code(reply)
        assert code in CODES, f"{what}: reply {reply[:200]!r}"
        codes.append(code)
    tally.update(code for code in codes if code is not None)
    return [code for code in codes if code is not None]


def still_up(port: int) -> None:
    """One valid message on a new connection gets exactly one reply, with AA."""
    assert [ack_code(r) for r in exchange(port, frame(valid("UP")))] == ["AA"]


no_start = st.binary(max_size=300).map(lambda b: b.replace(b"\x0b", b""))


@FUZZ
@given(data=st.binary(max_size=2000))
def test_random_bytes_get_one_ack_per_complete_frame(listener, data):
    """Any byte string: one ACK (AA/AE/AR) per complete frame in it, never a crash."""
    check(listener, data, "random bytes")


@FUZZ
@given(
    data=st.lists(
        st.one_of(
            st.binary(max_size=200),
            st.sampled_from([b"\x0b", b"\x1c", b"\x1c\r", b"\r", b"MSH|^~\\&|"]),
        ),
        max_size=30,
    ).map(b"".join)
)
def test_random_framing_bytes_get_one_ack_per_complete_frame(listener, data):
    """Byte strings rich in start/end blocks and MSH headers: one ACK per complete frame."""
    check(listener, data, "framing bytes")


@FUZZ
@given(before=no_start, after=no_start)
def test_garbage_around_a_valid_frame_is_skipped_and_the_frame_answered_aa(listener, before, after):
    """Bytes before the start block and after the frame are skipped; the frame gets AA."""
    data = before + frame(valid()) + after
    codes = check(listener, data, "garbage around a frame")
    assert codes[0] == "AA", codes


@FUZZ
@given(per_mille=st.integers(0, 1000))
def test_a_truncated_message_gets_one_ack(listener, per_mille):
    """A valid message cut anywhere, framed: exactly one ACK with AA, AE or AR."""
    message = valid()
    cut = len(message) * per_mille // 1000
    check(listener, frame(message[:cut]), "truncated message")


MSH_FIELDS = {
    1: st.sampled_from(["|", "#", "", "||", "\x00"]),
    2: st.sampled_from(["^~\\&", "^~\\", "^", "", "^~\\&#", "abcd", "^^^^"]),
    7: st.sampled_from(["", "2025", "not-a-date", "20250101120000+0100"]),
    9: st.sampled_from(["", "ADT", "ADT^A01", "ADT^A99", "ORU^R01^ORU_R01", "^^", "ZZZ^Z01"]),
    10: st.sampled_from(["", " ", "X" * 200, "ÉÈ", "A|B"]),
    11: st.sampled_from(["", "P", "D", "T", "?"]),
    12: st.sampled_from(["", "2.5.1", "2.3", "2.9", "9.9", "x", "2.5.1^FRA"]),
    18: st.sampled_from(["", "UNICODE UTF-8", "8859/1", "ASCII", "KLINGON", "UTF-32"]),
}


def with_msh_field(message: bytes, index: int, value: str) -> bytes:
    """Replace MSH-``index`` (MSH-1 is the field separator itself, MSH-2 the encoding)."""
    head, sep, rest = message.partition(b"\r")
    raw = head.decode()
    if index == 1:
        head = ("MSH" + value + raw[4:].replace("|", value or "|")).encode()
    else:
        fields = raw.split("|")
        while len(fields) <= index - 1:
            fields.append("")
        fields[index - 1] = value
        head = "|".join(fields).encode("utf-8")
    return head + sep + rest


@FUZZ
@given(data=st.data())
def test_msh_variants_get_one_ack(listener, data):
    """A message whose MSH fields are wrong, missing or odd gets exactly one ACK."""
    message = valid()
    chosen = data.draw(st.lists(st.sampled_from(sorted(MSH_FIELDS)), unique=True, max_size=4))
    for index in chosen:
        message = with_msh_field(message, index, data.draw(MSH_FIELDS[index]))
    check(listener, frame(message), f"MSH variant {chosen}")


SB, EB, CR = b"\x0b", b"\x1c", b"\r"


@pytest.mark.parametrize(
    ("make", "replies"),
    [
        pytest.param(lambda: frame(valid()) + frame(valid()), 2, id="two-frames"),
        pytest.param(lambda: b"noise" + EB + CR + frame(valid()) + b"junk", 1, id="garbage"),
        pytest.param(lambda: SB + valid()[:40] + frame(valid()), 1, id="nested-start"),
        pytest.param(lambda: frame(valid()) + SB + valid(), 1, id="truncated-last"),
        pytest.param(lambda: SB + valid() + EB, 0, id="no-final-cr"),
        pytest.param(lambda: frame(valid() + EB + b"x"), 1, id="eb-inside-payload"),
        pytest.param(lambda: SB + valid() + EB + b"x", 0, id="eb-without-cr-ends-nothing"),
    ],
)
def test_hand_counted_framings_get_one_ack_per_complete_frame(listener, make, replies):
    """Byte strings whose frame count is written by hand get that many ACKs, for those frames."""
    data = make()
    assert count_frames(data) == replies
    sent = [control_id(p) for p in payloads(data)]
    answered = [acknowledged_id(r) for r in exchange(listener, data)]
    assert answered == sent, f"frames {sent} were answered as {answered}"


def test_the_listener_still_answers_aa_after_the_fuzzing(listener):
    """After every fuzz example above, a valid message still gets AA."""
    still_up(listener)
