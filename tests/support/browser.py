"""A real browser for tests: Playwright (Python) driving Debian's Chromium (`apt-get install chromium`, in
scripts/install.sh). Playwright never downloads a browser of its own here: it is launched with the system
binary, headless, and with background networking off so it fetches nothing from the internet.

`chromium` is one browser for the whole test session; tests open a fresh `BrowserContext` each (their own
cookies), so starting Chromium is paid once.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import ci_guard

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]


@pytest.fixture(scope="session")
def chromium() -> Iterator:
    if not CHROMIUM.exists():
        message = f"{CHROMIUM} is missing: run scripts/install.sh (apt-get install chromium)"
        if ci_guard.on_ci():
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=ARGS)
        try:
            yield browser
        finally:
            browser.close()
