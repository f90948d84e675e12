"""``make bench``: one table, every row measured in this run on this machine.

Every parkd row runs with TLS on (mutual TLS on every port, each camera with
its own certificate, as deployed); throughput and low-load latency are also
measured in plaintext (``insecure = true``) in the same round, in alternating
order, with the ratio TLS/plaintext.  The benchmark PKI (CA, nodes 1-5,
cameras 1-20 and 100000-109999) is made once under ``run/bench-pki`` and reused.

Rows: durable throughput at saturation (3 nodes, fsync before ack, pipelining
camera connections from the load generator), ack latency at low load (one
frame in flight, the camera on the leader and on a follower, with the CPU
the three nodes spent per acked frame from /proc), linearizable reads
(benchmarks/reads.py: p50/p99 from the leader and from a follower with one
client, reads/s with 16), kill -9 failover (median and slowest of 5), planned leader stop (longest
gap in acks), 10,000 connected cameras (p99 latency, errors, node RSS) and then
a reconnect storm (kill -9 of the leader while they are connected: time until
99 % and 100 % of the cameras are acked again, TLS handshakes per second on the
surviving nodes), and two peers on the same machine for comparison: PySyncObj
(benchmarks/peer_pysyncobj.py, installed into its own venv) and etcd
(benchmarks/peer_etcd.py, apt-get installed when missing; its figures and the
parkd/etcd ratio sit next to parkd's rows).

The rows compared with etcd and the TLS/plaintext pairs are measured
``--rounds`` times, interleaved with etcd (parkd, etcd, parkd, etcd, ...);
each figure is the median over the rounds, the figures of every round are kept
in the JSON.  The other rows run once.  ``--profile DIR`` records the surviving
nodes and the load generator with py-spy during the storm (flame graphs in DIR).

    python benchmarks/bench.py [--quick] [--skip-peer] [--only ROW] [--rounds N] [--day-frames N] [--json-out FILE]
                               [--profile DIR]

The "day" row (benchmarks/day.py) fills a cluster to --day-frames frames through cameras (about half an
hour at 2 M, once per run); the "day_at" row (benchmarks/day_at.py) measures snapshots and a 1 M-row trim
under camera load on a state of that size built directly, once per round (about 5 minutes each).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import queue
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:0] = [ROOT, HERE]

import day  # noqa: E402
import day_at  # noqa: E402
from parkd.chaos.checker import read_events  # noqa: E402
from parkd.config import load_config  # noqa: E402
from parkd.node.ports import CAMERA_CONNECTED  # noqa: E402
from parkd.launcher import (  # noqa: E402
    camera_daemon, cpu_seconds, get_json, http_request, make_pki, node_daemon, wait_for, wait_listening, write_config,
)  # fmt: skip

import reads  # noqa: E402  (benchmarks/reads.py)

LOTS = {"north": 100, "south": 60, "east": 250}
PKI = os.path.join(ROOT, "run", "bench-pki")
FIRST_CAMERA = 100000  # the load generator's first camera id (its default)
MAX_CAMERAS = 10000


def bench_pki() -> str:
    """The benchmark's PKI, made once under run/bench-pki (10,000 camera certificates take 6-15 s to issue)."""
    if not os.path.exists(os.path.join(PKI, f"camera-{FIRST_CAMERA + MAX_CAMERAS - 1}.key")):
        print(f"making the benchmark PKI in {PKI} (once) …", flush=True)
    cameras = [*range(1, 21), *range(FIRST_CAMERA, FIRST_CAMERA + MAX_CAMERAS)]
    return make_pki(PKI, cameras=cameras)


def hellos_in(json_path: str, since: float) -> list[float]:
    """When cameras' Hellos were accepted (``ports.CAMERA_CONNECTED`` lines) in a node's JSON log since ``since``.

    The log rotates at ``[log] max_mb`` (it holds every frame): the newest rotated file is read too.
    """
    times = []
    for path in (json_path + ".1", json_path):
        if not os.path.exists(path):
            continue
        with open(path, encoding="utf-8") as f:
            for line in f:
                if "connected (lot" in line:  # cheap filter first
                    event = json.loads(line.lstrip("\x1e"))
                    if event.get("log_format") == CAMERA_CONNECTED and event["log_time"] >= since:
                        times.append(event["log_time"])
    return times


