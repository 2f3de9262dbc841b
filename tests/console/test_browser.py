"""The console in a real headless browser: Debian's Chromium driven by Playwright.

The API runs in uvicorn on loopback over a broker whose drains run in this process
(``EagerBroker``: real Redis, real intake and drains, capture peers on loopback); the test sends
messages through the intake and runs the queued tasks, as a worker would, then watches the pages
change. Chromium is ``/usr/bin/chromium`` (``make test`` installs Debian's package when it is
missing); Playwright only drives it, it downloads nothing.
"""

from __future__ import annotations

import json
import re
import socket
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import uvicorn
from playwright.sync_api import Browser, Page, expect, sync_playwright
from pydantic import SecretStr

from broker.ack import read_ack
from broker.api import create_app
from broker.store.schema import audit
from broker.testing import EagerBroker, free_port, running_listeners, wait_until
from passerelle_demo.synthetic import adt, patients

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
TOKEN = "synthetic-console-token"
WAIT_MS = 20_000
"""How long an expectation waits for the page to show it (the overview polls every 3 s)."""


def off_the_browser_thread(work: Callable[[], Any]) -> Any:
    """Run broker work in another thread: Playwright's sync API holds this thread's event loop,
    and the intake runs one of its own (``asyncio.run``)."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(work).result()


@pytest.fixture(name="browser", scope="module")
def fixture_browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: `make test` installs Debian's chromium "
            "(as root: apt-get install -y chromium)"
        )
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        yield browser
        browser.close()


@pytest.fixture(name="broker")
def fixture_broker(make_broker) -> EagerBroker:
    broker: EagerBroker = make_broker(partitions=1)
    return broker


@pytest.fixture(name="base_url")
def fixture_base_url(broker: EagerBroker) -> Iterator[str]:
    """The API (and so the console) in uvicorn on a free loopback port, over ``broker``."""
    settings = broker.settings.model_copy(update={"api_token": SecretStr(TOKEN)})
    app = create_app(settings, client=broker.client)
    app.state.operations = broker.operations()  # replays queue on the broker's task list
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, name="console-api", daemon=True)
    thread.start()
    assert wait_until(lambda: server.started, timeout=30), "uvicorn did not start"
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=30)


@pytest.fixture(name="page")
def fixture_page(browser: Browser, base_url: str) -> Iterator[Page]:
    context = browser.new_context(base_url=base_url, locale="en-GB")
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    yield page
    context.close()


def send(broker: EagerBroker, *messages: tuple[Any, str, str]) -> None:
    """Send (patient, event, control id) messages through the intake, then run the tasks."""

    def work() -> None:
        for patient, event, control_id in messages:
            answer = broker.receive(adt(patient, event, control_id=control_id))
            assert answer is not None
            assert read_ack(answer).code == "AA"
        broker.run()

    off_the_browser_thread(work)


def log_in(page: Page, path: str = "/console/") -> None:
    page.goto(path)
    expect(page).to_have_url(re.compile(r"/console/login\?next="))
    page.get_by_label("Token", exact=True).fill(TOKEN)
    page.get_by_role("button", name="Log in with the token").click()
    expect(page).to_have_url(re.compile(re.escape(path) + "$"))


def figure(page: Page, table: str, row: str, field: str):
    return page.locator(f'#{table} tr[data-id="{row}"] td[data-field="{field}"]')


def test_the_overview_follows_the_traffic_live(page: Page, broker: EagerBroker) -> None:
    """Log in, watch the figures change as messages flow, log out."""
    log_in(page)
    expect(page.get_by_role("heading", name="Overview", level=1)).to_be_visible()
    received = figure(page, "inbound", "chu-rabat-adt", "received")
    expect(received).to_have_text("0")
    expect(figure(page, "inbound", "chu-rabat-adt", "last_message")).to_have_text("never")

    a, b = patients(2, seed=2026)
    send(broker, (a, "A01", "LIVE-1"), (b, "A01", "LIVE-2"))

    # The page was not reloaded: its poll brings the new figures.
    expect(received).to_have_text("2")
    # The page reads the rate from the counter's growth between its polls.
    expect(figure(page, "inbound", "chu-rabat-adt", "received_rate")).to_contain_text("/s")
    expect(figure(page, "subscribers", "dmp-national", "delivered")).to_have_text("2")
    expect(figure(page, "inbound", "chu-rabat-adt", "last_message")).not_to_have_text("never")
    expect(page.locator("#mappings li").first).to_contain_text("@")
    # No listener process nor Celery worker runs beside an EagerBroker: the page says so.
    listener = page.locator('#listeners tr[data-id="chu-rabat-adt"] td[data-field="state"]')
    expect(listener).to_have_text("NOT accepting connections")
    expect(page.locator('#system dd[data-field="workers"]')).to_contain_text("NONE answering")

    page.get_by_role("button", name="Log out").click()
    expect(page).to_have_url(re.compile(r"/console/login$"))
    page.goto("/console/")
    expect(page).to_have_url(re.compile(r"/console/login\?next="))


def test_a_click_on_replay_delivers_the_dead_letter(page: Page, broker: EagerBroker) -> None:
    """A refused message becomes a dead letter; replayed from the console, it is delivered."""
    (patient,) = patients(1, seed=77)
    broker.fhir.fail_next(1, "reject")
    send(broker, (patient, "A01", "DEAD-1"))
    assert "DEAD-1" not in broker.fhir_control_ids()

    log_in(page)
    expect(figure(page, "subscribers", "dmp-national", "dead_letters_open")).to_have_text("1")
    page.get_by_role("link", name="Dead letters").click()
    page.locator('#subscribers tr[data-id="dmp-national"]').get_by_role("button").click()
    rows = page.locator("#letters tbody tr[data-id]")
    expect(rows).to_have_count(1)
    rows.first.get_by_role("button", name="Show").click()
    detail = page.locator("#one")
    expect(detail.locator('dd[data-field="control_id"]')).to_have_text("DEAD-1")
    expect(detail.locator("#attempts tbody tr")).to_have_count(1)
    # The canonical Bundle (patient data) is not on the page until asked for.
    assert patient.family not in page.content()

    detail.get_by_label("Why").fill("receiver fixed its birthDate check")
    detail.get_by_role("button", name="Replay").click()
    expect(page.locator("#notice")).to_contain_text("queued for replay")
    expect(rows).to_have_count(0)  # no longer open

    off_the_browser_thread(broker.run)  # the worker runs the queued release
    assert broker.fhir_control_ids().count("DEAD-1") == 1
    # The audit trail names the console as the actor, with the reason given.
    off_the_browser_thread(broker.write_store)
    with broker.store.connect() as connection:
        actions = list(connection.execute(sa.select(audit.c.action, audit.c.actor, audit.c.reason)))
    # Opening the dead letter read its metadata only; nothing of its content was viewed.
    assert {tuple(a) for a in actions} >= {
        ("message.viewed", "console", ""),
        ("message.replayed", "console", "receiver fixed its birthDate check"),
    }
    assert "content.viewed" not in {a.action for a in actions}


def test_an_edit_loads_the_bundle_with_the_reason_the_form_asks_once(
    page: Page, broker: EagerBroker
) -> None:
    """The Bundle is loaded only once the form's "Why" is given, and that view is audited with
    it; the same reason then goes with the edit-and-replay, asked once."""
    (patient,) = patients(1, seed=79)
    broker.fhir.fail_next(1, "reject")
    send(broker, (patient, "A01", "DEAD-3"))
    log_in(page, "/console/dead-letters")
    page.locator('#subscribers tr[data-id="dmp-national"]').get_by_role("button").click()
    page.locator("#letters tbody tr[data-id]").first.get_by_role("button", name="Show").click()
    detail = page.locator("#one")
    expect(detail.locator('dd[data-field="control_id"]')).to_have_text("DEAD-3")
    page.get_by_text("Edit, then replay").click()
    bundle = page.get_by_label("Corrected canonical Bundle")
    page.get_by_role("button", name="Load the Bundle").click()
    expect(page.locator("#error")).to_contain_text("Say why first")
    expect(bundle).to_have_value("")
    assert patient.family not in page.content()

    why = "INC-7001 the DMP refuses the birth date"
    detail.get_by_label("Why").fill(why)
    page.get_by_role("button", name="Load the Bundle").click()
    expect(bundle).to_have_value(re.compile(re.escape(patient.family)))
    corrected = json.loads(bundle.input_value())
    (person,) = [
        e["resource"] for e in corrected["entry"] if e["resource"]["resourceType"] == "Patient"
    ]
    person["birthDate"] = "1980-02-03"
    bundle.fill(json.dumps(corrected))
    detail.get_by_role("button", name="Replay").click()
    expect(page.locator("#notice")).to_contain_text("queued for replay")

    off_the_browser_thread(broker.run)
    assert broker.fhir_control_ids().count("DEAD-3") == 1
    (sent,) = [
        e["resource"]
        for e in broker.fhir.received[-1]["entry"]
        if e["resource"]["resourceType"] == "Patient"
    ]
    assert sent["birthDate"] == "1980-02-03"
    off_the_browser_thread(broker.write_store)
    with broker.store.connect() as connection:
        rows = connection.execute(sa.select(audit.c.action, audit.c.actor, audit.c.reason))
        actions = {tuple(a) for a in rows}
    assert actions >= {
        ("message.viewed", "console", ""),
        ("content.viewed", "console", why),
        ("message.edited", "console", why),
    }


def test_a_replay_without_a_reason_is_not_sent(page: Page, broker: EagerBroker) -> None:
    (patient,) = patients(1, seed=78)
    broker.fhir.fail_next(1, "reject")
    send(broker, (patient, "A01", "DEAD-2"))
    log_in(page, "/console/dead-letters")
    page.locator('#subscribers tr[data-id="dmp-national"]').get_by_role("button").click()
    page.locator("#letters tbody tr[data-id]").first.get_by_role("button", name="Show").click()
    page.get_by_role("button", name="Replay").click()
    # The browser's own check (required) stops it: still open, nothing queued.
    expect(page.locator("#letters tbody tr[data-id]")).to_have_count(1)
    assert broker.celery.kicked() == []


def test_pages_without_a_session_lead_to_the_login_page(page: Page) -> None:
    for path in ("/console/refusals", "/console/unmapped", "/console/messages"):
        page.goto(path)
        expect(page).to_have_url(re.compile(r"/console/login\?next=%2Fconsole%2F"))
    reply = page.request.get("/api/overview")
    assert reply.status == 401


def test_a_person_logs_in_with_a_name_and_password(page: Page, broker: EagerBroker) -> None:
    """The login page's first form: a user's name and password open a session as that user;
    a wrong password leaves the browser on the login page with the reason."""
    from broker.store import connect, upgrade
    from broker.store.credentials import add_user, set_password

    engine = connect(broker.settings.effective_store_url, create=True)
    upgrade(engine)
    add_user(engine, "amina.benali", "operator", adapter=None, by="test", now=0.0)
    set_password(engine, "amina.benali", "Tajine aux olives 2026", now=0.0)
    engine.dispose()
    page.goto("/console/")
    page.get_by_label("User name").fill("amina.benali")
    page.get_by_label("Password").fill("not the password at all")
    page.get_by_role("button", name="Log in", exact=True).click()
    expect(page.get_by_role("alert")).to_contain_text("not accepted")
    page.get_by_label("Password").fill("Tajine aux olives 2026")
    page.get_by_role("button", name="Log in", exact=True).click()
    expect(page.get_by_role("heading", name="Overview", level=1)).to_be_visible()
    expect(page.locator("header")).to_contain_text("amina.benali")


def test_the_other_pages_in_french(page: Page, broker: EagerBroker) -> None:
    """The switch is remembered; the pages read their data, the message browser included."""
    send(broker, (patients(1, seed=5)[0], "A01", "FR-1"))
    off_the_browser_thread(broker.write_store)
    off_the_browser_thread(lambda: broker.receive(b"not HL7 at all"))
    log_in(page, "/console/refusals")
    page.get_by_role("link", name="Français").click()
    expect(page.get_by_role("heading", name="Rejets et quarantaine", level=1)).to_be_visible()
    expect(page.locator("#rejected tbody tr[data-id]")).to_have_count(1)
    expect(page.locator('#rejected td[data-field="reason"]')).to_contain_text("MSH")
    page.get_by_role("link", name="Champs non lus").click()
    expect(page.locator("#messages")).to_contain_text("1 messages transformés")
    page.get_by_role("link", name="Messages").click()
    row = page.locator("#results tbody tr[data-id]")
    expect(row).to_have_count(1)
    expect(row.locator('td[data-field="control_id"]')).to_have_text("FR-1")
    expect(row.locator('[data-state="delivered"]')).to_have_count(2)
    expect(row.locator('[data-state="delivered"]').first).to_contain_text("livré")
    expect(page.locator("html")).to_have_attribute("lang", "fr")


def test_a_search_by_control_id_leads_to_the_trace(page: Page, broker: EagerBroker) -> None:
    """A message sent through the intake and the drains, stored: the search by its control id
    finds it alone, and its trace shows the raw message, the canonical Bundle and, for each
    subscriber, the delivered attempt with the receiver's answer."""
    a, b = patients(2, seed=2027)
    send(broker, (a, "A01", "TRACE-1"), (b, "A01", "TRACE-2"))
    off_the_browser_thread(broker.write_store)

    log_in(page, "/console/messages")
    expect(page.locator("#results tbody tr[data-id]")).to_have_count(2)  # newest first, all
    page.get_by_label("Control id (MSH-10)").fill("TRACE-1")
    page.get_by_role("button", name="Search").click()
    rows = page.locator("#results tbody tr[data-id]")
    expect(rows).to_have_count(1)
    expect(rows.locator('[data-state="delivered"]')).to_have_text(
        ["dmp-national: delivered", "lab-legacy: delivered"]
    )
    expect(page).to_have_url(re.compile(r"control_id=TRACE-1"))
    rows.get_by_role("link", name="TRACE-1").click()

    expect(page).to_have_url(re.compile(r"/console/messages/[0-9a-f]+$"))
    expect(page.get_by_role("heading", level=1)).to_have_text("Trace of TRACE-1")
    expect(page.locator('#summary dd[data-field="control_id"]')).to_have_text("TRACE-1")
    expect(page.locator('#summary dd[data-field="event"]')).to_have_text("ADT^A01")
    # The content is withheld until a reason is given (the view is audited), and folded until
    # asked for; then the bytes received, one segment per line.
    raw = page.locator("#raw pre")
    expect(raw).to_be_hidden()
    page.get_by_text("Raw message as received").click()
    expect(raw).to_contain_text("withheld")
    expect(raw).not_to_contain_text(a.family)
    page.get_by_label("Reason to see the content").fill("INC-9001 the DMP misses a visit")
    page.get_by_role("button", name="Show the content").click()
    expect(raw).to_be_visible()
    expect(raw).to_contain_text("MSH|^~\\&|")
    expect(raw).to_contain_text("|TRACE-1|")
    expect(raw).to_contain_text(a.family)
    page.get_by_text("Canonical Bundle (FHIR R4 JSON)").click()
    canonical = page.locator("#canonical pre")
    expect(canonical).to_contain_text('"resourceType": "Bundle"')
    expect(canonical).to_contain_text('"resourceType": "Patient"')
    # Per subscriber: wanted by routing, one attempt, delivered, with the receiver's answer.
    dmp = page.locator('article[data-subscriber="dmp-national"]')
    expect(dmp.locator('[data-field="decision"]')).to_contain_text("Wanted")
    attempt = dmp.locator("tbody tr[data-outcome]")
    expect(attempt).to_have_count(1)
    expect(attempt.locator('td[data-field="outcome"]')).to_have_text("delivered")
    expect(attempt.locator('td[data-field="code"]')).to_have_text(re.compile(r"^HTTP 20\d$"))
    lab = page.locator('article[data-subscriber="lab-legacy"]')
    expect(lab.locator('tbody tr[data-outcome="delivered"] td[data-field="code"]')).to_have_text(
        "ACK AA"
    )
    expect(lab.locator('td[data-field="reply"]')).to_contain_text("AA")  # the receiver's answer
    expect(page.locator("#actions tbody")).to_contain_text("No operator action.")


