"""Headless Chromium driven by Playwright, for pages that need clicks and typing; screenshots kept as artefacts.

The system Chromium is used (no browser download). Screenshots go to $SHELFSIGHT_ARTIFACTS, or
build/test-artifacts/ in the checkout, so they outlive the test's temporary folder.
"""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = Path(
    os.environ.get("SHELFSIGHT_ARTIFACTS", Path(__file__).resolve().parents[2] / "build" / "test-artifacts")
)


def artifact_dir(name: str) -> Path:
    folder = ARTIFACTS / name
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@contextmanager
def chromium_page(width: int = 1280, height: int = 800) -> Iterator[Any]:
    """A Playwright page in headless Chromium; skips the test when Chromium or Playwright is missing."""
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (apt install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.set_default_timeout(30_000)  # an upper bound against a hang on a loaded machine, not a speed check
            yield page
        finally:
            browser.close()
