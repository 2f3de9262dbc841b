"""Passerelle's own alerts: one notice per incident when it opens and one on recovery.

Real peers: Redis (the incidents live there), the drains and capture subscribers of an
``EagerBroker``, an HTTP webhook receiver on loopback (``http.server``) and an SMTP server
(aiosmtpd). Times are passed to the evaluation (``now``), so "for five minutes" needs no sleep.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Iterator
from email import message_from_bytes
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import redis
from aiosmtpd.controller import Controller

from broker import keys
from broker.ack import read_ack
from broker.config import load_config
from broker.dispatch import DRAIN_OUTBOUND
from broker.errors import SpecError
from broker.listen import Listeners
from broker.ops.alerts import AlertRules, evaluate, load_rules
from broker.ops.housekeeping import check_alerts
from broker.ops.notify import Notice, Webhook, send_all
from broker.settings import Settings
from broker.testing import EagerBroker, free_port, write_adapter
from passerelle_demo.synthetic import adt, patients

DMP = "dmp-national"
T0 = 1_900_000_000.0


class WebhookReceiver:
    """An HTTP server on loopback keeping every POSTed JSON body; answers ``status``."""

    def __init__(self, status: int = 200) -> None:
        self.bodies: list[dict[str, Any]] = []
        received = self.bodies
        answer = status

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers["Content-Length"])
                received.append(json.loads(self.rfile.read(length)))
                self.send_response(answer)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Mailbox:
    """aiosmtpd's handler: keeps every message it is handed."""

    def __init__(self) -> None:
        self.messages: list[Any] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(message_from_bytes(envelope.content))
        return "250 OK"


@pytest.fixture(name="webhook")
def fixture_webhook() -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver()
    yield receiver
    receiver.close()


@pytest.fixture(name="smtp")
def fixture_smtp() -> Iterator[tuple[Mailbox, int]]:
    mailbox = Mailbox()
    port = free_port()
    controller = Controller(mailbox, hostname="127.0.0.1", port=port)
    controller.start()
    yield mailbox, port
    controller.stop()


def _settings(
    broker: EagerBroker, tmp_path: Path, hook: str, smtp_port: int, rules: str
) -> Settings:
    rules_file = tmp_path / "alerts.yaml"
    rules_file.write_text(rules)
    return broker.settings.model_copy(
        update={
            "alerts_file": rules_file,
            "alert_webhook_url": hook,
            "smtp_host": "127.0.0.1",
            "smtp_port": smtp_port,
            "smtp_from": "passerelle@example.test",
            "smtp_to": "oncall@example.test, ops@example.test",
        }
    )


def test_a_failing_subscriber_is_notified_once_when_it_opens_and_once_on_recovery(
    make_broker: Any, tmp_path: Path, webhook: WebhookReceiver, smtp: tuple[Mailbox, int]
) -> None:
    mailbox, smtp_port = smtp
    broker: EagerBroker = make_broker(
        partitions=1, retry={"initial_delay_s": 60, "max_delay_s": 60}
    )
    settings = _settings(
        broker, tmp_path, webhook.url, smtp_port, "listener_down: null\nerror_rate: null\n"
    )
    broker.fhir.fail_next(1_000, "error")
    [patient] = patients(1, seed=31)
    answer = broker.receive(adt(patient, "A01", control_id="F-1"))
    assert answer is not None
    assert read_ack(answer).code == "AA"
    broker.run()
    assert broker.fhir_control_ids() == []

    def check(now: float) -> list[Notice]:
        return check_alerts(
            broker.client,
            adapters=broker.adapters.values(),
            subscribers=broker.subscribers,
            settings=settings,
            now=now,
        )

    assert check(T0) == []  # failing, not yet for five minutes
    assert check(T0 + 299) == []
    [opened] = check(T0 + 301)
    assert (opened.status, opened.rule, opened.subject) == ("firing", "subscriber_failing", DMP)
    # The incident lasts: nothing more, however often beat runs (or restarts: state is in Redis).
    assert check(T0 + 400) == []
    assert check(T0 + 500) == []
    assert [(b["status"], b["rule"], b["subject"]) for b in webhook.bodies] == [
        ("firing", "subscriber_failing", DMP)
    ]
    [mail] = mailbox.messages
    assert mail["Subject"] == f"[Passerelle] FIRING subscriber_failing {DMP}"
    assert mail["To"] == "oncall@example.test, ops@example.test"

    broker.fhir.fail_next(0)
    broker.client.delete(keys.hold(DMP, 0))
    broker.call(DRAIN_OUTBOUND, DMP, 0)
    assert broker.fhir_control_ids() == ["F-1"]
    [recovered] = check(T0 + 600)
    assert (recovered.status, recovered.opened_at, recovered.resolved_at) == (
        "resolved",
        T0 + 301,
        T0 + 600,
    )
    assert check(T0 + 700) == []
    assert [b["status"] for b in webhook.bodies] == ["firing", "resolved"]
    assert [m["Subject"].split()[1] for m in mailbox.messages] == ["FIRING", "RESOLVED"]