class BenchCluster:
    def __init__(self, workdir: str, nodes: int = 3, camera_interval: float | None = None, tls: bool = True,
                 node_args: tuple[str, ...] = ()):
        self.workdir = workdir
        os.makedirs(workdir, exist_ok=True)
        self.pki = bench_pki() if tls else None
        self.config_path = write_config(os.path.join(workdir, "parkd.toml"), nodes=nodes, lots=LOTS,
                                        camera_interval=camera_interval, pki=self.pki)  # fmt: skip
        self.config = load_config(self.config_path)
        self.nodes = {m.id: node_daemon(self.config_path, m.id, workdir, *node_args) for m in self.config.members}
        self.cameras = []
        self._next_camera = FIRST_CAMERA  # the load generator's next camera id (see loadgen_command)

    def __enter__(self):
        try:
            for node in self.nodes.values():
                node.start()
            for node_id, node in self.nodes.items():
                wait_listening(self.config, node_id, node, timeout=60)  # a loaded machine starts slowly
            wait_for(self.leader, 30, "a leader")
        except BaseException:
            self.__exit__()  # a cluster that did not come up leaves no daemon behind
            raise
        return self

    def __exit__(self, *exc):
        for daemon in [*self.cameras, *self.nodes.values()]:
            daemon.stop()

    def client_addresses(self, nodes=None) -> str:
        return ",".join(str(m.client) for m in self.config.members if nodes is None or m.id in nodes)

    def status(self, node_id):
        return get_json(self.config, node_id, "/api/v1/cluster?consistency=local")

    def leader(self):
        for node_id, node in self.nodes.items():
            if node.alive():
                s = self.status(node_id)
                if s and s["role"] == "leader":
                    return node_id
        return None

    def loadgen_command(self, cameras: int, *args: str, nodes=None) -> list[str]:
        """The load generator's command line: ``cameras`` cameras new to this cluster, talking to ``nodes`` (default all).

        Each run gets camera ids no earlier run on this cluster used: a camera
        id that starts again at seq 1 would be answered from the first run's
        results, without a round through the log.
        """
        if self._next_camera + cameras > FIRST_CAMERA + MAX_CAMERAS:
            raise ValueError(f"the benchmark PKI has no certificates for {cameras} more cameras")
        first, self._next_camera = self._next_camera, self._next_camera + cameras
        tls = ["--pki", self.pki] if self.pki is not None else []
        return [sys.executable, "-m", "parkd.camera.loadgen", "--cluster", self.client_addresses(nodes), *tls,
                "--cameras", str(cameras), "--first-camera", str(first), *args]  # fmt: skip

    def loadgen(self, cameras: int, *args: str, nodes=None) -> dict:
        command = self.loadgen_command(cameras, *args, nodes=nodes)
        out = subprocess.run(command, capture_output=True, text=True, timeout=600)
        if out.returncode != 0:
            raise RuntimeError(out.stderr[-2000:])
        return json.loads(out.stdout.strip().splitlines()[-1])

    def rss_mb(self) -> float:
        """The largest peak resident set (VmHWM) of the node processes so far, in MB."""
        sizes = []
        for node in self.nodes.values():
            if node.alive():
                with open(f"/proc/{node.pid}/status") as f:
                    for line in f:
                        if line.startswith("VmHWM:"):
                            sizes.append(int(line.split()[1]) / 1024)
        return max(sizes)

    def cpu_seconds(self) -> float:
        """User + system CPU seconds of the node processes still running, summed."""
        return sum(node.cpu_seconds() for node in self.nodes.values() if node.alive())

    def acks_sent(self) -> int:
        """Frames the nodes acked to cameras so far (each node's ``parkd_ack_latency_seconds_count``), summed."""
        total = 0
        for node_id, node in self.nodes.items():
            if node.alive():
                status, _, body = http_request(self.config, node_id, "/metrics", timeout=5.0)
                for line in body.decode().splitlines():
                    if status == 200 and line.startswith("parkd_ack_latency_seconds_count "):
                        total += int(float(line.split()[1]))
        return total

    def costed_loadgen(self, cameras: int, *args: str, nodes=None) -> dict:
        """:meth:`loadgen`, plus ``cpu_ms_per_ack``: the nodes' CPU (all three, from /proc) per frame they acked."""
        cpu, acks = self.cpu_seconds(), self.acks_sent()
        r = self.loadgen(cameras, *args, nodes=nodes)
        acked = self.acks_sent() - acks
        r["cpu_ms_per_ack"] = round((self.cpu_seconds() - cpu) * 1000 / acked, 3) if acked else None
        return r

    def add_cameras(self, count: int) -> None:
        lots = list(LOTS)
        for i in range(1, count + 1):
            self.cameras.append(camera_daemon(self.config_path, i, lots[(i - 1) % len(lots)], self.workdir).start())

    def hellos(self, node_id: int, since: float) -> list[float]:
        """When cameras said Hello to a node since ``since`` (each just after its TLS handshake), from its JSON log."""
        return hellos_in(self.nodes[node_id].json_path, since)

    def acks(self) -> list[dict]:
        return [e for c in self.cameras for e in read_events(c.json_path, "frame_acked")]


def measure_throughput(c: BenchCluster, quick: bool) -> dict:
    r = c.costed_loadgen(16, "--window", "128", "--duration", "3" if quick else "5")
    return {"rate": r["rate"], "p50_ms": r["p50_ms"], "p99_ms": r["p99_ms"], "errors": r["errors"],
            "cpu_ms_per_ack": r["cpu_ms_per_ack"]}


