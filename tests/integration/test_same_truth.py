"""The same truth everywhere: one real stack, three subscribers, every view agrees figure by figure.

A ``LoopbackStack`` (embedded Redis, the MLLP listener, Celery worker processes, beat, the store
writer and the API as separate processes) receives 200 ADT messages of 20 synthetic Moroccan
patients over MLLP. Three subscribers take them:

- ``dmp-national`` (FHIR, healthy): the FHIR capture accepts every A01/A04/A08 (A03 is not
  among its events: filtered out);
- ``cnss-amo`` (FHIR, **down**: nothing listens on its port): each patient's first message is
  retried, then dead-lettered, and the patient's later messages are parked behind it;
- ``lab-legacy`` (MLLP, **refusing**: the capture answers AR with its reason): the same, with
  the receiver's reason on the dead letter and in the message's trace.

Once the stack is quiet (polled, never slept), ``/api/overview``, ``/metrics``, ``passerelle
status --json`` (a subprocess on the stack's settings), the message store (``passerelle messages
search --json`` and ``GET /api/messages``), the dead letters and the console's overview page (in
Chromium) must show the same delivered, dead-lettered, open dead letters, parked, backlog and
retried figures; and those figures must be what was sent, counted independently from the
traffic and what the capture peers received.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from broker import keys
from broker.ack import read_ack
from broker.adapters.mllp import MllpClient
from broker.testing import free_port, run_cli, wait_until, write_adapter
from passerelle_demo.loopback import API_TOKEN, LoopbackStack
from passerelle_demo.peers import FhirCapture, MllpCapture
from passerelle_demo.synthetic import adt, patients

pytestmark = pytest.mark.integration

SOURCE = "chu-rabat-adt"
HEALTHY, DOWN, REFUSING = "dmp-national", "cnss-amo", "lab-legacy"
SUBSCRIBERS = (HEALTHY, DOWN, REFUSING)
PATIENTS = 20
EVENTS = ("A01", "A08", "A08", "A04", "A08", "A03", "A01", "A08", "A04", "A03")
"""Each patient's ten messages, in order; dmp-national does not take A03."""
HEALTHY_EVENTS = {"A01", "A04", "A08"}
DOWN_ATTEMPTS, REFUSING_ATTEMPTS = 3, 2
"""Attempts before a dead letter: each dead letter was retried this many times less one."""
RECEIVER_SAID = f"capture endpoint {REFUSING} answers AR"
"""The text of the refusing capture's ACK (MSA-3): the receiver's own reason."""
SETTLE_S = 120


@dataclass(frozen=True)
class Sent:
    """One message sent: its MSH-10, the patient's IPP and the trigger event."""

    control_id: str
    ipp: str
    event: str


@dataclass(frozen=True)
class Traffic:
    """The stack once quiet, what was sent, and the settings a separate process needs."""

    stack: LoopbackStack
    sent: list[Sent]
    env: dict[str, str | None]
    """The stack's settings as ``PASSERELLE_*`` variables (``None``: unset)."""

    def expected(self) -> dict[str, dict[str, int]]:
        """Per subscriber, the figures the traffic must produce, counted from what was sent."""
        to_healthy = sum(1 for s in self.sent if s.event in HEALTHY_EVENTS)
        held = len({s.ipp for s in self.sent})
        everything = len(self.sent)
        return {
            HEALTHY: {"delivered": to_healthy, "dead_letters_open": 0, "parked": 0, "backlog": 0},
            DOWN: {
                "delivered": 0,
                "dead_letters_open": held,
                "parked": everything - held,
                "backlog": everything - held,
            },
            REFUSING: {
                "delivered": 0,
                "dead_letters_open": held,
                "parked": everything - held,
                "backlog": everything - held,
            },
        }