def test_a_dead_letter_opens_an_incident_that_its_discard_closes(
    make_broker: Any, tmp_path: Path, webhook: WebhookReceiver, smtp: tuple[Mailbox, int]
) -> None:
    mailbox, smtp_port = smtp
    broker: EagerBroker = make_broker(partitions=1)
    settings = _settings(broker, tmp_path, webhook.url, smtp_port, "listener_down: null\n")
    broker.fhir.fail_next(1, "reject")
    [patient] = patients(1, seed=32)
    assert broker.receive(adt(patient, "A01", control_id="D-1")) is not None
    broker.run()
    args = {"adapters": broker.adapters.values(), "subscribers": broker.subscribers}
    [opened] = check_alerts(broker.client, **args, settings=settings, now=T0)
    assert (opened.rule, opened.subject, opened.summary) == (
        "dead_letters",
        DMP,
        f"{DMP} has 1 open dead letter(s)",
    )
    assert check_alerts(broker.client, **args, settings=settings, now=T0 + 10) == []
    [record] = broker.dead_letters.find(DMP)
    broker.operations().discard(DMP, record["id"], who="test", why="synthetic")
    broker.run()
    [recovered] = check_alerts(broker.client, **args, settings=settings, now=T0 + 20)
    assert recovered.status == "resolved"
    assert [b["status"] for b in webhook.bodies] == ["firing", "resolved"]
    assert len(mailbox.messages) == 2


def test_a_listener_down_for_a_minute_opens_and_closes_once(redis_client: redis.Redis) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    hook = WebhookReceiver()
    try:
        run = {
            "subscribers": [],
            "inbound": ["chu-rabat-adt"],
            "listeners": [("chu-rabat-adt", "127.0.0.1", port)],
            "partitions": 1,
            "channels": [Webhook(hook.url)],
        }
        assert evaluate(redis_client, AlertRules(), **run, now=T0) == []
        listener.close()
        assert evaluate(redis_client, AlertRules(), **run, now=T0 + 1) == []
        [down] = evaluate(redis_client, AlertRules(), **run, now=T0 + 62)
        assert (down.rule, down.subject) == ("listener_down", "chu-rabat-adt")
        assert evaluate(redis_client, AlertRules(), **run, now=T0 + 90) == []
        listener = socket.create_server(("127.0.0.1", port))
        [up] = evaluate(redis_client, AlertRules(), **run, now=T0 + 120)
        assert up.status == "resolved"
        assert [b["rule"] for b in hook.bodies] == ["listener_down", "listener_down"]
    finally:
        listener.close()
        hook.close()


def test_an_error_rate_over_the_rule_for_a_whole_window(redis_client: redis.Redis) -> None:
    """10 % refused over a window opens; a clean window closes; too few messages: no verdict."""
    stats = keys.adapter_stats("chu-rabat-adt")
    run: dict[str, Any] = {
        "subscribers": [],
        "inbound": ["chu-rabat-adt"],
        "listeners": [],
        "partitions": 1,
        "channels": [],
    }
    redis_client.hset(stats, mapping={"received": 100, "refused:AE": 5})
    assert evaluate(redis_client, AlertRules(), **run, now=T0) == []
    redis_client.hincrby(stats, "received", 2)
    redis_client.hincrby(stats, "refused:AR", 1)
    assert evaluate(redis_client, AlertRules(), **run, now=T0 + 300) == []  # 3 messages: too few
    redis_client.hincrby(stats, "received", 90)
    redis_client.hincrby(stats, "refused:AE", 10)
    assert evaluate(redis_client, AlertRules(), **run, now=T0 + 450) == []  # window not over
    [opened] = evaluate(redis_client, AlertRules(), **run, now=T0 + 600)
    assert opened.summary == "chu-rabat-adt refused 10 of 100 messages (10%)"
    redis_client.hincrby(stats, "received", 50)
    assert evaluate(redis_client, AlertRules(), **run, now=T0 + 700) == []
    [closed] = evaluate(redis_client, AlertRules(), **run, now=T0 + 900)
    assert closed.status == "resolved"