def measure_latency(c: BenchCluster, quick: bool) -> dict:
    """One camera, one frame in flight: on the leader (etcd's puts go to its leader too), then on a follower.

    ``cpu_ms_per_ack``: the CPU the three nodes spent per acked frame meanwhile
    (a cost figure, next to etcd's CPU per sequential put).
    """
    leader = c.leader()
    follower = next(n for n in c.nodes if n != leader)
    figures = {}
    for where, node in (("", leader), ("follower_", follower)):
        r = c.costed_loadgen(1, "--window", "1", "--duration", "3" if quick else "5", nodes=[node])
        figures.update({f"{where}p50_ms": r["p50_ms"], f"{where}p99_ms": r["p99_ms"], f"{where}rate": r["rate"],
                        f"{where}cpu_ms_per_ack": r["cpu_ms_per_ack"]})  # fmt: skip
    return figures


def measure_reads(c: BenchCluster, quick: bool) -> dict:
    """Linearizable point reads (benchmarks/reads.py): one client from the leader, then a follower; 16 on the leader."""
    leader = c.leader()
    follower = next(n for n in c.nodes if n != leader)
    lot = next(iter(LOTS))
    count = 300 if quick else reads.READS
    figures = {}
    for where, node in (("leader_", leader), ("follower_", follower)):
        figures.update({f"{where}{k}": v for k, v in reads.read_latency(c.config, node, lot, count).items()})
    rate = reads.read_throughput(c.config, leader, lot, seconds=3.0 if quick else 10.0)
    figures.update({f"rate_{k}" if k != "rate" else k: v for k, v in rate.items()})
    return figures


def tls_and_plaintext(
    measure: Callable[[BenchCluster], dict], ratio_of: tuple[str, ...], cluster=BenchCluster
) -> Callable[[str], dict]:
    """A step: a TLS and a plaintext cluster up side by side, ``measure(cluster)`` on each in turn, twice.

    The order is ABBA, then BAAB on the next call, so that neither side always
    comes first; the other cluster idles meanwhile (heartbeats only).  Figures:
    TLS's (the median of its two runs), plaintext's prefixed ``plain_``, and
    ``<key>_tls_ratio`` = TLS / plaintext for each key of ``ratio_of``.
    ``cluster``: what starts a cluster (BenchCluster; tests give a stand-in).
    """
    orders = itertools.cycle([(True, False, False, True), (False, True, True, False)])

    def both(workdir: str) -> dict:
        runs: dict[bool, list[dict]] = {True: [], False: []}
        with cluster(os.path.join(workdir, "tls"), tls=True) as tls, \
                cluster(os.path.join(workdir, "plain"), tls=False) as plain:  # fmt: skip
            for side in next(orders):
                runs[side].append(measure(tls if side else plain))
        figures = {**median_of(runs[True]), **{f"plain_{k}": v for k, v in median_of(runs[False]).items()}}
        for key in ratio_of:
            ours, theirs = figures.get(key), figures.get(f"plain_{key}")
            measured = _number(ours) and _number(theirs) and theirs
            figures[f"{key}_tls_ratio"] = round(ours / theirs, 3) if measured else None
        return figures

    return both


def median_of(runs: list[dict]) -> dict:
    """Each numeric figure's median over ``runs``."""
    return {k: round(statistics.median(r[k] for r in runs), 3) for k in runs[0] if all(_number(r.get(k)) for r in runs)}


def measure_failover(workdir, runs):
    """kill -9 the leader; time to the first ack of a frame captured after the kill."""
    times = []
    for run in range(runs):
        with BenchCluster(os.path.join(workdir, f"kill-{run}"), camera_interval=0.02) as c:
            c.add_cameras(3)
            wait_for(lambda: len(c.acks()) > 20, 30, "acks before the kill")
            leader = c.leader()
            killed = time.time()
            c.nodes[leader].kill()

            def first_after():
                late = [e["log_time"] for e in c.acks() if (e.get("captured_at") or 0) > killed]
                return min(late) if late else None

            times.append(wait_for(first_after, 30, "an ack after the kill") - killed)
    return {"median_s": round(statistics.median(times), 3), "max_s": round(max(times), 3),
            "runs_s": [round(t, 3) for t in times]}


def measure_planned_stop(workdir):
    """SIGTERM the leader (it hands over leadership first): the longest gap in acks."""
    with BenchCluster(workdir, camera_interval=0.02) as c:
        c.add_cameras(3)
        wait_for(lambda: len(c.acks()) > 20, 30, "acks before the stop")
        leader = c.leader()
        stopped = time.time()
        c.nodes[leader].signal(signal.SIGTERM)
        c.nodes[leader].wait(30)
        wait_for(lambda: len([e for e in c.acks() if e["log_time"] > stopped + 2]) > 10, 30, "acks after the stop")
        times = sorted(e["log_time"] for e in c.acks() if stopped - 1 < e["log_time"] < stopped + 2)
    gap = max(b - a for a, b in zip(times, times[1:]))
    return {"longest_gap_ms": round(gap * 1000, 1)}