def _traffic() -> list[tuple[Sent, str]]:
    """200 ADT messages, the patients' events interleaved (patient 1's first, patient 2's first...)."""
    people = patients(PATIENTS, seed=9090)
    out = []
    for step, event in enumerate(EVENTS):
        for number, patient in enumerate(people):
            control_id = f"TRUTH-{step:02d}-{number:02d}"
            text = adt(patient, event, control_id=control_id)
            out.append((Sent(control_id, patient.ipp, event), text))
    return out


def _quiet(stack: LoopbackStack, received: int) -> bool:
    """Everything received is journalled, mapped, delivered or given up, and stored."""
    with stack.api_client() as client:
        view = client.get("/api/overview").json()
    subs = {s["id"]: s for s in view["subscribers"]}
    return (
        view["received"] == received
        and view["pipeline"]["backlog"] == 0
        and all(
            subs[s]["depth"] == 0 and subs[s]["retrying"] == 0 for s in SUBSCRIBERS if s in subs
        )
        and set(SUBSCRIBERS) <= set(subs)
        and stack.redis.xlen(keys.STORE) == 0
    )


@pytest.fixture(scope="module")
def traffic(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Traffic]:
    """The stack with its three subscribers, after the 200 messages settled."""
    root: Path = tmp_path_factory.mktemp("same-truth")
    # The down subscriber: a FHIR registration on a port nobody listens on, beside the two the
    # stack writes (they share the registrations directory).
    write_adapter(
        root / "adapters",
        {
            "id": DOWN,
            "name": "CNSS AMO (down)",
            "direction": "outbound",
            "transport": "fhir-rest",
            "insecure_http": True,
            "url": f"http://127.0.0.1:{free_port()}/fhir",
            "subscribe": {"events": ["ADT^*"]},
            "retry": {"initial_delay_s": 0.05, "max_delay_s": 0.2, "max_attempts": DOWN_ATTEMPTS},
        },
    )
    peers = (FhirCapture(), MllpCapture(mode="reject", name=REFUSING))
    with LoopbackStack(
        root,
        peers=peers,
        retry={"initial_delay_s": 0.05, "max_delay_s": 0.2, "max_attempts": REFUSING_ATTEMPTS},
        workers=2,
        rekick_interval_s=1.0,
        claim_idle_s=10.0,
        # Generous: under a loaded CI host a late AR must not count as a timed-out attempt
        # (an extra attempt would break the counts this file compares).
        ack_timeout_s=10.0,
        delivery_timeout_s=10.0,
    ) as stack:
        messages = _traffic()
        with MllpClient("127.0.0.1", stack.inbound_port, timeout=10) as client:
            for sent, text in messages:
                assert read_ack(client.send(text.encode())).code == "AA", sent
        assert wait_until(lambda: _quiet(stack, len(messages)), SETTLE_S, 0.5), stack.logs()
        assert stack.settings is not None
        env: dict[str, str | None] = {
            "PASSERELLE_DATA_DIR": str(stack.data_dir),
            "PASSERELLE_ADAPTERS_DIR": str(stack.settings.adapters_dir),
            "PASSERELLE_HTTP_PORT": str(stack.settings.http_port),
            "PASSERELLE_STORE_URL": None,
            "PASSERELLE_REDIS_URL": None,
        }
        yield Traffic(stack, [sent for sent, _ in messages], env)


# -- Each view, read as a {subscriber: {figure: value}} table ----------------------------------

FIGURES = ("delivered", "dead_letters_open", "parked", "backlog")


def _overview_figures(document: dict[str, Any]) -> dict[str, dict[str, int]]:
    return {
        s["id"]: {f: s[f] for f in FIGURES}
        for s in document["subscribers"]
        if s["id"] in SUBSCRIBERS
    }


def _api(traffic: Traffic, path: str, **params: Any) -> Any:
    with traffic.stack.api_client() as client:
        reply = client.get(path, params=params)
    assert reply.status_code == 200, reply.text
    return reply.json() if path != "/metrics" else reply.text