def test_a_backlog_older_than_the_rule(redis_client: redis.Redis) -> None:
    redis_client.xgroup_create(keys.outbound(DMP, 0), keys.DELIVER_GROUP, id="0", mkstream=True)
    redis_client.xadd(keys.outbound(DMP, 0), {"env": "e"}, id="1000-0")  # epoch + 1 s: old
    rules = AlertRules.model_validate({"backlog_older_than": {"seconds": 60}})
    run: dict[str, Any] = {
        "subscribers": [DMP],
        "inbound": [],
        "listeners": [],
        "partitions": 1,
        "channels": [],
    }
    [opened] = evaluate(redis_client, rules, **run)
    assert (opened.rule, opened.subject) == ("backlog_older_than", DMP)
    redis_client.delete(keys.outbound(DMP, 0))
    [closed] = evaluate(redis_client, rules, **run)
    assert closed.status == "resolved"


def test_a_notification_that_fails_is_logged_not_raised_and_not_repeated(
    redis_client: redis.Redis,
) -> None:
    refusing = WebhookReceiver(status=500)
    closed_port = free_port()
    channels = [Webhook(refusing.url), Webhook(f"http://127.0.0.1:{closed_port}/", timeout_s=2)]
    redis_client.sadd(keys.dead_open(DMP), "d1")
    run: dict[str, Any] = {
        "subscribers": [DMP],
        "inbound": [],
        "listeners": [],
        "partitions": 1,
        "channels": channels,
    }
    try:
        [opened] = evaluate(redis_client, AlertRules(), **run, now=T0)
        assert opened.rule == "dead_letters"
        assert len(refusing.bodies) == 1
        assert evaluate(redis_client, AlertRules(), **run, now=T0 + 60) == []
        assert len(refusing.bodies) == 1
        send_all(channels, opened)  # directly too: no exception escapes
    finally:
        refusing.close()


def test_the_rules_file_errors_name_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "alerts.yaml"
    path.write_text("subscriber_failing:\n  for_minutes: -1\n")
    with pytest.raises(SpecError, match=rf"^{path}:2: subscriber_failing.for_minutes: "):
        load_rules(path)
    path.write_text("dead_letters: {}\nlistner_down: null\n")
    with pytest.raises(SpecError, match=rf"^{path}:2: listner_down: unknown key"):
        load_rules(path)
    path.write_text("error_rate: {over: 0.2}\nlistener_down: null\n")
    rules = load_rules(path)
    assert rules.error_rate is not None
    assert (rules.error_rate.over, rules.error_rate.min_messages) == (0.2, 10)
    assert rules.listener_down is None
    assert load_rules(None) == AlertRules()


def test_a_running_listener_beats_in_redis_so_it_is_up_from_another_host(
    redis_client: redis.Redis, redis_url: str, tmp_path: Path
) -> None:
    """The listener process marks itself (pl:listening:SRC) while it runs, and unmarks on stop:
    a probe that cannot reach its address (another container) still sees it up."""
    port = free_port()
    spec = {"id": "chu-rabat-adt", "name": "ADT", "direction": "inbound", "transport": "mllp"}
    write_adapter(tmp_path / "adapters", {**spec, "listen": f"127.0.0.1:{port}"})
    settings = Settings(data_dir=tmp_path, adapters_dir=tmp_path / "adapters", redis_url=redis_url)
    listeners = Listeners(load_config(settings))
    unreachable = [("chu-rabat-adt", "127.0.0.1", free_port())]  # not its address: only the beat
    run: dict[str, Any] = {
        "subscribers": [],
        "inbound": [],
        "listeners": unreachable,
        "partitions": 1,
        "channels": [],
    }

    async def started() -> None:
        await listeners.start()

    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(started())
        assert redis_client.get(keys.listening("chu-rabat-adt")) == f"127.0.0.1:{port}".encode()
        assert 0 < redis_client.ttl(keys.listening("chu-rabat-adt")) <= 15
        assert evaluate(redis_client, AlertRules(), **run, now=T0) == []
        assert evaluate(redis_client, AlertRules(), **run, now=T0 + 120) == []
        loop.run_until_complete(listeners.stop())
    finally:
        loop.close()
    assert redis_client.exists(keys.listening("chu-rabat-adt")) == 0
    assert evaluate(redis_client, AlertRules(), **run, now=T0 + 130) == []
    [down] = evaluate(redis_client, AlertRules(), **run, now=T0 + 200)
    assert (down.rule, down.status) == ("listener_down", "firing")
