"""etcd, 3 members on loopback, measured for comparison with parkd in the same run.

Installs etcd when it is missing (Debian ``etcd-server`` + ``etcd-client``
with apt-get, as tests/browser installs Chromium) and reports its version.
Starts a fresh 3-member cluster on 127.0.0.1 with etcd's defaults (heartbeat
100 ms, election 1000 ms, WAL fsynced before each ack), data dirs under
``--workdir``, and measures it with the small Python client of
benchmarks/etcd_client.py (the v3 JSON gateway, one keep-alive connection):

1. sequential 100-byte puts to the leader: p50/p99 over ``PUTS`` puts (or 30 s),
   and the CPU the three members spent per put meanwhile (``put_cpu_ms``, from /proc);
2. linearizable reads of one key from the leader: p50/p99 with one client, and
   reads/s with 16 clients (threads, one connection each) for 10 s;
3. kill -9 of the leader: seconds until the first successful put of those
   submitted after the kill (a new put every 20 ms on the survivors, each on a
   fresh connection with a 2 s timeout); the killed member is restarted and
   caught up between runs; median of ``--failover-runs``;
4. with ``--pki DIR``: a second fresh cluster with TLS on its client and peer
   ports (mutual, the certificates ``parkctl pki`` wrote in DIR: node-1..3 for
   the members, camera-1 for the client; ECDSA P-256, as parkd's), and the
   sequential puts of 1. against it (``tls_put_*``), so that parkd's TLS rows
   have a like-for-like etcd figure beside etcd's plaintext one.

Stops only the members it started (by PID) and removes their data dirs.
Prints one JSON line.  When etcd cannot be installed it prints
``{"unavailable": REASON}`` and exits with status 3.

    python benchmarks/peer_etcd.py [--quick] [--workdir DIR] [--failover-runs N] [--pki DIR]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import resource
import shutil
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from etcd_client import Client, EtcdError, is_leader

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from parkd.camera.loadgen import percentile  # noqa: E402
from parkd.launcher import Daemon, free_ports, wait_for  # noqa: E402
from parkd.trust import TrustFiles, https_client_context  # noqa: E402

PACKAGES = ("etcd-server", "etcd-client")
OLDEST = (3, 4)  # the v3 JSON gateway answers on /v3/ (not /v3beta/) from etcd 3.4 on
UNAVAILABLE = 3  # exit status when etcd is missing and cannot be installed
FAILURES = (EtcdError, OSError, http.client.HTTPException)

PUTS = 1000
WARM_PUTS = 20  # before the measured ones
READS = 1000
READ_CLIENTS = 16
OP_SECONDS = 30.0  # bound on each sequential series
PROBE_INTERVAL = 0.02
PROBE_TIMEOUT = 2.0
FAILOVER_LIMIT = 30.0
MAX_PROBES = int(FAILOVER_LIMIT / PROBE_INTERVAL)


class Unavailable(Exception):
    """etcd is not installed and could not be installed, or is too old."""


# --- installing etcd ---------------------------------------------------------------------------


def apt_install(packages: tuple[str, ...]) -> str | None:
    """``apt-get install -y PACKAGES`` (after ``apt-get update``); None on success, else why not."""
    if shutil.which("apt-get") is None:
        return "apt-get is not available"
    if os.geteuid() != 0:
        return "not root, cannot apt-get install"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update"], ["apt-get", "install", "-y", *packages]):
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=900, env=env)
        except subprocess.TimeoutExpired:
            return f"{' '.join(command)} timed out"
        if done.returncode != 0:
            last = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
            return f"{' '.join(command)} failed: {last[0]}"
    return None


def parse_version(text: str, label: str) -> str | None:
    """``"3.4.23"`` from ``etcd --version`` (label "etcd Version") or ``etcdctl version`` ("etcdctl version")."""
    match = re.search(rf"^{re.escape(label)}:\s*(\d+\.\d+\.\d+)", text, re.MULTILINE | re.IGNORECASE)
    return match.group(1) if match else None


def go_version(text: str) -> str | None:
    """``"go1.19.8"`` from ``etcd --version``."""
    match = re.search(r"^Go Version:\s*(\S+)", text, re.MULTILINE)
    return match.group(1) if match else None


def ensure_etcd() -> dict:
    """The etcd binary and both versions, installing the packages first when missing; Unavailable if not."""
    problem = None
    if not (shutil.which("etcd") and shutil.which("etcdctl")):
        print(f"etcd: installing {' '.join(PACKAGES)} with apt-get …", file=sys.stderr, flush=True)
        problem = apt_install(PACKAGES)
    etcd, etcdctl = shutil.which("etcd"), shutil.which("etcdctl")
    if not (etcd and etcdctl):
        raise Unavailable(f"etcd/etcdctl missing and could not be installed ({problem or 'not found after install'})")
    server = subprocess.run([etcd, "--version"], capture_output=True, text=True, timeout=30).stdout
    client = subprocess.run([etcdctl, "version"], capture_output=True, text=True, timeout=30).stdout
    found = {"etcd": parse_version(server, "etcd Version"), "etcdctl": parse_version(client, "etcdctl version"),
             "go": go_version(server)}  # fmt: skip
    if found["etcd"] is None or tuple(int(n) for n in found["etcd"].split(".")[:2]) < OLDEST:
        raise Unavailable(f"{etcd} is version {found['etcd']}; the benchmark needs etcd 3.4 or later")
    return {"binary": etcd, **found}


# --- the cluster -------------------------------------------------------------------------------


class EtcdMember(Daemon):
    """One etcd process: the launcher's start, stop and kill -9 by PID, with etcd's command line as args."""

    def command(self) -> list[str]:
        return list(self.args)


def tls_flags(pki: str, member: int) -> list[str]:
    """etcd's flags for mutual TLS on its client and peer ports, as node-``member + 1`` of ``pki``."""
    files = TrustFiles.in_pki(pki, f"node-{member + 1}")
    own = ["--cert-file", files.cert, "--key-file", files.key, "--trusted-ca-file", files.ca, "--client-cert-auth"]
    peer = ["--peer-cert-file", files.cert, "--peer-key-file", files.key, "--peer-trusted-ca-file", files.ca,
            "--peer-client-cert-auth"]  # fmt: skip
    return own + peer


