"""``passerelle send`` and ``passerelle ping`` against real peers on loopback: the broker's own
MLLP listener, python-hl7's MLLP server (a third-party implementation) and the capture peers."""

from __future__ import annotations

import asyncio
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hl7
import hl7.mllp
import pytest
import redis
import redis.asyncio

from broker import running
from broker.adapters.mllp import MllpServer
from broker.adapters.tls import TlsSpec
from broker.dispatch import AsyncKicker
from broker.intake.hl7v2 import HL7v2Intake
from broker.intake.journal import Journal
from broker.listen import mllp_server
from broker.ops.probe import split_messages
from broker.testing import CliRun, EagerBroker, free_port, run_cli, write_adapter
from passerelle_demo.synthetic import adt, patients
from tests.delivery.peers_https import FhirPeer, TokenPeer, https_server


class _Loop:
    """An event loop on a daemon thread, for servers a synchronous test talks to."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture(name="listener")
def fixture_listener(make_broker: Any) -> Iterator[tuple[EagerBroker, int]]:
    """An EagerBroker with the broker's real MLLP listener (``listen.mllp_server``) for its
    ``chu-rabat-adt`` adapter on a free loopback port."""
    broker = make_broker()
    loop = _Loop()
    state: dict[str, Any] = {}

    async def start() -> int:
        client = redis.asyncio.Redis.from_url(broker.redis_url)
        journal = Journal(client, broker.settings.dedupe_window_s)
        kicker = state["kicker"] = AsyncKicker(broker.celery, client)
        intake = HL7v2Intake(
            broker.adapters["chu-rabat-adt"],
            journal,
            broker.mappings.supports,
            broker.settings.partitions,
            kicker,
        )
        server = mllp_server("127.0.0.1", 0, intake, max_bytes=1 << 20)
        await server.start()
        state.update(client=client, server=server)
        return server.port

    async def stop() -> None:
        await state["server"].stop()
        await state["client"].aclose()

    port = loop.call(start())
    eager_run = broker.run

    def run(*names: str, limit: int = 500) -> list[Any]:
        # The listener publishes a drain task beside its AA: wait for those publishes first.
        loop.call(state["kicker"].settle())
        return eager_run(*names, limit=limit)

    broker.run = run  # type: ignore[method-assign]
    try:
        yield broker, port
    finally:
        loop.call(stop())
        loop.close()


class ThirdPartyMllp:
    """python-hl7's asyncio MLLP server (``hl7.mllp.start_hl7_server``): it keeps each block as
    received and answers with python-hl7's own ``create_ack``: AE for a control id starting
    with ``BAD``, AA otherwise."""

    def __init__(self) -> None:
        self.blocks: list[bytes] = []
        self._loop = _Loop()
        self._server: Any = None
        self.port = self._loop.call(self._start())

    async def _start(self) -> int:
        async def session(reader: Any, writer: Any) -> None:
            try:
                while not writer.is_closing():
                    block = await reader.readblock()
                    self.blocks.append(block)
                    message = hl7.parse(block.decode("utf-8"))
                    control = str(message.segment("MSH")[10])
                    writer.writemessage(
                        message.create_ack("AE" if control.startswith("BAD") else "AA")
                    )
                    await writer.drain()
            except asyncio.IncompleteReadError:
                writer.close()

        self._server = await hl7.mllp.start_hl7_server(session, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    def stop(self) -> None:
        async def close() -> None:
            self._server.close()
            await self._server.wait_closed()

        self._loop.call(close())
        self._loop.close()


@pytest.fixture(name="third_party")
def fixture_third_party() -> Iterator[ThirdPartyMllp]:
    server = ThirdPartyMllp()
    try:
        yield server
    finally:
        server.stop()


def adts(count: int, seed: int = 7, prefix: str = "SND") -> list[str]:
    """Synthetic ADT^A01 messages with ``\\r`` separators and control ids PREFIX0001..."""
    return [
        adt(p, "A01", control_id=f"{prefix}{i:04d}")
        for i, p in enumerate(patients(count, seed=seed), 1)
    ]


def as_file(tmp_path: Path, messages: list[str], separator: str, between: str = "") -> Path:
    """Write messages as an interface engineer's file: segments end with ``separator``."""
    text = (separator + between).join(m.rstrip("\r").replace("\r", separator) for m in messages)
    path = tmp_path / "messages.hl7"
    path.write_bytes(text.encode("utf-8"))
    return path