def measure_scale(workdir, quick, profile: str | None = None, tls: bool = True):
    """10,000 TLS cameras, one frame every 10 s each, started over 150 s (a fleet does not start in one millisecond).

    Each camera's first TLS handshake costs its node about 2.4 ms of CPU and
    the generator, which plays every camera, as much: 10,000 take some 50
    CPU-seconds, which 2 shared cores do not find in less than a minute.  The
    loadgen opens its window once all are connected and no frame older than 1 s
    waits (at the earliest after 15 s), then counts every frame captured in the
    window, from capture to ack; frames of the window never acked count as
    errors.  ``warmup_s``, ``reconnects`` and the generator's own CPU and timer
    lag are reported with the row.  Then the reconnect storm (:func:`reconnect_storm`).

    Each camera makes its standby TLS sessions with the other two nodes
    (:mod:`parkd.camera.standby`) within STANDBY_SPREAD s of connecting rather
    than a daemon's 10 minutes, and the window opens once all have: the window
    and the storm find the fleet as it is after its first 10 minutes.
    """
    cameras, ramp = (2000, 30) if quick else (MAX_CAMERAS, 150)
    with BenchCluster(workdir, tls=tls) as c:
        gen = LoadgenRun(c.loadgen_command(cameras, "--interval", "10", "--window", "4", "--ramp", str(ramp),
                                           "--warmup", "15", "--max-warmup", str(ramp + 120),
                                           "--duration", "20" if quick else "40",
                                           "--storm", "--storm-wait", str(STORM_WAIT),
                                           "--standby-spread", str(STANDBY_SPREAD)), workdir)  # fmt: skip
        try:
            r = gen.next_json(600)
            rss = c.rss_mb()
            storm = reconnect_storm(c, gen, profile)
        finally:
            gen.stop()
    keys = ("connected", "rate", "p50_ms", "p99_ms", "max_ms", "errors", "unacked", "refused", "reconnects",
            "warmup_s", "settled", "gen_cpu", "gen_lag_p99_ms")  # fmt: skip
    return {"cameras": cameras, **{k: r.get(k) for k in keys}, "node_rss_mb": round(rss, 1), **storm}


STORM_WAIT = 60  # seconds: for every camera to be acked again after the kill
STANDBY_SPREAD = 10  # seconds: each camera's standby sessions start within this of its connecting
PROFILE_SECONDS = 20
PROFILE_FORMAT = ("flamegraph", "svg")  # or ("raw", "txt"): collapsed stacks, one line per stack


def reconnect_storm(c: BenchCluster, gen: LoadgenRun, profile: str | None) -> dict:
    """kill -9 the leader while the load generator's cameras are connected; how they come back.

    At the kill every camera captures a frame (the generator's ``--storm``):
    ``storm_t99_s``/``storm_t100_s`` are the times until 99 % / 100 % of those
    frames are acked.  On the surviving nodes: cameras' Hellos per second (each
    follows a TLS handshake: the best second on one node, ``handshakes_peak_per_s``,
    and in all, ``handshakes``), their CPU share during the storm, their peak RSS.
    """
    leader = c.leader()
    survivors = [n for n, node in c.nodes.items() if n != leader and node.alive()]
    pids = {f"node-{n}": c.nodes[n].pid for n in survivors}
    cpu = {n: cpu_seconds(c.nodes[n].pid) for n in survivors}
    spies = py_spy(profile, {**pids, "loadgen": gen.proc.pid}) if profile else []
    killed = time.time()
    gen.proc.send_signal(signal.SIGUSR1)
    c.nodes[leader].kill()
    r = gen.next_json(STORM_WAIT + 60).get("storm", {})
    seconds = time.time() - killed
    node_cpu = [round((cpu_seconds(c.nodes[n].pid) - cpu[n]) / seconds, 2) for n in survivors]
    for spy in spies:
        spy.wait(PROFILE_SECONDS + 30)
    hellos = [c.hellos(n, killed) for n in survivors]
    elected = [e["log_time"] - killed for n in survivors for e in read_events(c.nodes[n].json_path, "leader_elected")
               if e["log_time"] > killed]  # fmt: skip
    peak = max((max(Counter(int(t - killed) for t in times).values(), default=0) for times in hellos), default=0)
    def within_wait(key):  # None: not reached before the generator gave up
        return r[key] if r.get(key) is not None else f"> {STORM_WAIT}"

    return {"storm_t50_s": within_wait("t50_s"), "storm_t99_s": within_wait("t99_s"),
            "storm_t100_s": within_wait("t100_s"),
            "storm_recovered": r.get("recovered"), "storm_connects": r.get("connects"), "storm_refused": r.get("refused"),
            "storm_moved": r.get("moved"), "storm_resumed": r.get("resumed"),
            "storm_resumed_share": f"{r['resumed'] / r['moved']:.0%}" if r.get("moved") else None,
            "storm_elected_s": round(min(elected), 3) if elected else None, "storm_by_second": r.get("by_second"),
            "storm_gen_cpu": r.get("gen_cpu"), "storm_client_events": r.get("client_events", r.get("error")),
            "handshakes": sum(len(times) for times in hellos), "handshakes_peak_per_s": peak,
            "storm_node_cpu": node_cpu, "node_rss_after_storm_mb": round(c.rss_mb(), 1)}  # fmt: skip