def client_tls(pki: str) -> ssl.SSLContext:
    """The benchmark client's side of that TLS: the cluster's CA, camera-1's certificate."""
    files = TrustFiles.in_pki(pki, "camera-1")
    return https_client_context(files.ca, files.cert, files.key)


class EtcdCluster:
    """A fresh 3-member etcd on 127.0.0.1; stops its members and removes their data dirs on exit.

    ``pki``: mutual TLS on the client and peer ports (:func:`tls_flags`); else plain HTTP.
    """

    def __init__(self, binary: str, workdir: str, size: int = 3, pki: str | None = None):
        self.workdir = workdir
        self.tls = client_tls(pki) if pki else None  # what a Client of this cluster speaks
        scheme = "https" if pki else "http"
        ports = free_ports(2 * size)
        self.clients = [f"127.0.0.1:{ports[2 * i]}" for i in range(size)]
        peers = [f"{scheme}://127.0.0.1:{ports[2 * i + 1]}" for i in range(size)]
        initial = ",".join(f"m{i}={peer}" for i, peer in enumerate(peers))
        token = f"parkd-bench-{os.getpid()}-{ports[0]}"
        self.data_dirs = [os.path.join(workdir, f"m{i}.etcd") for i in range(size)]
        self.members = [
            EtcdMember(f"etcd-m{i}", [
                binary, "--name", f"m{i}", "--data-dir", self.data_dirs[i], "--logger", "zap",
                "--listen-client-urls", f"{scheme}://{self.clients[i]}",
                "--advertise-client-urls", f"{scheme}://{self.clients[i]}",
                "--listen-peer-urls", peers[i], "--initial-advertise-peer-urls", peers[i],
                "--initial-cluster", initial, "--initial-cluster-token", token, "--initial-cluster-state", "new",
                *(tls_flags(pki, i) if pki else []),
            ], workdir)  # fmt: skip
            for i in range(size)
        ]

    def __enter__(self) -> EtcdCluster:
        os.makedirs(self.workdir, exist_ok=True)
        for member in self.members:
            member.start()
        return self

    def __exit__(self, *exc) -> None:
        for member in self.members:
            member.stop(timeout=10)
        for path in self.data_dirs:
            shutil.rmtree(path, ignore_errors=True)

    def ready(self, timeout: float = 30.0) -> int:
        """Wait until every member follows one leader and a put through each succeeds; the leader's index."""
        return wait_for(self._all_ready, timeout, "etcd: all members following one leader")[0]

    def _all_ready(self) -> tuple[int] | None:
        """(the leader's index,) when all members agree on it and take a put, else None."""
        leaders = set()
        leader = None
        for i, member in enumerate(self.members):
            if not member.alive():
                raise RuntimeError(f"etcd member m{i} exited: {member.log_text()[-500:]}")
            client = Client(self.clients[i], timeout=2.0, tls=self.tls)
            try:
                status = client.status()
                leaders.add(status.get("leader"))
                if is_leader(status):
                    leader = i
                client.put(b"/bench/ready", b"%d" % i)  # applied on this member: it has caught up
            except FAILURES:
                return None
            finally:
                client.close()
        return (leader,) if leader is not None and len(leaders) == 1 else None

    def cpu_seconds(self) -> float:
        """CPU seconds the running members used so far, summed (from /proc)."""
        return sum(member.cpu_seconds() for member in self.members if member.alive())

    def kill(self, i: int) -> None:
        self.members[i].kill()

    def restart(self, i: int) -> None:
        self.members[i].start()  # same data dir: it rejoins as the member it was