def _metrics(traffic: Traffic) -> dict[tuple[str, str], float]:
    """``/metrics`` parsed with prometheus_client's parser: (sample name, subscriber or
    adapter) → value, for the series labelled by subscriber or by adapter alone."""
    found = {}
    for family in text_string_to_metric_families(_api(traffic, "/metrics")):
        for sample in family.samples:
            if len(sample.labels) == 1 and set(sample.labels) <= {"subscriber", "adapter"}:
                [label] = sample.labels.values()
                found[(sample.name, label)] = sample.value
    return found


def _process(traffic: Traffic, *args: str) -> Any:
    """``passerelle ARGS --json`` as a separate process on the stack's settings."""
    env = {k: v for k, v in {**os.environ, **traffic.env}.items() if v is not None}
    done = subprocess.run(
        [sys.executable, "-m", "broker", *args, "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _cli(traffic: Traffic, *args: str) -> Any:
    """``passerelle ARGS --json`` in this process (the same command, a third of the cost)."""
    done = run_cli(*args, "--json", env=traffic.env)
    assert done.code == 0, done.stderr
    return json.loads(done.stdout)


def _store_states(items: list[dict[str, Any]]) -> dict[str, Counter[str]]:
    """Per subscriber, how many messages are in each state, from store search results."""
    states: dict[str, Counter[str]] = {s: Counter() for s in SUBSCRIBERS}
    for item in items:
        for delivery in item["deliveries"]:
            states.setdefault(delivery["subscriber"], Counter())[delivery["state"]] += 1
    return states


def _store_figures(states: dict[str, Counter[str]]) -> dict[str, dict[str, int]]:
    """The overview's figures as the store tells them (nothing replayed: a dead letter is open)."""
    return {
        sub: {
            "delivered": states[sub]["delivered"],
            "dead_letters_open": states[sub]["dead_lettered"],
            "parked": states[sub]["parked"],
            "backlog": sum(states[sub][s] for s in ("queued", "retrying", "parked")),
        }
        for sub in SUBSCRIBERS
    }


# -- The tests ---------------------------------------------------------------------------------


def test_the_overview_tells_what_was_sent(traffic: Traffic) -> None:
    """/api/overview: delivered, open dead letters, parked and backlog as the traffic implies,
    and as the peers saw it."""
    overview = _api(traffic, "/api/overview")
    assert _overview_figures(overview) == traffic.expected()
    assert overview["received"] == len(traffic.sent)
    stack = traffic.stack
    assert len(set(stack.fhir.envelope_ids)) == traffic.expected()[HEALTHY]["delivered"]
    assert stack.lab.accepted_ids() == []
    # Each patient's first message, refused twice; nothing behind it was sent.
    firsts = [s.control_id for s in traffic.sent[:PATIENTS]]
    assert Counter(stack.lab.refused_ids()) == dict.fromkeys(firsts, REFUSING_ATTEMPTS)


def test_status_json_is_the_overview(traffic: Traffic) -> None:
    """``passerelle status --json``, another process on the stack's settings: the same figures."""
    status = _process(traffic, "status")
    assert _overview_figures(status) == _overview_figures(_api(traffic, "/api/overview"))


def test_metrics_tell_the_same(traffic: Traffic) -> None:
    """/metrics: delivered, dead-lettered, open dead letters, parked, backlog, retried."""
    metrics = _metrics(traffic)
    overview = _overview_figures(_api(traffic, "/api/overview"))
    from_metrics = {
        sub: {
            "delivered": metrics[("passerelle_delivered_total", sub)],
            "dead_letters_open": metrics[("passerelle_subscriber_dead_letters_open", sub)],
            "parked": metrics[("passerelle_subscriber_parked", sub)],
            # The gauge counts what waits in the queue; the parked messages are their own gauge.
            "backlog": metrics[("passerelle_subscriber_backlog", sub)]
            + metrics[("passerelle_subscriber_parked", sub)],
        }
        for sub in SUBSCRIBERS
    }
    assert from_metrics == overview
    [inbound] = [a for a in _api(traffic, "/api/overview")["inbound"] if a["id"] == SOURCE]
    assert (
        metrics[("passerelle_adapter_received_total", SOURCE)]
        == inbound["received"]
        == len(traffic.sent)
    )
    dead_lettered = {sub: metrics[("passerelle_dead_lettered_total", sub)] for sub in SUBSCRIBERS}
    assert dead_lettered == {HEALTHY: 0, DOWN: PATIENTS, REFUSING: PATIENTS}
    retried = {sub: metrics[("passerelle_retried_total", sub)] for sub in SUBSCRIBERS}
    assert retried == {
        HEALTHY: 0,
        DOWN: PATIENTS * (DOWN_ATTEMPTS - 1),
        REFUSING: PATIENTS * (REFUSING_ATTEMPTS - 1),
    }


def test_the_store_tells_the_same(traffic: Traffic) -> None:
    """The store, through ``messages search`` (another process) and the API, counts each
    subscriber's states as the overview does."""
    everything = _process(traffic, "messages", "search", "--limit", "500")
    assert sorted(m["control_id"] for m in everything) == sorted(s.control_id for s in traffic.sent)
    api = _api(traffic, "/api/messages", limit=500)
    assert api["next"] is None
    overview = _overview_figures(_api(traffic, "/api/overview"))
    assert _store_figures(_store_states(everything)) == overview
    assert _store_figures(_store_states(api["items"])) == overview
    filtered = sum(1 for s in traffic.sent if s.event not in HEALTHY_EVENTS)
    assert _store_states(everything)[HEALTHY]["filtered"] == filtered


@pytest.mark.parametrize(
    ("subscriber", "state", "figure"),
    [
        pytest.param(HEALTHY, "delivered", "delivered", id="healthy-delivered"),
        pytest.param(DOWN, "dead_lettered", "dead_letters_open", id="down-dead-lettered"),
        pytest.param(DOWN, "parked", "parked", id="down-parked"),
        pytest.param(REFUSING, "dead_lettered", "dead_letters_open", id="refusing-dead-lettered"),
        pytest.param(REFUSING, "parked", "parked", id="refusing-parked"),
    ],
)
def test_a_search_by_subscriber_and_state_finds_the_overview_figure(
    traffic: Traffic, subscriber: str, state: str, figure: str
) -> None:
    """``messages search --subscriber X --state Y`` and the API find as many as the overview says."""
    [wanted] = [
        s[figure] for s in _api(traffic, "/api/overview")["subscribers"] if s["id"] == subscriber
    ]
    found = _cli(
        traffic,
        "messages",
        "search",
        "--subscriber",
        subscriber,
        "--state",
        state,
        "--limit",
        "500",
    )
    api = _api(traffic, "/api/messages", subscriber=subscriber, state=state, limit=500)
    assert len(found) == wanted
    assert sorted(m["id"] for m in api["items"]) == sorted(m["id"] for m in found)


def test_the_dead_letters_are_those_of_the_store(traffic: Traffic) -> None:
    """/api/dead-letters lists the open ones the overview counts: the store's dead-lettered
    messages, each tried as often as the policy says."""
    for sub, attempts in ((DOWN, DOWN_ATTEMPTS), (REFUSING, REFUSING_ATTEMPTS)):
        letters = _api(traffic, f"/api/dead-letters/{sub}", limit=1000)
        in_store = _api(traffic, "/api/messages", subscriber=sub, state="dead_lettered", limit=500)
        assert sorted(d["envelope_id"] for d in letters) == sorted(
            m["id"] for m in in_store["items"]
        )
        assert {d["attempts"] for d in letters} == {attempts}
        assert all(d["holds_patient"] for d in letters)
    summary = {d["subscriber"]: d["open"] for d in _api(traffic, "/api/dead-letters")}
    assert summary == {DOWN: PATIENTS, REFUSING: PATIENTS}


def test_the_receivers_reason_is_in_the_dead_letter_and_the_trace(traffic: Traffic) -> None:
    """What the refusing lab answered (AR and its text): on every dead letter, in the message's
    trace (CLI and API alike), and a search for its text finds the same messages in the dead
    letters and in the store."""
    letters = _api(traffic, f"/api/dead-letters/{REFUSING}", limit=1000)
    assert len(letters) == PATIENTS
    for letter in letters:
        assert "answered AR" in letter["reason"]
        assert RECEIVER_SAID in letter["last_reply"]
    by_text = _api(traffic, f"/api/dead-letters/{REFUSING}", text=RECEIVER_SAID, limit=1000)
    in_store = _cli(traffic, "messages", "search", "--text", RECEIVER_SAID, "--limit", "500")
    assert sorted(m["id"] for m in in_store) == sorted(d["envelope_id"] for d in by_text)
    assert len(in_store) == PATIENTS

    one = letters[0]
    trace = _process(traffic, "messages", "trace", one["envelope_id"])
    [refused] = [d for d in trace["deliveries"] if d["subscriber"] == REFUSING]
    assert (refused["state"], refused["reason"], refused["dead_letter"]) == (
        "dead_lettered",
        one["reason"],
        one["id"],
    )
    assert [a["ack_code"] for a in refused["attempt_log"]] == ["AR"] * REFUSING_ATTEMPTS
    assert all(RECEIVER_SAID in a["reply"] for a in refused["attempt_log"])
    # The same trace tells what the two other subscribers did with it (a patient's first
    # message is an A01: the DMP took it; the CNSS could not be reached).
    tried = {d["subscriber"]: [a["outcome"] for a in d["attempt_log"]] for d in trace["deliveries"]}
    assert tried[HEALTHY] == ["delivered"]
    assert tried[DOWN] == ["retrying"] * (DOWN_ATTEMPTS - 1) + ["failed"]
    assert (
        _api(traffic, f"/api/messages/{one['envelope_id']}/trace")["deliveries"]
        == trace["deliveries"]
    )


def test_retries_are_counted_as_the_store_recorded_them(traffic: Traffic) -> None:
    """/metrics' retried per subscriber equals the attempts the store recorded as retrying."""
    metrics = _metrics(traffic)
    retried: Counter[str] = Counter()
    with traffic.stack.api_client() as client:
        for sub in (DOWN, REFUSING):
            params = {"subscriber": sub, "state": "dead_lettered", "limit": 500}
            for message in client.get("/api/messages", params=params).json()["items"]:
                trace = client.get(f"/api/messages/{message['id']}/trace").json()
                [delivery] = [d for d in trace["deliveries"] if d["subscriber"] == sub]
                retried[sub] += sum(a["outcome"] == "retrying" for a in delivery["attempt_log"])
    assert retried == {sub: metrics[("passerelle_retried_total", sub)] for sub in (DOWN, REFUSING)}


# -- The console, in Chromium ------------------------------------------------------------------

CHROMIUM = Path("/usr/bin/chromium")


@pytest.mark.browser
def test_the_console_overview_shows_the_same_figures(traffic: Traffic) -> None:
    """The console's overview page, in a real browser, shows the overview's figures."""
    from playwright.sync_api import expect, sync_playwright

    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs Debian's chromium")
    overview = _overview_figures(_api(traffic, "/api/overview"))
    assert overview == traffic.expected()
    assert traffic.stack.settings is not None
    base = f"http://127.0.0.1:{traffic.stack.settings.http_port}"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            page = browser.new_context(base_url=base, locale="en-GB").new_page()
            page.set_default_timeout(20_000)
            page.goto("/console/")
            page.get_by_label("Token", exact=True).fill(API_TOKEN)
            page.get_by_role("button", name="Log in with the token").click()
            expect(page).to_have_url(re.compile(r"/console/$"))
            for sub, figures in overview.items():
                row = page.locator(f'#subscribers tr[data-id="{sub}"]')
                for name, value in figures.items():
                    expect(row.locator(f'td[data-field="{name}"]')).to_have_text(str(value))
        finally:
            browser.close()