def one_line(done: CliRun) -> str:
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert done.exception is None or isinstance(done.exception, SystemExit), done.exception
    return lines[0]


class TestSplitMessages:
    @pytest.mark.parametrize(
        ("separator", "between"),
        [
            pytest.param("\r", "", id="cr"),
            pytest.param("\n", "\n", id="lf-blank-line"),
            pytest.param("\r\n", "\r\n\r\n", id="crlf-blank-lines"),
        ],
    )
    def test_every_separator_gives_the_same_messages_with_cr(self, separator, between):
        """\\n, \\r\\n and \\r files split into the same messages, segments ending in \\r."""
        messages = adts(3)
        joined = separator + between
        data = joined.join(m.rstrip("\r").replace("\r", separator) for m in messages).encode()
        assert split_messages(data) == [m.rstrip("\r").encode() + b"\r" for m in messages]

    def test_batch_envelope_and_framing_are_dropped(self):
        """FHS/BHS/BTS/FTS lines and MLLP framing bytes are not sent."""
        (message,) = adts(1)
        data = f"FHS|^~\\&\nBHS|^~\\&\n\x0b{message}\x1c\rBTS|1\nFTS|1\n".encode()
        assert split_messages(data) == [message.rstrip("\r").encode() + b"\r"]

    @pytest.mark.parametrize(
        ("data", "expected"),
        [
            pytest.param(b"", "no HL7 v2 message", id="empty"),
            pytest.param(b"PID|1\nMSH|^~\\&|A\n", "line 1 comes before any MSH", id="no-msh-first"),
        ],
    )
    def test_a_file_without_a_message_first_is_refused(self, data, expected):
        with pytest.raises(ValueError, match=expected):
            split_messages(data)


class TestSendToOurListener:
    def test_each_message_of_a_lf_file_is_journalled_acked_and_delivered(self, listener, tmp_path):
        """Three messages with \\n separators: three AA lines, then both subscribers get them."""
        broker, port = listener
        path = as_file(tmp_path, adts(3), "\n", "\n")
        done = run_cli("send", str(path), "--to", f"127.0.0.1:{port}")
        assert done.code == 0, done.stderr
        lines = done.stdout.splitlines()
        assert [line.split()[:3] for line in lines] == [
            ["1", "SND0001", "AA"],
            ["2", "SND0002", "AA"],
            ["3", "SND0003", "AA"],
        ]
        broker.run()
        assert sorted(broker.lab.accepted_ids()) == ["SND0001", "SND0002", "SND0003"]

    def test_json_lists_each_ack(self, listener, tmp_path):
        """``--json``: one document, a list with each message's control id and ACK code."""
        _, port = listener
        path = as_file(tmp_path, adts(2), "\r\n")
        done = run_cli("send", str(path), "--to", f"127.0.0.1:{port}", "--json")
        assert done.code == 0, done.stderr
        found = json.loads(done.stdout)
        assert [(e["control_id"], e["ack_code"], e["accepted"]) for e in found] == [
            ("SND0001", "AA", True),
            ("SND0002", "AA", True),
        ]

    def test_a_refused_message_prints_its_code_and_exits_1(self, listener, tmp_path):
        """A message the listener refuses (no mapping for ADT^A99) shows AR and its reason; the
        others are still sent; the command exits 1 with one line."""
        good, bad = adts(2)
        bad = bad.replace("ADT^A01", "ADT^A99", 1)
        path = as_file(tmp_path, [good, bad], "\n")
        done = run_cli("send", str(path), "--to", f"127.0.0.1:{listener[1]}")
        assert done.code == 1
        first, second = done.stdout.splitlines()
        assert first.split()[2] == "AA"
        assert second.split()[1:3] == ["SND0002", "AR"]
        assert "no mapping for ADT^A99" in second
        assert "1 of 2 message(s) not accepted (AR)" in one_line(done)