def test_the_trace_of_an_unknown_message_says_so(page: Page, broker: EagerBroker) -> None:
    off_the_browser_thread(broker.write_store)  # the store exists, the message does not
    log_in(page, "/console/messages/0123456789abcdef")
    expect(page.locator("#error")).to_contain_text("No message with this id")


def test_the_overview_shows_latency_and_connected_peers(page: Page, broker: EagerBroker) -> None:
    """After traffic each subscriber shows its p50/p95/p99; while an MLLP client holds a
    connection to the real listener, its adapter shows one peer, then none once it leaves."""
    send(broker, *[(p, "A01", f"LAT-{i}") for i, p in enumerate(patients(3, seed=31))])
    log_in(page)
    for percentile in ("p50", "p95", "p99"):
        expect(figure(page, "subscribers", "dmp-national", percentile)).to_have_text(
            re.compile(r"^[\d.,]+ (ms|s)$")
        )
    peers = figure(page, "inbound", "chu-rabat-adt", "peers")
    expect(peers).to_have_text("—")  # no listener process: not known
    with running_listeners(broker.config) as listeners:
        with socket.create_connection(listeners.adapters[0].host_port):
            expect(peers).to_have_text("1")
            expect(
                page.locator('#listeners tr[data-id="chu-rabat-adt"] td[data-field="state"]')
            ).to_have_text("accepting connections")
        expect(peers).to_have_text("0")
