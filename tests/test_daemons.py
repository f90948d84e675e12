"""Real twistd processes: start, listen, log, and stop cleanly (issue 2)."""

import os
import signal
import socket
import subprocess

import pytest
from twisted.logger import eventsFromJSONLogFile

from parkd.launcher import TWISTD, camera_daemon, node_daemon, wait_for, wait_listening

pytestmark = pytest.mark.process


def run_twistd(*args, cwd=None):
    return subprocess.run([TWISTD, *args], capture_output=True, text=True, timeout=60, cwd=cwd)


def test_twistd_lists_the_plugin_and_documents_both_commands():
    assert "parkd" in run_twistd("--help").stdout
    node_help = run_twistd("parkd", "node", "--help")
    camera_help = run_twistd("parkd", "camera", "--help")
    assert node_help.returncode == 0 and "--listen-client=" in node_help.stdout
    assert camera_help.returncode == 0 and "--camera-id=" in camera_help.stdout


def test_node_listens_on_three_ports_and_stops_on_sigterm(cluster_config, workdir):
    path, config = cluster_config
    node = node_daemon(path, 1, workdir).start()
    try:
        wait_listening(config, 1, node)
        http = config.member(1).http
        with socket.create_connection((http.host, http.port), timeout=5) as s:
            s.sendall(b"GET /api/v1/cluster HTTP/1.0\r\n\r\n")
            assert b"200" in s.recv(100)
    finally:
        node.signal(signal.SIGTERM)
        code = node.wait(15)
    assert code == -signal.SIGTERM  # twistd re-raises the signal it stopped for
    log = node.log_text()
    assert "listeners and database closed" in log and "Traceback" not in log
    assert os.path.exists(os.path.join(workdir, "node-1", "node.db"))
    with open(node.json_path) as f:
        events = list(eventsFromJSONLogFile(f))
    assert any("node_id" in e and "started" in e.get("log_format", "") for e in events)


def test_camera_connects_and_says_hello(cluster_config, workdir):
    path, config = cluster_config
    node = node_daemon(path, 1, workdir).start()
    camera = camera_daemon(path, 7, "north", workdir, "--cluster", str(config.member(1).client)).start()
    try:
        wait_for(lambda: "camera 7 connected (lot north)" in node.log_text(), 20, "the node to log the camera's Hello")
    finally:
        assert camera.stop() == -signal.SIGTERM
        assert node.stop() == -signal.SIGTERM
    assert "Traceback" not in camera.log_text() + node.log_text()


def one_line_failure(result):
    assert result.returncode != 0
    assert "Traceback" not in result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_bad_config_prints_one_line(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[[node]]\nid = 1\nraft = "127.0.0.1:1"\nclient = "127.0.0.1:2"\nhttp = "nowhere"\n')
    line = one_line_failure(run_twistd("-n", "--pidfile=", "parkd", "node", "--config", str(bad), "--id", "1"))
    assert "node[0].http: bad address 'nowhere'" in line


def test_port_in_use_prints_one_line(cluster_config, tmp_path):
    path, config = cluster_config
    client = config.member(1).client
    with socket.socket() as busy:
        busy.bind((client.host, client.port))
        busy.listen()
        result = run_twistd(
            "-n", "--pidfile=", "--logfile", str(tmp_path / "log"),
            "parkd", "node", "--config", path, "--id", "1", "--data-dir", str(tmp_path / "d"),
        )  # fmt: skip
    line = one_line_failure(result)
    assert "client port: cannot listen on" in line and str(client.port) in line


def test_data_dir_that_is_a_file_prints_one_line(cluster_config, tmp_path):
    path, _ = cluster_config
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    result = run_twistd(
        "-n", "--pidfile=", "--logfile", str(tmp_path / "log"),
        "parkd", "node", "--config", path, "--id", "1", "--data-dir", str(blocker / "node"),
    )  # fmt: skip
    assert "--data-dir: cannot create" in one_line_failure(result)
