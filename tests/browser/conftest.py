"""Browser tests: Playwright (the Python package) driving Debian's Chromium, headless, against
pytest-django's live server. No browser is downloaded: a missing /usr/bin/chromium (or
CHROMIUM_PATH) skips locally and FAILS under CI, like every other required service
(``scripts/ensure-browser.sh`` installs it)."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import _require

CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = Path(__file__).resolve().parents[2] / "artifacts" / "screenshots"
PASSWORD = "browser-test-pw"


@pytest.fixture(scope="module")
def browser(django_db_setup: Any) -> Iterator[Any]:
    """Chromium for one test module. Playwright's sync API keeps an asyncio loop in this
    thread while it lives, which Django takes for an async context: the ORM calls the tests
    make between two page actions are plain synchronous calls, so they are allowed for the
    module's duration only (the loop is gone before any other module runs)."""
    if not os.path.exists(CHROMIUM):
        _require(f"no Chromium at {CHROMIUM} (run scripts/ensure-browser.sh)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _require("the playwright package is not installed")
    with pytest.MonkeyPatch.context() as patch, sync_playwright() as playwright:
        patch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1360, "height": 900})
    context.set_default_timeout(20_000)
    page = context.new_page()
    yield page
    context.close()


@pytest.fixture
def login(live_server: Any, django_user_model: Any) -> Any:
    """``login(page, user=None)``: log in through the admin's login form (a superuser by
    default); returns the user."""

    def login(page: Any, user: Any = None) -> Any:
        if user is None:
            user = django_user_model.objects.create_superuser("root", password=PASSWORD)
        page.goto(f"{live_server.url}/admin/login/?next=/admin/")
        page.fill("#id_username", user.get_username())
        page.fill("#id_password", PASSWORD)
        page.click("input[type=submit]")
        page.wait_for_selector("#user-tools")
        return user

    return login


@pytest.fixture
def worker(settings: Any) -> Iterator[Any]:
    """``worker()`` starts a Worker (not in burst mode) in a thread; stopped at the end."""
    from container_manager.worker import Worker

    settings.CONTAINER_MANAGER = {
        **settings.CONTAINER_MANAGER,
        "POLL_INTERVAL": 0.1,
        "STOP_GRACE_SECONDS": 1,
    }
    running: list[tuple[Any, threading.Thread]] = []

    def start() -> Any:
        instance = Worker(concurrency=2, burst=False, poll_interval=0.1, shutdown_timeout=10)
        thread = threading.Thread(target=instance.run, name="browser-test-worker", daemon=True)
        thread.start()
        running.append((instance, thread))
        return instance

    yield start
    for instance, thread in running:
        instance.stop()
        thread.join(30)
        assert not thread.is_alive(), "the worker did not stop"


def screenshot(page: Any, name: str) -> Path:
    """Save a full-page screenshot as artifacts/screenshots/<name>.png."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
