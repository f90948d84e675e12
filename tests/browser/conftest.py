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

import pytest
from harness import Cluster

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


def spki_hashes(cert_paths) -> str:
    """Chromium's ``--ignore-certificate-errors-spki-list`` value: these certificates, and no others."""
    import base64
    import hashlib

    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    hashes = []
    for path in cert_paths:
        with open(path, "rb") as f:
            key = x509.load_pem_x509_certificate(f.read()).public_key()
        spki = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        hashes.append(base64.b64encode(hashlib.sha256(spki).digest()).decode())
    return ",".join(hashes)


@pytest.fixture
def browser(chromium_binaries, tmp_path, cluster_pki):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver_path = chromium_binaries
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    # The dashboard over HTTPS: the browser trusts exactly the test nodes' certificates
    # (a campus installs its CA in the browsers instead).
    nodes = [cluster_pki.files(f"node-{i}").cert for i in range(1, 10)]
    options.add_argument(f"--ignore-certificate-errors-spki-list={spki_hashes(nodes)}")
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


@pytest.fixture
def cluster(tmp_path, cluster_pki):
    (tmp_path / "cluster").mkdir()
    cluster = Cluster(tmp_path / "cluster", interval=0.2, pki=cluster_pki.dir)
    try:
        yield cluster
    finally:
        cluster.stop_all()
