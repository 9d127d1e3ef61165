"""Browser tests of the dashboard: Debian's Chromium driven by Playwright against the
live test stack (API and worker processes, Postgres, Redis), with real runs.

Every page is loaded through ``Dashboard``, which fails a test on a script error or a
request that leaves the machine (the dashboard must work offline), and saves a
screenshot of each test's last page under ``test-artifacts/browser/``.
"""

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Browser, Page, Playwright, sync_playwright

from app.client import MixlabClient
from tests.conftest import Access, Stack

CHROMIUM = os.environ.get("MIXLAB_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "browser"
# headless, no GPU, nothing phoning home
CHROMIUM_ARGS = ["--no-sandbox", "--headless=new", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--mute-audio"]
LOCAL_HOSTS = {"127.0.0.1", "localhost"}


# Package scope: the sync API keeps an event loop running in this thread until it
# stops, and asyncio.run() in the tests after this package would fail beside it.
@pytest.fixture(scope="package")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="package")
def browser(playwright: Playwright) -> Iterator[Browser]:
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"no Chromium at {CHROMIUM}: scripts/setup.sh installs Debian's chromium "
                    "as root ('apt-get install chromium'); or set MIXLAB_CHROMIUM")
    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    yield browser
    browser.close()


class Dashboard:
    """A page of the dashboard with the problems it met: script errors, failed
    requests, requests to other hosts."""

    def __init__(self, page: Page, base_url: str) -> None:
        self.page = page
        self.base_url = base_url
        self.seen: list[str] = []
        self.expected: list[str] = []
        page.on("pageerror", lambda error: self.seen.append(f"script error: {error}"))
        page.on("console", self._console)
        page.route("**/*", self._only_local)

    def _console(self, message: Any) -> None:
        # an aborted fetch (the user left the page) is not a problem
        if message.type == "error" and "AbortError" not in message.text:
            self.seen.append(f"console: {message.text}")

    def _only_local(self, route: Any) -> None:
        host = urlsplit(route.request.url).hostname
        if host in LOCAL_HOSTS or route.request.url.startswith(("blob:", "data:")):
            route.continue_()
        else:
            self.seen.append(f"request to another host: {route.request.url}")
            route.abort()

    def expect_problem(self, *parts: str) -> None:
        """A message the test causes on purpose: one holding every part is not a problem."""
        self.expected.append("\0".join(parts))

    @property
    def problems(self) -> list[str]:
        return [seen for seen in self.seen
                if not any(all(part in seen for part in expected.split("\0"))
                           for expected in self.expected)]

    def open(self, path: str) -> Page:
        self.page.goto(f"{self.base_url}{path}")
        return self.page

    def sign_in(self, key: str) -> None:
        """Enter the key in the form the dashboard shows when the API asks for one."""
        # the requests refused before the key was given are the reason the form shows
        self.expect_problem("401 (Unauthorized)")
        self.page.locator("#key-input").fill(key)
        self.page.locator("#key-form button").click()
        self.page.locator("#key-form").wait_for(state="hidden")

    def points(self, chart_id: str) -> int:
        """Points drawn on a Plotly chart, all its traces together."""
        return int(self.page.evaluate(
            "(id) => (document.getElementById(id).data || [])"
            ".reduce((n, trace) => n + (trace.x ? trace.x.length : 0), 0)", chart_id))


@pytest.fixture
def dashboard(browser: Browser, stack: Stack, access: Access,
              request: pytest.FixtureRequest) -> Iterator[Dashboard]:
    context = browser.new_context(viewport={"width": 1360, "height": 900})
    context.set_default_timeout(30_000)
    board = Dashboard(context.new_page(), stack.base_url)
    board.open("/ui")
    board.sign_in(access.key)
    yield board
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    board.page.screenshot(path=str(ARTIFACTS / f"{request.node.name}.png"), full_page=True)
    context.close()
    assert not board.problems, board.problems


@pytest.fixture(scope="session")
def mx(stack: Stack, access: Access) -> Iterator[MixlabClient]:
    with MixlabClient(stack.base_url, api_key=access.key) as client:
        yield client
