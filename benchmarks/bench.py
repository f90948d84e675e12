"""``make bench``: one table, every row measured in this run on this machine.

Rows: durable throughput at saturation (3 nodes, fsync before ack, pipelining
camera connections from the load generator), ack latency at low load (one
frame in flight), kill -9 failover (median of 5), planned leader stop (longest
gap in acks), 10,000 connected cameras (p99 latency, errors, node RSS), and two
peers on the same machine for comparison: PySyncObj (benchmarks/peer_pysyncobj.py,
installed into its own venv) and etcd (benchmarks/peer_etcd.py, apt-get
installed when missing; its figures and the parkd/etcd ratio sit next to
parkd's rows).

The rows compared with etcd are measured ``--rounds`` times, interleaved with
etcd (parkd, etcd, parkd, etcd, ...); each figure is the median over the rounds,
the figures of every round are kept in the JSON.  The other rows run once.

    python benchmarks/bench.py [--quick] [--skip-peer] [--only ROW] [--rounds N] [--day-frames N] [--json-out FILE]

The "day" row (benchmarks/day.py) fills a cluster to --day-frames frames: hours at 2 M.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(HERE), HERE]

import day  # noqa: E402
from parkd.chaos.checker import read_events  # noqa: E402
from parkd.config import load_config  # noqa: E402
from parkd.launcher import camera_daemon, node_daemon, wait_for, wait_listening, write_config  # noqa: E402

LOTS = {"north": 100, "south": 60, "east": 250}


class BenchCluster:
    def __init__(self, workdir: str, nodes: int = 3, camera_interval: float | None = None):
        self.workdir = workdir
        os.makedirs(workdir, exist_ok=True)
        self.config_path = write_config(os.path.join(workdir, "parkd.toml"), nodes=nodes, lots=LOTS,
                                        camera_interval=camera_interval)  # fmt: skip
        self.config = load_config(self.config_path)
        self.nodes = {m.id: node_daemon(self.config_path, m.id, workdir) for m in self.config.members}
        self.cameras = []

    def __enter__(self):
        for node in self.nodes.values():
            node.start()
        for node_id, node in self.nodes.items():
            wait_listening(self.config, node_id, node)
        wait_for(self.leader, 30, "a leader")
        return self

    def __exit__(self, *exc):
        for daemon in [*self.cameras, *self.nodes.values()]:
            daemon.stop()

    def client_addresses(self) -> str:
        return ",".join(str(m.client) for m in self.config.members)

    def status(self, node_id):
        import urllib.request

        http = self.config.member(node_id).http
        try:
            with urllib.request.urlopen(f"http://{http}/api/v1/cluster?consistency=local", timeout=2) as r:
                return json.load(r)
        except (OSError, ValueError):
            return None

    def leader(self):
        for node_id, node in self.nodes.items():
            if node.alive():
                s = self.status(node_id)
                if s and s["role"] == "leader":
                    return node_id
        return None

    def loadgen(self, *args: str) -> dict:
        out = subprocess.run(
            [sys.executable, "-m", "parkd.camera.loadgen", "--cluster", self.client_addresses(), *args],
            capture_output=True, text=True, timeout=600,
        )  # fmt: skip
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

    def add_cameras(self, count: int) -> None:
        lots = list(LOTS)
        for i in range(1, count + 1):
            self.cameras.append(camera_daemon(self.config_path, i, lots[(i - 1) % len(lots)], self.workdir).start())

    def acks(self) -> list[dict]:
        return [e for c in self.cameras for e in read_events(c.json_path, "frame_acked")]


def measure_throughput(workdir, quick):
    with BenchCluster(workdir) as c:
        r = c.loadgen("--cameras", "16", "--window", "128", "--duration", "5" if quick else "10")
    return {"rate": r["rate"], "p50_ms": r["p50_ms"], "p99_ms": r["p99_ms"], "errors": r["errors"]}


def measure_latency(workdir, quick):
    with BenchCluster(workdir) as c:
        r = c.loadgen("--cameras", "1", "--window", "1", "--duration", "5" if quick else "10")
    return {"p50_ms": r["p50_ms"], "p99_ms": r["p99_ms"], "rate": r["rate"]}


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
    return {"median_s": round(statistics.median(times), 3), "runs_s": [round(t, 3) for t in times]}


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


def measure_scale(workdir, quick):
    """10,000 cameras, one frame every 10 s each, started over 5 s (a fleet does not start in one millisecond).

    The loadgen opens its window once all are connected and no frame older than
    1 s waits (at the earliest after 15 s), then counts every frame captured in
    the window, from capture to ack; frames of the window never acked count as
    errors.  ``warmup_s``, ``reconnects`` and the generator's own CPU and timer
    lag are reported with the row.
    """
    cameras = 2000 if quick else 10000
    with BenchCluster(workdir) as c:
        r = c.loadgen("--cameras", str(cameras), "--interval", "10", "--window", "4", "--ramp", "5",
                      "--warmup", "15", "--duration", "20" if quick else "40")  # fmt: skip
        rss = c.rss_mb()
    keys = ("connected", "rate", "p50_ms", "p99_ms", "max_ms", "errors", "unacked", "refused", "reconnects",
            "warmup_s", "settled", "gen_cpu", "gen_lag_p99_ms")  # fmt: skip
    return {"cameras": cameras, **{k: r.get(k) for k in keys}, "node_rss_mb": round(rss, 1)}


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
    """etcd on this machine (benchmarks/peer_etcd.py): puts, linearizable reads, kill -9 failover."""
    command = [sys.executable, os.path.join(HERE, "peer_etcd.py"), "--workdir", workdir]
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
    """One row's measurement, ``measure(workdir)`` -> figures; ``paired`` rows run every round, between etcd's."""

    name: str
    measure: Callable[[str], dict]
    paired: bool = False


ROWS = ("throughput", "latency", "failover", "planned_stop", "scale", "day", "pysyncobj", "etcd")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="shorter runs (a smoke test of the bench)")
    parser.add_argument("--skip-peer", action="store_true", help="leave out the peers (PySyncObj and etcd)")
    parser.add_argument("--only", action="append", choices=ROWS, metavar="ROW",
                        help=f"measure only this row (repeatable): {', '.join(ROWS)}")
    parser.add_argument("--rounds", type=int, metavar="N",
                        help="rounds of the rows compared with etcd, interleaved with etcd (default 3, 1 with --quick)")
    parser.add_argument("--day-frames", type=int, default=2_000_000, metavar="N",
                        help="frames the day-of-data row fills the cluster with (default 2,000,000: hours)")
    parser.add_argument("--json-out")
    args = parser.parse_args(argv)
    rounds = args.rounds or (1 if args.quick else 3)
    if rounds < 1:
        parser.error("--rounds must be at least 1")
    steps = [
        Step("throughput", lambda d: measure_throughput(d, args.quick)),
        Step("latency", lambda d: measure_latency(d, args.quick), paired=True),
        Step("failover", lambda d: measure_failover(d, 2 if args.quick else 5), paired=True),
        Step("planned_stop", measure_planned_stop),
        Step("scale", lambda d: measure_scale(d, args.quick)),
        Step("day", lambda d: day.measure_day(d, args.day_frames)),
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
    Row("Durable throughput (acked frames/s, 3 nodes)", "throughput", ("rate",), target="≥ 5,000", fmt="{:,.0f}"),
    Row("Low-load ack latency p50 / p99 (ms); etcd: sequential put", "latency", ("p50_ms", "p99_ms"),
        ("put_p50_ms", "put_p99_ms"), "≤ 2 / ≤ 10"),
    Row("Linearizable read p50 / p99 (ms), leader, 1 client", etcd=("read_p50_ms", "read_p99_ms"), target="p50 ≤ 2"),
    Row("Linearizable reads/s, 16 clients", etcd=("read_rate",), target="≥ 3,000", fmt="{:,.0f}"),
    Row("kill -9 leader → first new ack/put, median of runs (s)", "failover", ("median_s",), ("failover_median_s",),
        "≤ 1.0"),
    Row("Planned leader stop: longest ack gap (ms)", "planned_stop", ("longest_gap_ms",), target="(none set)"),
    Row("{cameras} cameras: p99 (ms) / errors / node RSS (MB)", "scale", ("p99_ms", "errors", "node_rss_mb"),
        target="≤ 250 / 0 / ≤ 300"),
    Row("Day of data: {frames} frames filled in (s) / frames/s / elections", "day",
        ("fill_s", "fill_rate", "elections"), fmt="{:,}", target="— / — / 0"),
    Row("Day of data: ack p99 (ms) of saturating fill rounds with a snapshot / of all (median)", "day",
        ("ack_p99_snap_ms", "ack_p99_fill_ms"), target="≤ 100"),
    Row("Day of data: reactor lag p99 / max (ms, bucket bounds, all nodes)", "day", ("lag_p99_ms", "lag_max_ms"),
        target="— / ≤ 200"),
    Row("Day of data: snapshots / longest copy (s) / a day's /history p99 (ms)", "day",
        ("snapshots", "snapshot_max_s", "history_p99_ms"), target="— / — / ≤ 20"),
    Row("Day of data: node.db + WAL + logs per node (MB)", "day", ("disk_mb",)),
    Row("Day of data: 1 M-row trim", "day", ("trim",)),
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
                          "", "", "≥ 0.5"))  # fmt: skip
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
            f"election 1000 ms; Python client on its v3 JSON gateway, one keep-alive connection; medians of {rounds} "
            f"round(s); Python client CPU in the 16-client read run: "
            f"{etcd.get('client_cpu_s')} s")


if __name__ == "__main__":
    sys.exit(main())
