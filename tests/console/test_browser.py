"""The console in a real headless browser: Debian's Chromium driven by Playwright.

The API runs in uvicorn on loopback over a broker whose drains run in this process
(``EagerBroker``: real Redis, real intake and drains, capture peers on loopback); the test sends
messages through the intake and runs the queued tasks, as a worker would, then watches the pages
change. Chromium is ``/usr/bin/chromium`` (``make test`` installs Debian's package when it is
missing); Playwright only drives it, it downloads nothing.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from playwright.sync_api import Browser, Page, expect, sync_playwright
from pydantic import SecretStr

from broker import keys
from broker.ack import read_ack
from broker.api import create_app
from broker.testing import EagerBroker, free_port, wait_until
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
    page.get_by_label("API token").fill(TOKEN)
    page.get_by_role("button", name="Log in").click()
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
    actions = [
        {k.decode(): v.decode() for k, v in fields.items()}
        for _, fields in broker.client.xrange(keys.AUDIT)
    ]
    assert {(a["action"], a["who"], a["why"]) for a in actions} >= {
        ("viewed", "console", ""),
        ("replayed", "console", "receiver fixed its birthDate check"),
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


def test_the_other_pages_in_french(page: Page, broker: EagerBroker) -> None:
    """The switch is remembered; the pages read their data; the browser has no store yet."""
    send(broker, (patients(1, seed=5)[0], "A01", "FR-1"))
    off_the_browser_thread(lambda: broker.receive(b"not HL7 at all"))
    log_in(page, "/console/refusals")
    page.get_by_role("link", name="Français").click()
    expect(page.get_by_role("heading", name="Rejets et quarantaine", level=1)).to_be_visible()
    expect(page.locator("#rejected tbody tr[data-id]")).to_have_count(1)
    expect(page.locator('#rejected td[data-field="reason"]')).to_contain_text("MSH")
    page.get_by_role("link", name="Champs non lus").click()
    expect(page.locator("#messages")).to_contain_text("1 messages transformés")
    page.get_by_role("link", name="Messages").click()
    expect(page.locator("#unavailable")).to_contain_text("pas encore disponible")
    expect(page.locator("html")).to_have_attribute("lang", "fr")