class TestSendToAThirdPartyServer:
    def test_python_hl7_receives_cr_segments_and_acknowledges_each(self, third_party, tmp_path):
        """The peer receives each message whole with \\r separators, never \\n."""
        messages = adts(2, prefix="EXT")
        path = as_file(tmp_path, messages, "\n", "\n")
        done = run_cli("send", str(path), "--to", f"127.0.0.1:{third_party.port}", "--json")
        assert done.code == 0, done.stderr
        assert [e["ack_code"] for e in json.loads(done.stdout)] == ["AA", "AA"]
        assert [b.decode() for b in third_party.blocks] == [m.rstrip("\r") + "\r" for m in messages]

    def test_its_ae_is_a_failure(self, third_party, tmp_path):
        """python-hl7's AE (MSA-1) makes the command fail with one line."""
        path = as_file(tmp_path, adts(1, prefix="BAD"), "\n")
        done = run_cli("send", str(path), "--to", f"127.0.0.1:{third_party.port}")
        assert done.code == 1
        assert done.stdout.split()[1:3] == ["BAD0001", "AE"]
        assert "1 of 1 message(s) not accepted (AE)" in one_line(done)


class TestSendFailures:
    def test_nobody_listening_is_one_line(self, tmp_path):
        path = as_file(tmp_path, adts(1), "\n")
        done = run_cli("send", str(path), "--to", f"127.0.0.1:{free_port()}")
        assert done.code == 1
        line = one_line(done)
        assert "cannot connect" in line
        assert "0 of 1 message(s) acknowledged" in line

    @pytest.mark.parametrize("to", ["localhost", "127.0.0.1:x", "127.0.0.1:70000", ":2575"])
    def test_a_bad_address_is_a_usage_error(self, tmp_path, to):
        path = as_file(tmp_path, adts(1), "\n")
        done = run_cli("send", str(path), "--to", to)
        assert done.code == 2
        assert "is not HOST:PORT" in one_line(done)

    def test_a_file_without_messages_is_a_usage_error(self, tmp_path):
        path = tmp_path / "empty.hl7"
        path.write_text("hello\n")
        done = run_cli("send", str(path), "--to", "127.0.0.1:2575")
        assert done.code == 2
        assert "line 1 comes before any MSH" in one_line(done)


# --- ping --------------------------------------------------------------------------------------


def unset_env() -> dict[str, str | None]:
    """Every PASSERELLE_ setting unset: the commands find the system by its runtime file."""
    return {k: None for k in os.environ if k.startswith("PASSERELLE_")}


@pytest.fixture(name="served")
def fixture_served(make_broker: Any) -> Iterator[EagerBroker]:
    """An EagerBroker whose settings a runtime file names, as a running `serve` writes it."""
    broker = make_broker()
    running.write(broker.settings)
    try:
        yield broker
    finally:
        running.forget()