# --- measurements ------------------------------------------------------------------------------


def record(i: int) -> bytes:
    """A 100-byte value, the size of a camera frame record."""
    return (b"cam%02d|%010d|" % (i % 16, i)).ljust(100, b"r")


def timed(operation, count: int, seconds: float) -> tuple[list[float], int]:
    """Run ``operation(i)`` up to ``count`` times or ``seconds``; latencies (ms) of the ones that worked, failures."""
    latencies, failures = [], 0
    deadline = time.monotonic() + seconds
    for i in range(count):
        if time.monotonic() > deadline:
            break
        started = time.perf_counter()
        try:
            operation(i)
        except FAILURES:
            failures += 1
            continue
        latencies.append((time.perf_counter() - started) * 1000)
    return latencies, failures


def summary(prefix: str, latencies: list[float], failures: int) -> dict:
    return {
        f"{prefix}_p50_ms": round(percentile(latencies, 50), 2),
        f"{prefix}_p99_ms": round(percentile(latencies, 99), 2),
        f"{prefix}s": len(latencies),
        f"{prefix}_errors": failures,
    }


def measure_puts(cluster: EtcdCluster, leader: str, count: int, prefix: str = "put") -> dict:
    """Sequential puts to ``leader`` on one connection; with the CPU the members spent per put (``_cpu_ms``)."""
    client = Client(leader, tls=cluster.tls)
    cpu = cluster.cpu_seconds()
    try:
        timed(lambda i: client.put(b"/bench/warm/%d" % i, record(i)), WARM_PUTS, OP_SECONDS)
        results = summary(prefix, *timed(lambda i: client.put(b"/bench/put/%06d" % i, record(i)), count, OP_SECONDS))
    finally:
        client.close()
    puts = WARM_PUTS + results[f"{prefix}s"] + results[f"{prefix}_errors"]
    results[f"{prefix}_cpu_ms"] = round((cluster.cpu_seconds() - cpu) * 1000 / puts, 3)  # the 3 members, per put
    return results


def read_checked(client: Client, key: bytes, expected: bytes) -> None:
    value = client.get(key)
    if value != expected:
        raise EtcdError(f"read {key!r} returned {value!r}, expected {expected!r}")


def measure_reads(address: str, count: int) -> dict:
    client = Client(address)
    try:
        client.put(b"/bench/read", record(0))
        timed(lambda i: read_checked(client, b"/bench/read", record(0)), 20, OP_SECONDS)
        return summary("read", *timed(lambda i: read_checked(client, b"/bench/read", record(0)), count, OP_SECONDS))
    finally:
        client.close()


