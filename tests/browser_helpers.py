"""Debian's Chromium as the browser tests drive it: headless through Debian's chromedriver,
a profile of its own, the console in Chinese; an officer logging in; what the duty screen
shows. Tests open it through conftest's `chromium` fixture, which quits it at the end."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from centre_helpers import PASSWORD, Centre
from conftest import wait_until
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
needs_chromium = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="Debian chromium + chromium-driver missing: run bin/setup")

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run",
         "--disable-dev-shm-usage", "--window-size=1400,1000", "--lang=zh-CN")


def browser(profile: Path, *flags: str) -> webdriver.Chrome:
    """Chromium with its profile in `profile`; `flags` are added to the usual ones (a fake
    microphone, say)."""
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM or ""
    for flag in (*FLAGS, f"--user-data-dir={profile}", *flags):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(CHROMEDRIVER or ""), options=options)


def login(driver: webdriver.Chrome, centre: Centre, user: str) -> None:
    """Log in as `user` (a role of centre_helpers.ROLES) on the login page; returns on
    the duty screen."""
    driver.get(f"{centre.url}/login/")
    driver.find_element(By.ID, "id_username").send_keys(user)
    driver.find_element(By.ID, "id_password").send_keys(PASSWORD)
    driver.find_element(By.CSS_SELECTOR, "form.login button").click()
    wait_until(lambda: driver.find_elements(By.ID, "cards"), 15, "duty screen")


def card_state(driver: webdriver.Chrome) -> str | None:
    """The first alarm card's state on the duty screen, or None without a card."""
    return driver.execute_script(  # type: ignore[no-any-return]
        "var c = document.querySelector('#cards .card'); return c ? c.dataset.state : null;")