def py_spy(directory: str, pids: dict[str, int]) -> list[subprocess.Popen]:
    """``py-spy record`` on each process for PROFILE_SECONDS (flame graphs DIRECTORY/NAME.svg; see PROFILE_FORMAT)."""
    spy = shutil.which("py-spy", path=os.path.dirname(sys.executable)) or shutil.which("py-spy")
    if spy is None:
        print("  no py-spy (pip install py-spy): not profiling", flush=True)
        return []
    os.makedirs(directory, exist_ok=True)
    kind, ext = PROFILE_FORMAT
    return [subprocess.Popen([spy, "record", "--pid", str(pid), "--duration", str(PROFILE_SECONDS), "--rate", "100",
                              "--format", kind, "--output", os.path.join(directory, f"{name}.{ext}"), "--nonblocking"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for name, pid in pids.items()]  # fmt: skip


class LoadgenRun:
    """A load generator in the background: its JSON lines as they come, its stderr in WORKDIR/loadgen.err."""

    def __init__(self, command: list[str], workdir: str):
        self.err_path = os.path.join(workdir, "loadgen.err")
        with open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=err, text=True)
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def next_json(self, timeout: float) -> dict:
        """The next JSON line it prints, within ``timeout`` s (RuntimeError if it exits or stays silent)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise RuntimeError(f"no figures from the load generator within {timeout:g} s") from None
            if line is None:
                with open(self.err_path, encoding="utf-8", errors="replace") as f:
                    raise RuntimeError(f"load generator exited with {self.proc.wait(5)}: {f.read()[-2000:]}")
            if line.startswith("{"):
                return json.loads(line)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(5)


def measure_peer(workdir, quick):
    venv = os.path.join(HERE, ".venv-peer")
    python = os.path.join(venv, "bin", "python")
    if not os.path.exists(python):
        subprocess.run([sys.executable, "-m", "venv", venv], check=True)
        subprocess.run([python, "-m", "pip", "install", "--quiet", "pysyncobj==0.3.17"], check=True)
    out = subprocess.run([python, os.path.join(HERE, "peer_pysyncobj.py"), "--duration", "5" if quick else "10",
                          "--workdir", workdir], capture_output=True, text=True, timeout=600)  # fmt: skip
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


class PeerUnavailable(Exception):
    """A peer cannot run on this machine (e.g. etcd not installable): its rows are left out, the others run."""


def measure_etcd(workdir, quick):
    """etcd on this machine (benchmarks/peer_etcd.py): puts, linearizable reads, kill -9 failover; puts with TLS."""
    command = [sys.executable, os.path.join(HERE, "peer_etcd.py"), "--workdir", workdir, "--pki", bench_pki()]
    if quick:
        command.append("--quick")
    out = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    try:
        figures = json.loads(out.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        figures = {}
    if "unavailable" in figures:
        raise PeerUnavailable(figures["unavailable"])
    if out.returncode != 0 or not figures:
        raise RuntimeError(out.stderr[-2000:])
    return figures


@dataclass(frozen=True)
class Step:
    """One row's measurement, ``measure(workdir)`` -> figures; ``paired`` rows run every round, between etcd's.

    (Paired: compared with etcd, or a TLS/plaintext pair, whose ratio is noisy.)
    """

    name: str
    measure: Callable[[str], dict]
    paired: bool = False


ROWS = ("throughput", "latency", "reads", "failover", "planned_stop", "scale", "day", "day_at", "pysyncobj", "etcd")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="shorter runs (a smoke test of the bench)")
    parser.add_argument("--skip-peer", action="store_true", help="leave out the peers (PySyncObj and etcd)")
    parser.add_argument("--only", action="append", choices=ROWS, metavar="ROW",
                        help=f"measure only this row (repeatable): {', '.join(ROWS)}")
    parser.add_argument("--rounds", type=int, metavar="N",
                        help="rounds of the rows compared with etcd and of the TLS/plaintext pairs, interleaved with "
                             "etcd (default 3, 1 with --quick)")
    parser.add_argument("--day-frames", type=int, default=2_000_000, metavar="N",
                        help="frames the day-of-data row fills the cluster with (default 2,000,000: hours)")
    parser.add_argument("--json-out")
    parser.add_argument("--profile", metavar="DIR", help="py-spy flame graphs of the nodes and generator in the storm")
    args = parser.parse_args(argv)
    rounds = args.rounds or (1 if args.quick else 3)
    if rounds < 1:
        parser.error("--rounds must be at least 1")
    steps = [
        Step("throughput", tls_and_plaintext(lambda c: measure_throughput(c, args.quick), ("rate",)), paired=True),
        Step("latency", tls_and_plaintext(lambda c: measure_latency(c, args.quick), ("p50_ms", "follower_p50_ms")),
             paired=True),
        Step("reads", tls_and_plaintext(lambda c: measure_reads(c, args.quick),
                                        ("leader_p50_ms", "follower_p50_ms", "rate")), paired=True),
        Step("failover", lambda d: measure_failover(d, 2 if args.quick else 5), paired=True),
        Step("planned_stop", measure_planned_stop),
        Step("scale", lambda d: measure_scale(d, args.quick, args.profile)),
        Step("day", lambda d: day.measure_day(d, args.day_frames)),
        Step("day_at", lambda d: day_at.measure_day_at(d, args.day_frames), paired=True),
    ]
    if not args.skip_peer:
        steps.append(Step("pysyncobj", lambda d: measure_peer(d, args.quick)))
        steps.append(Step("etcd", lambda d: measure_etcd(d, args.quick), paired=True))
    if args.only:
        steps = [step for step in steps if step.name in args.only]
    workdir = tempfile.mkdtemp(prefix="parkd-bench-")
    try:
        results = {name: combine(figures) for name, figures in run_rounds(steps, rounds, workdir).items()}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(table(results, rounds))
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(results, f, indent=2)
    return 0


def run_rounds(steps: list[Step], rounds: int, workdir: str) -> dict[str, list[dict]]:
    """Every step in round 1, the paired ones again in each later round (parkd, etcd, parkd, etcd, ...)."""
    measured: dict[str, list[dict]] = {}
    unavailable: set[str] = set()
    for n in range(1, rounds + 1):
        for step in steps:
            if (n > 1 and not step.paired) or step.name in unavailable:
                continue
            which = f" (round {n} of {rounds})" if step.paired and rounds > 1 else ""
            print(f"measuring {step.name}{which} …", flush=True)
            try:
                figures = step.measure(os.path.join(workdir, f"{step.name}-{n}"))
            except PeerUnavailable as e:
                unavailable.add(step.name)
                figures = {"error": f"not measured: {e}", "unavailable": str(e)}
                print(f"  {step.name} NOT MEASURED: {e} (the other rows still run)", flush=True)
            except Exception as e:  # a failed row is reported, the others still run
                figures = {"error": f"{type(e).__name__}: {e}"[:300]}
            measured.setdefault(step.name, []).append(figures)
            print(f"  {step.name}: {json.dumps(figures)}", flush=True)
    return measured


def combine(rounds: list[dict]) -> dict:
    """One row over its rounds: each number the median over the rounds that measured it, lists joined, rounds kept."""
    good = [r for r in rounds if "error" not in r]
    if not good:
        return rounds[-1]
    combined = dict(good[0])
    for key, value in good[0].items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            combined[key] = round(statistics.median(r[key] for r in good if _number(r.get(key))), 3)
        elif isinstance(value, list):
            combined[key] = [x for r in good for x in r.get(key, [])]
    if len(rounds) > 1:
        combined["rounds"] = rounds
    return combined


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True)
class Row:
    """One line of the table: parkd's figures (``keys`` of the result ``result``), etcd's comparable ones, the target.

    The parkd/etcd column divides the first of ``keys`` by the first of ``etcd``.  ``label`` may
    name a figure of the result in braces.  A row is shown when either side was measured.
    """

    label: str
    result: str | None = None
    keys: tuple[str, ...] = ()
    etcd: tuple[str, ...] = ()
    target: str = ""
    fmt: str = "{}"


TABLE = (
    Row("Durable throughput, TLS (acked frames/s, 3 nodes)", "throughput", ("rate",), target="≥ 5,000",
        fmt="{:,.0f}"),
    Row("Durable throughput, plaintext", "throughput", ("plain_rate",), target="≥ 5,000", fmt="{:,.0f}"),
    Row("Durable throughput TLS / plaintext", "throughput", ("rate_tls_ratio",), target="≥ 0.85", fmt="{:.2f}"),
    Row("Low-load ack latency, TLS: p50 / p99 (ms), camera on the leader; etcd: sequential put", "latency",
        ("p50_ms", "p99_ms"), ("put_p50_ms", "put_p99_ms"), "p50 ≤ etcd / p99 ≤ 10"),
    Row("Low-load ack latency with the camera on a follower, TLS: p50 / p99 (ms); etcd: sequential put",
        "latency", ("follower_p50_ms", "follower_p99_ms"), ("put_p50_ms", "put_p99_ms"),
        "p50 ≤ 1.3 × etcd / p99 ≤ 10"),
    Row("CPU per acked frame, 3 nodes (ms), one frame in flight, camera on the leader; etcd: per sequential put",
        "latency", ("cpu_ms_per_ack",), ("put_cpu_ms",), target="(cost)", fmt="{:.2f}"),
    Row("CPU per acked frame, 3 nodes (ms), one frame in flight, camera on a follower", "latency",
        ("follower_cpu_ms_per_ack",), ("put_cpu_ms",), target="(cost)", fmt="{:.2f}"),
    Row("Like for like, TLS on both: ack p50 / p99 (ms), camera on the leader; etcd with TLS: sequential put",
        "latency", ("p50_ms", "p99_ms"), ("tls_put_p50_ms", "tls_put_p99_ms"), "(report)"),
    Row("Like for like, TLS on both: ack p50 / p99 (ms), camera on a follower; etcd with TLS: sequential put",
        "latency", ("follower_p50_ms", "follower_p99_ms"), ("tls_put_p50_ms", "tls_put_p99_ms"), "(report)"),
    Row("Like for like, TLS on both: CPU per acked frame, 3 nodes (ms), camera on the leader; etcd with TLS: per put",
        "latency", ("cpu_ms_per_ack",), ("tls_put_cpu_ms",), target="(cost)", fmt="{:.2f}"),
    Row("CPU per acked frame, 3 nodes (ms), at saturation (TLS)", "throughput", ("cpu_ms_per_ack",),
        target="(cost)", fmt="{:.2f}"),
    Row("Low-load ack latency, plaintext: p50 / p99 (ms), camera on the leader", "latency",
        ("plain_p50_ms", "plain_p99_ms"), ("put_p50_ms", "put_p99_ms"), "≤ 2 / ≤ 10"),
    Row("Low-load ack latency p50 TLS / plaintext, camera on the leader", "latency", ("p50_ms_tls_ratio",),
        target="≤ 1.2", fmt="{:.2f}"),
    Row("Low-load ack latency p50 (ms), camera on a follower: TLS / plaintext", "latency",
        ("follower_p50_ms", "plain_follower_p50_ms"), target="(none set)"),
    Row("Low-load ack latency p50 TLS / plaintext, camera on a follower", "latency", ("follower_p50_ms_tls_ratio",),
        target="≤ 1.2", fmt="{:.2f}"),
    Row("Linearizable read, HTTPS: p50 / p99 (ms), leader, 1 client; etcd: range of one key", "reads",
        ("leader_p50_ms", "leader_p99_ms"), ("read_p50_ms", "read_p99_ms"), "p50 ≤ 2"),
    Row("Linearizable read, plaintext: p50 / p99 (ms), leader, 1 client", "reads",
        ("plain_leader_p50_ms", "plain_leader_p99_ms"), ("read_p50_ms", "read_p99_ms"), "p50 ≤ 2"),
    Row("Linearizable read, HTTPS: p50 / p99 (ms), follower, 1 client", "reads",
        ("follower_p50_ms", "follower_p99_ms"), ("read_p50_ms", "read_p99_ms"), "p50 ≤ 3"),
    Row("Linearizable read, plaintext: p50 / p99 (ms), follower, 1 client", "reads",
        ("plain_follower_p50_ms", "plain_follower_p99_ms"), ("read_p50_ms", "read_p99_ms"), "p50 ≤ 3"),
    Row("Linearizable reads/s, HTTPS, 16 clients on the leader", "reads", ("rate",), ("read_rate",), "≥ 3,000",
        fmt="{:,.0f}"),
    Row("Linearizable reads/s, plaintext, 16 clients on the leader", "reads", ("plain_rate",), ("read_rate",),
        "≥ 3,000", fmt="{:,.0f}"),
    Row("kill -9 leader → first new ack/put, median / slowest of runs (s)", "failover", ("median_s", "max_s"),
        ("failover_median_s",), "≤ 0.2 / ≤ 0.3"),
    Row("Planned leader stop: longest ack gap (ms)", "planned_stop", ("longest_gap_ms",), target="(none set)"),
    Row("{cameras} TLS cameras: p99 (ms) / errors / node RSS (MB)", "scale", ("p99_ms", "errors", "node_rss_mb"),
        target="≤ 100 / 0 / ≤ 400"),
    Row("Reconnect storm (kill -9 leader): 99 % / 100 % acked again (s)", "scale", ("storm_t99_s", "storm_t100_s"),
        target="99 % ≤ 10"),
    Row("Storm: TLS handshakes/s, best second on a node / of them resumed / node RSS (MB)", "scale",
        ("handshakes_peak_per_s", "storm_resumed_share", "node_rss_after_storm_mb"), target="(report) / — / ≤ 400"),
    Row("Day of data: {frames} frames filled in (s) / frames/s / elections", "day",
        ("fill_s", "fill_rate", "elections"), fmt="{:,}", target="— / — / 0"),
    Row("Day of data: ack p99 (ms) of saturating fill rounds with a snapshot / of all (median; queueing included)",
        "day", ("ack_p99_snap_ms", "ack_p99_fill_ms"), target="≈ all / —"),
    Row("Day of data: reactor lag p99 / max (ms, bucket bounds, all nodes)", "day", ("lag_p99_ms", "lag_max_ms"),
        target="— / ≤ 200"),
    Row("Day of data: where the reactor lag reached its max (node, fill round, what it did then)", "day",
        ("lag_max_at",)),
    Row("Day of data: snapshots / longest copy (s) / a day's /history p99 (ms)", "day",
        ("snapshots", "snapshot_max_s", "history_p99_ms"), target="— / — / ≤ 20"),
    Row("Day of data: node.db + WAL + logs per node (MB)", "day", ("disk_mb",)),
    Row("At {frames} frames, 200 cameras at 1 frame/s: ack p99 (ms) during the snapshots / the 1 M-row trim / all",
        "day_at", ("ack_p99_snap_ms", "ack_p99_trim_ms", "ack_p99_ms"), target="≤ 100 / ≤ 100 / —"),
    Row("At {frames} frames: elections during snapshots and trim / reactor lag p99 / max (ms)", "day_at",
        ("elections", "lag_p99_ms", "lag_max_ms"), target="0 / — / ≤ 200"),
    Row("At {frames} frames: longest snapshot (s) / rows trimmed / trim took (s) / trim batch p99 / max (ms)",
        "day_at", ("snapshot_max_s", "trimmed_rows", "trim_s", "trim_batch_p99_ms", "trim_batch_max_ms"),
        target="— / ~1 M / — / ≤ 20 / —"),
    Row("At {frames} frames: a day's /history p99 (ms) / node.db + WAL + logs per node after the trim (MB)",
        "day_at", ("history_p99_ms", "disk_mb"), target="≤ 20 / —"),
)  # fmt: skip


class _Unknown(dict):
    def __missing__(self, key):
        return "?"


def table(r: dict, rounds: int = 1) -> str:
    etcd = r.get("etcd", {})

    def cells(figures: dict, keys: tuple[str, ...], fmt: str) -> str:
        return " / ".join("error" if figures.get(k) is None else fmt.format(figures[k]) for k in keys)

    def ratio(row: Row) -> str:
        ours, theirs = r.get(row.result, {}).get(row.keys[0]), etcd.get(row.etcd[0])
        return f"{ours / theirs:.2f}" if _number(ours) and _number(theirs) and theirs else ""

    lines = []
    for row in TABLE:
        has_parkd, has_etcd = row.result in r, bool(row.etcd) and "etcd" in r and "unavailable" not in etcd
        if not (has_parkd or has_etcd):  # rows not measured in this run (--only) are left out
            continue
        label = row.label.format_map(_Unknown(r.get(row.result, {})))
        value = cells(r[row.result], row.keys, row.fmt) if has_parkd else "—"
        theirs = cells(etcd, row.etcd, row.fmt) if has_etcd else ""
        lines.append((label, value, theirs, ratio(row) if has_parkd and has_etcd else "", row.target))
    if "pysyncobj" in r:
        peer = r["pysyncobj"].get("rate")
        ours = r.get("throughput", {}).get("rate")
        lines.append(("PySyncObj 3 nodes, in memory (committed writes/s)", cells(r["pysyncobj"], ("rate",), "{:,.0f}"),
                      "", "", ""))  # fmt: skip
        if "throughput" in r:
            lines.append(("parkd durable / PySyncObj non-durable", f"{ours / peer:.2f}" if peer and ours else "error",
                          "", "", "≥ 1.0"))  # fmt: skip
    width = max((len(line[0]) for line in lines), default=len("measure"))
    out = [f"| {'measure':<{width}} | value | etcd | parkd/etcd | target |",
           f"|{'-' * (width + 2)}|-------|------|------------|--------|"]  # fmt: skip
    out += [f"| {label:<{width}} | {' | '.join(rest)} |" for label, *rest in lines]
    if "etcd" in r:
        out.append(etcd_note(etcd, rounds))
    return "\n".join(out)


def etcd_note(etcd: dict, rounds: int) -> str:
    if "unavailable" in etcd:
        return f"etcd NOT MEASURED: {etcd['unavailable']}"
    if "error" in etcd:
        return f"etcd failed: {etcd['error']}"
    return (f"etcd {etcd.get('version')} ({etcd.get('go')}): 3 members on 127.0.0.1, WAL fsync, heartbeat 100 ms / "
            f"election 1000 ms; plain HTTP on its client and peer ports, except in the rows \"etcd with TLS\" (a "
            f"second cluster, mutual TLS on both, the benchmark PKI's ECDSA P-256 certificates as parkd's); "
            f"Python client on its v3 JSON gateway, one keep-alive connection; medians of {rounds} "
            f"round(s); Python client CPU in the 16-client read run: "
            f"{etcd.get('client_cpu_s')} s")


if __name__ == "__main__":
    sys.exit(main())
