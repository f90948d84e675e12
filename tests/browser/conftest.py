"""Headless Chromium for the dashboard test (Debian packages chromium + chromium-driver).

Missing packages are installed with apt-get (the test machines run as root);
the test fails, naming the reason, only when that fails (never a silent skip).
The machine has no network besides loopback, so Chromium starts with every
background service off and a fresh profile.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,1000",
)


def _binaries():
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if driver is None and os.path.exists("/usr/bin/chromedriver"):
        driver = "/usr/bin/chromedriver"
    return chromium, driver


def _install_chromium() -> str | None:
    """apt-get install chromium chromium-driver; None on success, else why not."""
    if shutil.which("apt-get") is None:
        return "apt-get is not available"
    if os.geteuid() != 0:
        return "not root, cannot apt-get install"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update"], ["apt-get", "install", "-y", "chromium", "chromium-driver"]):
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=900, env=env)
        except subprocess.TimeoutExpired:
            return f"{' '.join(command)} timed out"
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
            return f"{' '.join(command)} failed: {tail[0]}"
    return None


def _no_browser(reason: str):
    """No browser: fail, naming why.  A skipped dashboard test would hide that the
    dashboard was never checked in a real browser."""
    message = f"BROWSER TEST NOT RUN: {reason}"
    print(message, file=sys.stderr)
    pytest.fail(message, pytrace=False)


@pytest.fixture(scope="session")
def chromium_binaries():
    if importlib.util.find_spec("selenium") is None:
        _no_browser("selenium is not installed (pip install -e '.[test]')")
    chromium, driver = _binaries()
    if not (chromium and driver):
        problem = _install_chromium()
        chromium, driver = _binaries()
        if not (chromium and driver):
            why = problem or "not found after install"
            _no_browser(f"chromium/chromium-driver missing and could not be installed ({why})")
    return chromium, driver


@pytest.fixture
def browser(chromium_binaries, tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver_path = chromium_binaries
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    profile = tmp_path / "chromium-profile"
    profile.mkdir()
    options.add_argument(f"--user-data-dir={profile}")
    service = Service(executable_path=driver_path, log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(20)
    try:
        yield driver
    finally:
        driver.quit()


def process_harness():
    """tests/process/conftest.py as a module (its Cluster class), loaded once."""
    name = "parkd_process_harness"
    if name not in sys.modules:
        path = Path(__file__).resolve().parent.parent / "process" / "conftest.py"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules[name] = module
    return sys.modules[name]


@pytest.fixture
def cluster(tmp_path):
    (tmp_path / "cluster").mkdir()
    cluster = process_harness().Cluster(tmp_path / "cluster", interval=0.2)
    try:
        yield cluster
    finally:
        cluster.stop_all()
