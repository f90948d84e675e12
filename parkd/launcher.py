"""Start and stop parkd daemons as real ``twistd`` processes.

Used by ``make demo`` (:mod:`parkd.demo`) and by the process-level tests, so
both run the daemons exactly as an operator would.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field

from parkd.config import Config


# The twistd script of the running interpreter's environment (e.g. .venv/bin/twistd).
TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")


class Timeout(AssertionError):
    """A bounded wait ran out."""


def wait_for(predicate, timeout: float, what: str, interval: float = 0.05):
    """Poll ``predicate`` until it returns something truthy, at most ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise Timeout(f"timed out after {timeout:.1f}s waiting for {what}")
        time.sleep(interval)  # bounded-poll


def port_open(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """Ports the kernel just handed out (and released) on ``host``."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind((host, 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _proc_stat(pid: int) -> list[str]:
    """The fields of /proc/<pid>/stat after the command name (field 3, the state, first)."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far, from /proc/<pid>/stat."""
    fields = _proc_stat(pid)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_state(pid: int) -> str:
    """The process's state letter from /proc/<pid>/stat: R, S, D, T (stopped), Z …"""
    return _proc_stat(pid)[0]


@dataclass
class Daemon:
    """One ``twistd -n parkd …`` process with its log files."""

    name: str
    args: list[str]
    workdir: str
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen | None = None

    @property
    def log_path(self) -> str:
        return os.path.join(self.workdir, f"{self.name}.log")

    @property
    def json_path(self) -> str:
        return os.path.join(self.workdir, f"{self.name}.json")

    @property
    def out_path(self) -> str:
        """stdout and stderr: where start-up errors (one line) go."""
        return os.path.join(self.workdir, f"{self.name}.out")

    def command(self) -> list[str]:
        return [
            TWISTD, "--nodaemon", "--pidfile=", f"--logfile={self.log_path}",
            "parkd", *self.args, f"--log-json={self.json_path}",
        ]  # fmt: skip

    def start(self) -> Daemon:
        os.makedirs(self.workdir, exist_ok=True)
        with open(self.out_path, "ab") as out:
            self.proc = subprocess.Popen(
                self.command(),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **self.env},
                start_new_session=True,  # Ctrl-C in a terminal reaches the launcher only
            )
        return self

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def cpu_seconds(self) -> float:
        """User + system CPU seconds the process has used so far (benchmarks)."""
        return cpu_seconds(self.proc.pid)

    def signal(self, sig: int) -> None:
        if self.alive():
            os.kill(self.proc.pid, sig)

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout)

    def stop(self, timeout: float = 15.0, signalled: bool = False) -> int | None:
        """SIGTERM (unless ``signalled`` already), then SIGKILL if it has not exited within ``timeout``."""
        if self.proc is None:
            return None
        if not signalled:
            self.signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
            return self.proc.wait(5)

    def kill(self) -> None:
        """kill -9, as a crash."""
        self.signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(5)

    def log_text(self) -> str:
        text = ""
        for path in (self.out_path, self.log_path):
            if os.path.exists(path):
                with open(path, encoding="utf-8", errors="replace") as f:
                    text += f.read()
        return text


def node_daemon(config_path: str, node_id: int, workdir: str, *extra: str) -> Daemon:
    data_dir = os.path.join(workdir, f"node-{node_id}")
    args = ["node", "--config", config_path, "--id", str(node_id), "--data-dir", data_dir, *extra]
    return Daemon(f"node-{node_id}", args, workdir)


def camera_daemon(config_path: str, camera_id: int, lot: str, workdir: str, *extra: str) -> Daemon:
    state_dir = os.path.join(workdir, f"camera-{camera_id}")
    args = ["camera", "--config", config_path, "--camera-id", str(camera_id), "--lot", lot]
    return Daemon(f"camera-{camera_id}", [*args, "--state-dir", state_dir, *extra], workdir)