class TestPing:
    def test_an_mllp_subscriber_connects(self, served):
        """`ping lab-legacy`: the MLLP capture accepts the connection; nothing is sent."""
        done = run_cli("ping", "lab-legacy", env=unset_env())
        assert done.code == 0, done.stderr
        assert f"127.0.0.1:{served.lab.port} accepts connections" in done.stdout
        assert served.lab.count == 0

    def test_with_message_the_ack_is_reported(self, served):
        """``--message`` sends one synthetic NMQ^N01 (no PID) and reports the capture's AA."""
        done = run_cli("ping", "lab-legacy", "--message", "--json", env=unset_env())
        assert done.code == 0, done.stderr
        report = json.loads(done.stdout)
        assert (report["ok"], report["details"]["ack_code"]) == (True, "AA")
        (received,) = served.lab.messages
        assert "|NMQ^N01^NMQ_N01|" in received.text
        assert "\rPID" not in received.text

    def test_a_refusing_mllp_subscriber_fails_with_its_code(self, served):
        served.lab.mode = "reject"
        done = run_cli("ping", "lab-legacy", "--message", env=unset_env())
        assert done.code == 1
        assert "answered AR" in one_line(done)

    def test_a_fhir_subscriber_reports_its_metadata(self, served):
        """`ping dmp-national`: GET [base]/metadata of the FHIR capture, HTTP 200 and R4."""
        done = run_cli("ping", "dmp-national", "--json", env=unset_env())
        assert done.code == 0, done.stderr
        report = json.loads(done.stdout)
        assert report["details"]["status"] == 200
        assert report["details"]["fhir_version"] == "4.0.1"

    def test_a_fhir_subscriber_that_is_down_fails(self, served):
        served.fhir.mode = "down"
        done = run_cli("ping", "dmp-national", env=unset_env())
        assert done.code == 1
        assert "cannot reach" in one_line(done)

    def test_an_inbound_adapter_whose_listener_is_not_running_fails(self, served):
        """No listener runs in an EagerBroker: the inbound adapter's port does not answer."""
        done = run_cli("ping", "chu-rabat-adt", env=unset_env())
        assert done.code == 1
        assert "nothing answers on 127.0.0.1:" in one_line(done)

    def test_an_unknown_adapter_is_exit_2_with_the_known_ids(self, served):
        done = run_cli("ping", "nobody", env=unset_env())
        assert done.code == 2
        assert one_line(done) == (
            "passerelle: no adapter 'nobody'; the adapters are: "
            "chu-rabat-adt, dmp-national, lab-legacy"
        )


def test_ping_of_an_inbound_listener_that_runs(listener, tmp_path: Path) -> None:
    """`ping chu-rabat-adt` against the broker's real listener on the port registered."""
    broker, port = listener
    registrations = tmp_path / "adapters"
    text = (broker.settings.adapters_dir / "chu-rabat-adt.yaml").read_text()
    registrations.mkdir()
    (registrations / "chu-rabat-adt.yaml").write_text(
        text.replace(broker.adapters["chu-rabat-adt"].listen or "", f"127.0.0.1:{port}")
    )
    done = run_cli("ping", "chu-rabat-adt", env={"PASSERELLE_ADAPTERS_DIR": str(registrations)})
    assert done.code == 0, done.stderr
    assert f"127.0.0.1:{port} accepts connections" in done.stdout


