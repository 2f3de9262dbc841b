"""Take the README's console screenshots on a real stack with demo traffic (run by hand).

Starts a ``LoopbackStack`` (listener, workers, store writer, beat and API as separate processes,
capture subscribers on loopback), sends synthetic ADT messages over one MLLP connection that
stays open (so the overview shows a connected peer), lets the FHIR subscriber refuse one (a
dead letter), then drives Debian's Chromium with Playwright to photograph the overview and one
message's trace into ``docs/img/``. Nothing is downloaded; every figure on the pictures is real.

Usage (from the repository root, after ``make .venv/.installed``)::

    .venv/bin/python docs/screenshots.py            # writes docs/img/console-*.png
    .venv/bin/python docs/screenshots.py --messages 60 --out /tmp/shots
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

from playwright.sync_api import Page, ViewportSize, expect, sync_playwright

from broker.ack import read_ack
from broker.adapters.mllp import MllpClient
from broker.testing import wait_until
from passerelle_demo.loopback import API_TOKEN, LoopbackStack
from passerelle_demo.synthetic import adt, patients

CHROMIUM = "/usr/bin/chromium"
VIEWPORT: ViewportSize = {"width": 1280, "height": 1000}
PACE_S = 0.08
"""Between two messages: a steady stream (about 12 a second), not one burst."""
EVENTS = ("A01", "A01", "A08", "A08", "A03")


def send_traffic(stack: LoopbackStack, client: MllpClient, count: int) -> list[str]:
    """Send ``count`` ADT messages (the third refused by the FHIR subscriber); their control ids."""
    rng = random.Random(2026)
    people = patients(max(1, count // 3), seed=2026)
    stack.fhir.latency_s = 0.02  # a national record that takes its time, as real ones do
    control_ids = []
    for n in range(count):
        if n == 2:
            stack.fhir.fail_next(1, "reject")
        control_id = f"DEMO-{n:04d}"
        text = adt(rng.choice(people), rng.choice(EVENTS), control_id=control_id)
        code = read_ack(client.send(text.encode())).code
        if code != "AA":
            msg = f"{control_id} was answered {code}, not AA; logs:\n{stack.logs()}"
            raise RuntimeError(msg)
        control_ids.append(control_id)
        time.sleep(PACE_S)
    return control_ids


def settled(stack: LoopbackStack, control_id: str) -> bool:
    """The message is in the store with every subscriber's state final."""
    with stack.api_client() as api:
        items = api.get("/api/messages", params={"control_id": control_id}).json()["items"]
    return bool(items) and all(d["state"] == "delivered" for d in items[0]["deliveries"])


def log_in(page: Page) -> None:
    page.goto("/console/login?next=%2Fconsole%2F")
    page.get_by_label("Token", exact=True).fill(API_TOKEN)
    page.get_by_role("button", name="Log in with the token").click()
    expect(page.get_by_role("heading", name="Overview", level=1)).to_be_visible()


def photograph(stack: LoopbackStack, out: Path, traced: str) -> None:
    """The overview (live figures, one peer connected) and the trace of ``traced``."""
    # ``traced`` is sent last: its trace shows one delivered attempt per subscriber.
    assert stack.settings is not None
    base = f"http://127.0.0.1:{stack.settings.http_port}"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        context = browser.new_context(base_url=base, viewport=VIEWPORT, locale="en-GB")
        page = context.new_page()
        page.set_default_timeout(30_000)
        log_in(page)
        adapter = page.locator('#inbound tr[data-id="chu-rabat-adt"]')
        expect(adapter.locator('td[data-field="peers"]')).to_have_text("1")
        dmp = page.locator('#subscribers tr[data-id="dmp-national"]')
        expect(dmp.locator('td[data-field="p95"]')).not_to_have_text("—")
        # Two polls apart, the page has a received rate to show.
        expect(adapter.locator('td[data-field="received_rate"]')).to_contain_text("/s")
        page.screenshot(path=out / "console-overview.png")
        page.goto("/console/messages?control_id=" + traced)
        page.locator("#results tbody a").first.click()
        expect(page.get_by_role("heading", level=1)).to_contain_text(traced)
        page.get_by_text("Raw message as received").click()
        expect(page.locator('article[data-subscriber="dmp-national"] tbody tr')).to_have_count(1)
        # The whole page, the Bundle folded: received → mapped → each subscriber's attempts.
        page.screenshot(path=out / "console-trace.png", full_page=True)
        browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=120)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "img")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with (
        tempfile.TemporaryDirectory(prefix="passerelle-shots-") as root,
        LoopbackStack(Path(root), workers=2) as stack,
        MllpClient("127.0.0.1", stack.inbound_port, timeout=30) as client,
    ):
        control_ids = send_traffic(stack, client, args.messages)
        traced = control_ids[-1]
        if not wait_until(lambda: settled(stack, traced), timeout=120, interval=0.5):
            msg = f"{traced} was not delivered and stored in time; logs:\n{stack.logs()}"
            raise RuntimeError(msg)
        photograph(stack, args.out, traced)
    for name in ("console-overview.png", "console-trace.png"):
        path = args.out / name
        print(f"{path}: {path.stat().st_size // 1024} KB")


if __name__ == "__main__":
    main()