def write_config(
    path: str,
    nodes: int = 3,
    lots: dict[str, int] | None = None,
    election_timeout_ms: int = 1000,
    heartbeat_ms: int = 100,
    host: str = "127.0.0.1",
    camera_interval: float | None = None,
    pki: str | None = None,
) -> str:
    """Write a loopback cluster config with fresh ports (for tests).

    With ``pki`` (a directory :func:`make_pki` filled) every port speaks TLS;
    without, the config says ``insecure = true``.
    """
    ports = free_ports(3 * nodes, host)
    lines = [
        "[cluster]",
        f"election_timeout_ms = {election_timeout_ms}",
        f"heartbeat_ms = {heartbeat_ms}",
    ]
    if pki is None:
        lines.append("insecure = true")
    for i in range(nodes):
        raft, client, http = ports[3 * i : 3 * i + 3]
        lines += [
            "",
            "[[node]]",
            f"id = {i + 1}",
            f'raft = "{host}:{raft}"',
            f'client = "{host}:{client}"',
            f'http = "{host}:{http}"',
        ]
    for lot, capacity in (lots or {"north": 100}).items():
        lines += ["", "[[lot]]", f'id = "{lot}"', f"capacity = {capacity}"]
    if camera_interval is not None:
        lines += ["", "[camera]", f"interval = {camera_interval}", "ack_timeout = 1.0"]
    if pki is not None:
        pki = os.path.abspath(pki)
        lines += ["", "[tls]", f'ca = "{pki}/ca.pem"', f'cert = "{pki}/node-{{id}}.pem"', f'key = "{pki}/node-{{id}}.key"',
                  f'crl = "{pki}/crl.pem"']  # fmt: skip
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def make_pki(directory: str, nodes=range(1, 6), cameras=range(1, 21), operators=("admin",)) -> str:
    """A cluster's PKI in ``directory`` (``parkctl pki`` files): the CA once, then what is missing.

    For tests, benchmarks and ``make demo``; an operator runs ``parkctl pki`` instead.
    """
    from parkd.trust import Identity, pki  # cryptography: imported only by those that make one

    if not os.path.exists(os.path.join(directory, "ca.pem")):
        pki.init(directory)
    wanted = [Identity("node", i) for i in nodes] + [Identity("camera", i) for i in cameras]
    wanted += [Identity("operator", name) for name in operators]
    missing = [who for who in wanted if not os.path.exists(pki.cert_path(directory, who))]
    if missing:
        pki.issue(directory, missing)
    return directory


def node_url(config: Config, node_id: int, path: str) -> str:
    """The URL of ``path`` on a node's HTTP port: HTTPS when the config has a ``[tls]`` table."""
    scheme = "https" if config.tls is not None else "http"
    return f"{scheme}://{config.member(node_id).http}{path}"


@functools.lru_cache(maxsize=8)
def _https_context(ca: str) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=ca)


def http_request(config: Config, node_id: int, path: str, timeout: float = 2.0, context=None):
    """(status, headers, body) of a GET to a node, whatever the status; OSError if it does not answer.

    HTTPS with the config's CA (``context`` to present a client certificate too).
    """
    if context is None and config.tls is not None:
        context = _https_context(config.tls.ca)
    try:
        with urllib.request.urlopen(node_url(config, node_id, path), timeout=timeout, context=context) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def get_json(config: Config, node_id: int, path: str, timeout: float = 2.0):
    """A JSON document from a node (a 200 answer), or None if it does not answer or fails."""
    try:
        status, _, body = http_request(config, node_id, path, timeout)
        return json.loads(body) if status == 200 else None
    except (OSError, ValueError):
        return None


def wait_listening(config: Config, node_id: int, daemon: Daemon, timeout: float = 15.0) -> None:
    """Wait until the node listens on its three ports; fail early if it exits."""
    member = config.member(node_id)
    for address in (member.raft, member.client, member.http):

        def listening():
            if not daemon.alive():
                raise Timeout(f"{daemon.name} exited with {daemon.proc.returncode}: {daemon.log_text()[-500:]}")
            return port_open(address.host, address.port)

        wait_for(listening, timeout, f"node {node_id} on {address}")
