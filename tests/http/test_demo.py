"""``make demo`` (python -m parkd.demo): URLs and a status table once a leader exists; Ctrl-C leaves nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

import pytest

from parkd.config import load_config
from parkd.launcher import port_open, wait_for, write_config

pytestmark = [pytest.mark.process, pytest.mark.slow]


def processes_mentioning(text: str) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if text.encode() in f.read():
                        pids.append(int(entry))
            except OSError:
                pass
    return pids


def test_demo_prints_urls_and_status_and_stops_everything_on_ctrl_c(tmp_path):
    """Secure by default: the config names a PKI that is not there yet; the demo makes it."""
    pki = tmp_path / "pki"
    config_path = write_config(str(tmp_path / "parkd.toml"), nodes=3, lots={"north": 100, "south": 60},
                               election_timeout_ms=600, heartbeat_ms=50, pki=str(pki))  # fmt: skip
    config = load_config(config_path)
    workdir = str(tmp_path / "demo")
    demo = subprocess.Popen(
        [sys.executable, "-m", "parkd.demo", "--config", config_path, "--workdir", workdir, "--interval", "0.5"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(demo.stdout), daemon=True)
    reader.start()
    try:
        wait_for(lambda: any("Press Ctrl-C" in line for line in lines) or demo.poll() is not None, 60, "the demo")
        out = "".join(lines)
        assert demo.poll() is None, out
        for member in config.members:
            assert f"node {member.id}: dashboard https://{member.http}/" in out
        assert f"making a PKI for the demo in {pki}/" in out and (pki / "operator-admin.key").exists()
        assert "export PARKD_TLS_CA=" in out and "curl --cacert" in out
        assert "(leader)" in out
        assert "NODE  HTTP" in out and "leader: node " in out
        assert len(set(processes_mentioning(workdir)) - {demo.pid}) == 5  # 3 nodes + 2 cameras
    finally:
        demo.send_signal(signal.SIGINT)  # Ctrl-C
        code = demo.wait(60)
        reader.join(10)
    out = "".join(lines)
    assert code == 0, out
    assert "stopping" in out and out.count(" stopped (exit ") == 5
    assert processes_mentioning(workdir) == []
    assert not any(port_open(m.http.host, m.http.port) for m in config.members)