class TestPingSecure:
    """Issue 10: ping speaks TLS to TLS adapters and asks a FHIR subscriber for its metadata
    with its CA bundle and its OAuth2 token, as deliveries do."""

    @staticmethod
    def registration(directory: Path, spec: dict[str, Any]) -> dict[str, str | None]:
        directory.mkdir(exist_ok=True)
        write_adapter(directory, spec)
        return {**unset_env(), "PASSERELLE_ADAPTERS_DIR": str(directory)}

    def test_an_inbound_tls_listener_is_pinged_over_tls(self, tls_pki, tmp_path: Path):
        """A TLS listener (that a plain TCP connect would also 'reach'): ping completes a TLS
        handshake and names the certificate it presented."""

        async def handler(payload: bytes, peer: str) -> bytes:
            return b""

        loop = _Loop()
        server_tls = TlsSpec(cert=tls_pki.server_cert, key=tls_pki.key(tls_pki.server_cert))
        server = MllpServer("127.0.0.1", 0, handler, tls=server_tls.server_context())
        loop.call(server.start())
        port = server.port
        try:
            spec = {
                "id": "chu-rabat-adt",
                "name": "CHU Rabat",
                "direction": "inbound",
                "transport": "mllp",
                "listen": f"127.0.0.1:{port}",
                "tls": {
                    "cert": str(tls_pki.server_cert),
                    "key": str(tls_pki.key(tls_pki.server_cert)),
                },
            }
            done = run_cli("ping", "chu-rabat-adt", env=self.registration(tmp_path / "a", spec))
        finally:
            loop.call(server.stop())
            loop.close()
        assert done.code == 0, done.stderr
        assert f"127.0.0.1:{port} accepts TLS connections (TLSv1." in done.stdout
        assert "CN=localhost" in done.stdout

    def test_an_outbound_mllp_subscriber_of_another_ca_fails_the_handshake(
        self, tls_pki, tmp_path: Path
    ):
        """The subscriber's certificate is not of tls.ca (the rogue CA here): exit 1, the reason."""

        async def handler(payload: bytes, peer: str) -> bytes:
            return b""

        loop = _Loop()
        server_tls = TlsSpec(cert=tls_pki.server_cert, key=tls_pki.key(tls_pki.server_cert))
        server = MllpServer("127.0.0.1", 0, handler, tls=server_tls.server_context())
        loop.call(server.start())
        spec = {
            "id": "lab-legacy",
            "name": "Lab",
            "direction": "outbound",
            "transport": "mllp",
            "connect": f"127.0.0.1:{server.port}",
            "subscribe": {"events": ["ADT^*"]},
        }
        try:
            good = run_cli(
                "ping",
                "lab-legacy",
                env=self.registration(tmp_path / "g", {**spec, "tls": {"ca": str(tls_pki.ca)}}),
            )
            rogue = {**spec, "tls": {"ca": str(tls_pki.rogue_ca)}}
            bad = run_cli("ping", "lab-legacy", env=self.registration(tmp_path / "b", rogue))
        finally:
            loop.call(server.stop())
            loop.close()
        assert good.code == 0, good.stderr
        assert "accepts TLS connections" in good.stdout
        assert bad.code == 1
        assert "TLS handshake with 127.0.0.1:" in one_line(bad)
        assert "certificate verify failed" in one_line(bad)

    def test_a_fhir_subscriber_is_asked_with_its_ca_and_token(
        self, tls_pki, tmp_path: Path, monkeypatch
    ):
        """dmp-national over HTTPS with client credentials: one token fetched, metadata read
        with the bearer; a wrong secret fails naming the token endpoint's answer."""
        monkeypatch.setenv("PASSERELLE_TEST_PING_SECRET", "s3cr3t-not-in-logs")
        tokens = TokenPeer()
        fhir = FhirPeer(tokens=tokens)
        with (
            https_server(tokens, tls_pki, path="/token") as token_url,
            https_server(fhir, tls_pki) as url,
        ):
            spec = {
                "id": "dmp-national",
                "name": "DMP",
                "direction": "outbound",
                "transport": "fhir-rest",
                "url": url,
                "tls": {"ca": str(tls_pki.ca)},
                "auth": {
                    "kind": "client_credentials",
                    "token_url": token_url,
                    "client_id": "passerelle-chu-rabat",
                    "client_secret_env": "PASSERELLE_TEST_PING_SECRET",
                },
                "subscribe": {"events": ["ADT^*"]},
            }
            env = self.registration(tmp_path / "f", spec)
            env["PASSERELLE_TEST_PING_SECRET"] = "s3cr3t-not-in-logs"
            done = run_cli("ping", "dmp-national", "--json", env=env)
            env["PASSERELLE_TEST_PING_SECRET"] = "wrong"
            refused = run_cli("ping", "dmp-national", env=env)
        assert done.code == 0, done.stderr
        report = json.loads(done.stdout)
        assert (report["details"]["status"], report["details"]["fhir_version"]) == (200, "4.0.1")
        assert fhir.requests == [{"authorization": f"Bearer {tokens.issued[0]}", "client": None}]
        assert refused.code == 1
        assert "no access token" in one_line(refused)
        assert "invalid_client" in one_line(refused)
        assert "s3cr3t" not in refused.stderr + done.stdout + done.stderr