def measure_read_throughput(address: str, clients: int, seconds: float) -> dict:
    """``clients`` threads, one keep-alive connection each, reading one key for ``seconds``."""
    lock = threading.Lock()
    latencies, failures = [], [0]
    deadline = time.monotonic() + seconds

    def reader():
        client = Client(address)
        mine, failed = [], 0
        for _ in range(int(seconds * 10_000)):  # far above what one connection can do
            started = time.perf_counter()
            try:
                read_checked(client, b"/bench/read", record(0))
            except FAILURES:
                failed += 1
            else:
                if time.monotonic() <= deadline:
                    mine.append((time.perf_counter() - started) * 1000)
            if time.monotonic() > deadline:
                break
        client.close()
        with lock:
            latencies.extend(mine)
            failures[0] += failed

    cpu = resource.getrusage(resource.RUSAGE_SELF)
    threads = [threading.Thread(target=reader, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=max(0.0, deadline + 10 - time.monotonic()))
    used = resource.getrusage(resource.RUSAGE_SELF)
    with lock:
        done = list(latencies)
    return {"read_rate": round(len(done) / seconds, 1), "read_clients": clients,
            "read_tput_p50_ms": round(percentile(done, 50), 2), "read_tput_p99_ms": round(percentile(done, 99), 2),
            "read_tput_errors": failures[0],
            "client_cpu_s": round(used.ru_utime + used.ru_stime - cpu.ru_utime - cpu.ru_stime, 2)}  # fmt: skip


class Probe:
    """One put of the failover run: when it was submitted, when it finished, whether it succeeded."""

    def __init__(self, submitted: float):
        self.submitted = submitted
        self.done: float | None = None
        self.ok = False


def first_success_after(probes: list[Probe], killed_at: float) -> float | None:
    """Seconds from the kill to the earliest success among the puts submitted after it (None if none)."""
    finished = [p.done for p in probes if p.ok and p.done is not None and p.submitted >= killed_at]
    return min(finished) - killed_at if finished else None


def failover_once(cluster: EtcdCluster, run: int) -> float:
    """kill -9 the leader, put every 20 ms on the survivors; restart the killed member once one succeeded."""
    leader = cluster.ready()
    survivors = [address for i, address in enumerate(cluster.clients) if i != leader]
    probes: list[Probe] = []
    lock = threading.Lock()

    def probe(n: int, address: str) -> None:
        p = Probe(time.monotonic())
        with lock:
            probes.append(p)
        client = Client(address, timeout=PROBE_TIMEOUT)
        try:
            client.put(b"/bench/failover/%d/%06d" % (run, n), record(n))
            p.ok = True
        except FAILURES:
            pass
        finally:
            p.done = time.monotonic()
            client.close()

    killed_at = time.monotonic()
    cluster.kill(leader)
    threads = []
    for n in range(MAX_PROBES):  # at most FAILOVER_LIMIT seconds of probes
        thread = threading.Thread(target=probe, args=(n, survivors[n % len(survivors)]), daemon=True)
        thread.start()
        threads.append(thread)
        time.sleep(PROBE_INTERVAL)  # the probe rate, not a wait for a condition
        with lock:
            if any(p.ok for p in probes):
                break
    for thread in threads:
        thread.join(timeout=PROBE_TIMEOUT + 1)
    with lock:
        seconds = first_success_after(probes, killed_at)
    if seconds is None:
        raise RuntimeError(f"etcd: no put succeeded within {FAILOVER_LIMIT:.0f} s of killing the leader")
    cluster.restart(leader)
    return seconds


def measure_failover(cluster: EtcdCluster, runs: int) -> dict:
    times = [failover_once(cluster, run) for run in range(runs)]
    return {"failover_median_s": round(statistics.median(times), 3), "failover_runs_s": [round(t, 3) for t in times]}


def measure(etcd: dict, workdir: str, quick: bool, failover_runs: int, pki: str | None = None) -> dict:
    puts = 300 if quick else PUTS
    with EtcdCluster(etcd["binary"], os.path.join(workdir, "plain")) as cluster:
        leader = cluster.clients[cluster.ready()]
        results = {"version": etcd["etcd"], "etcdctl": etcd["etcdctl"], "go": etcd["go"], "members": 3}
        results.update(measure_puts(cluster, leader, puts))
        results.update(measure_reads(leader, 300 if quick else READS))
        results.update(measure_read_throughput(leader, READ_CLIENTS, 5.0 if quick else 10.0))
        results.update(measure_failover(cluster, failover_runs))
    if pki:
        with EtcdCluster(etcd["binary"], os.path.join(workdir, "tls"), pki=pki) as cluster:
            results.update(measure_puts(cluster, cluster.clients[cluster.ready()], puts, prefix="tls_put"))
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer operations, 2 failover runs")
    parser.add_argument("--workdir", help="where the data dirs and member logs go (default: a new temp dir)")
    parser.add_argument("--failover-runs", type=int, help="kill -9 runs (default 5, 2 with --quick)")
    parser.add_argument("--pki", help="also measure puts on a TLS cluster, with the certificates parkctl pki wrote here")
    args = parser.parse_args(argv)
    try:
        etcd = ensure_etcd()
    except Unavailable as e:
        print(f"etcd NOT MEASURED: {e}", file=sys.stderr)
        print(json.dumps({"unavailable": str(e)}))
        return UNAVAILABLE
    workdir = args.workdir or tempfile.mkdtemp(prefix="parkd-etcd-")
    runs = args.failover_runs or (2 if args.quick else 5)
    try:
        print(json.dumps(measure(etcd, workdir, args.quick, runs, args.pki)))
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
