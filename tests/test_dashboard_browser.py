"""The dashboard in a real browser: Debian's headless Chromium, driven by Playwright, watches a conversation
submitted over gRPC arrive on the page without a reload.

Playwright's own browser downloads are never used: it launches /usr/bin/chromium (.ci/run installs it).
The screenshot lands in test-artifacts/dashboard.png; UPDATE_DOCS_SCREENSHOT=1 also refreshes
docs/dashboard.png, the one the README shows.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import ConsoleMessage, Page, expect, sync_playwright

from tests.conftest import ROOT, Client, item

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WAIT_MS = 20_000
ARTIFACTS = ROOT / "test-artifacts"

# The MemOS example's dialogue (examples/mem_scheduler, Apache-2.0), then its questions with their answers.
DIALOGUE = [
    {"role": "user", "content": "I just adopted a golden retriever puppy yesterday."},
    {"role": "assistant", "content": "Congratulations! What did you name your new puppy?"},
    {"role": "user", "content": "His name is Max. I live near Central Park in New York where we'll walk daily."},
    {"role": "assistant", "content": "Max will love those walks! Any favorite treats for him?"},
    {"role": "user", "content": "He loves peanut butter biscuits. Personally, I'm allergic to nuts though."},
    {"role": "assistant", "content": "Good to know about your allergy. I'll note that."},
]
# Enough other memories that the pet facts drop out of the 20-slot working memory and queries bring them back.
FILLER = [{"role": "assistant", "content": f"Weather note {n}: it was sunny with {n} clouds."} for n in range(22)]
TRIP = [
    {"role": "user", "content": "I'm flying to Lisbon on the 14th for a week."},
    {"role": "user", "content": "Book a table near the river in Lisbon for Friday."},
]
QUESTIONS = [
    ("What's my dog's name again?", "Your dog is named Max."),
    ("What treats does Max like?", "He loves peanut butter biscuits."),
    ("Where did I say I live?", "You live near Central Park in New York."),
]


def _launch_args() -> dict[str, Any]:
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing: .ci/run must install Debian's chromium")
        pytest.skip("Debian's chromium is not installed (apt-get install -y chromium)")
    return {"executable_path": CHROMIUM, "headless": True, "args": CHROMIUM_ARGS}


def _ask(client: Client, question: str, answer: str, task: str) -> None:
    client.session([item(label="query", content=question, task_id=task)], [item(label="answer", content=answer)])


def test_page_shows_memory_moving_live(make_server: Any) -> None:
    server, client = make_server(web={"enabled": True, "address": "127.0.0.1:0"})
    problems: list[str] = []

    def console(message: ConsoleMessage) -> None:
        if message.type == "error":
            problems.append(message.text)

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(**_launch_args())
        try:
            page: Page = browser.new_page(viewport={"width": 1440, "height": 1000})
            page.on("pageerror", lambda error: problems.append(str(error)))
            page.on("console", console)
            page.goto(server.web.url)
            expect(page.locator("#connection")).to_have_attribute("data-state", "live", timeout=WAIT_MS)
            expect(page.locator("#cubes")).to_contain_text("No cube yet")
            page.evaluate("window.sameDocument = true")  # gone if anything reloads the page

            client.session([item(label="add", content=json.dumps(DIALOGUE + FILLER), task_id="pets")])
            _ask(client, *QUESTIONS[0], task="q1")

            # The cube appears in the list and is opened; the query moved Max back into working memory.
            expect(page.locator("#cubes .cube.selected")).to_contain_text("c1", timeout=WAIT_MS)
            working = page.locator("#working tbody tr")
            expect(working.filter(has_text="His name is Max")).to_have_count(1, timeout=WAIT_MS)
            expect(working).to_have_count(20)
            expect(page.locator('#partitions [data-type="WorkingMemory"]')).to_contain_text("20 / 20")
            expect(page.locator('#partitions [data-type="UserMemory"]')).to_contain_text("3 / 10,000")
            feed = page.locator("#feed tbody tr")
            expect(feed.filter(has_text="[User] What's my dog's name again?")).to_have_count(1, timeout=WAIT_MS)
            moved = page.locator('#feed tbody tr[data-label="scheduleMemory"]').filter(has_text="His name is Max")
            expect(moved.first).to_contain_text("What's my dog's name again?")  # the message that caused it
            expect(page.locator("#query-window")).to_contain_text("What's my dog's name again?")
            expect(page.locator("#keywords")).to_contain_text("dog")

            # Later messages arrive on the open page too.
            for n, (question, answer) in enumerate(QUESTIONS[1:], 2):
                _ask(client, question, answer, task=f"q{n}")
            expect(feed.filter(has_text="[User] Where did I say I live?")).to_have_count(1, timeout=WAIT_MS)
            expect(feed.filter(has_text="[Assistant] You live near Central Park")).to_have_count(1, timeout=WAIT_MS)
            client.wait_idle("u1")
            # The page shows exactly the working memory GetMemory returns, in its order.
            expect(page.locator("#working tbody tr .mem-text")).to_have_text(client.working_texts(), timeout=WAIT_MS)
            expect(page.locator("#cube-stats")).to_contain_text("3 queries", timeout=WAIT_MS)
            expect(page.locator("#latency-chart .u-legend")).to_contain_text("query")
            expect(page.locator("#fill-chart .u-legend")).to_contain_text("Working")

            # Filtering by label hides the other rows; "all" brings them back.
            page.locator('#label-filter .chip[data-label="addMessage"]').click()
            expect(page.locator('#feed tbody tr:not([data-label="addMessage"])')).to_have_count(0)
            expect(feed).to_have_count(6)
            page.locator("#label-filter .chip", has_text="all").click()
            expect(page.locator('#feed tbody tr[data-label="addMemory"]')).not_to_have_count(0)

            # Another user's cube joins the list; opening it replays its history, and back again.
            client.session([item(user="u2", cube="travel", label="add", content=json.dumps(TRIP))])
            expect(page.locator("#cubes .user")).to_have_count(2, timeout=WAIT_MS)
            page.locator('#cubes .cube[data-cube="travel"]').click()
            expect(page.locator("#cube-title")).to_contain_text("u2 / travel")
            expect(feed.filter(has_text="Lisbon")).to_have_count(2, timeout=WAIT_MS)
            expect(page.locator("#query-window")).to_contain_text("No query yet")
            page.locator('#cubes .cube[data-cube="c1"]').click()
            expect(feed.filter(has_text="[User] Where did I say I live?")).to_have_count(1, timeout=WAIT_MS)
            expect(page.locator("#working tbody tr .mem-text")).to_have_text(client.working_texts(), timeout=WAIT_MS)

            assert page.evaluate("window.sameDocument") is True
            _screenshot(page)
            assert not problems, problems
        finally:
            browser.close()


def _screenshot(page: Page) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / "dashboard.png"
    page.evaluate("document.querySelectorAll('tr.fresh').forEach(r => r.classList.remove('fresh'))")
    page.screenshot(path=path, full_page=True)
    if os.environ.get("UPDATE_DOCS_SCREENSHOT") == "1":
        shutil.copyfile(path, ROOT / "docs" / "dashboard.png")
