"""Debian's headless Chromium driven by Selenium through Debian's chromedriver (nothing downloads a browser)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
# No traffic beyond the page's own agent: no QUIC, no background fetches, no component updates, no sync.
FLAGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
ARTIFACTS = Path(os.environ.get("PEERSERVE_ARTIFACTS", Path(__file__).resolve().parent.parent / "test-artifacts"))


def need_browser() -> None:
    """Skip without chromium and chromedriver; fail instead where the real parts must be (root, CI)."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("the selenium package")
    if missing:
        if os.environ.get("PEERSERVE_REQUIRE_DOCKER") == "1":
            pytest.fail(f"missing {', '.join(missing)} (scripts/bootstrap.sh --test installs them)")
        pytest.skip(f"missing {', '.join(missing)}")


@contextmanager
def browser(width: int = 1100, height: int = 900) -> Iterator[Any]:
    """A fresh Chromium (its own --user-data-dir) that records console messages; quit afterwards."""
    need_browser()
    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager must never go looking for a driver
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="peerserve-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in [*FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}"]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def console_errors(driver: Any) -> list[str]:
    """Console errors and uncaught exceptions since the last call."""
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def dump_dom(url: str, budget_ms: int = 5000) -> str:
    """The DOM after ``budget_ms`` of virtual time (chromium --dump-dom), as the issue's render check."""
    need_browser()
    with tempfile.TemporaryDirectory(prefix="peerserve-chromium-") as profile:
        out = subprocess.run(
            [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", f"--virtual-time-budget={budget_ms}", "--dump-dom", url],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    return out.stdout


def save_screenshot(driver: Any, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    driver.save_screenshot(str(path))
    return path
