"""``make bench``: one table, every row measured in this run on this machine.

Rows: durable throughput at saturation (3 nodes, fsync before ack, pipelining
camera connections from the load generator), ack latency at low load (one
frame in flight), kill -9 failover (median of 5), planned leader stop (longest
gap in acks), 10,000 connected cameras (p99 latency, errors, node RSS), and
PySyncObj on the same machine for comparison (benchmarks/peer_pysyncobj.py,
installed into its own venv).

    python benchmarks/bench.py [--quick] [--skip-peer] [--only ROW] [--json-out FILE]
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

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

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


ROWS = ("throughput", "latency", "failover", "planned_stop", "scale", "pysyncobj")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="shorter runs (a smoke test of the bench)")
    parser.add_argument("--skip-peer", action="store_true")
    parser.add_argument("--only", action="append", choices=ROWS, metavar="ROW",
                        help=f"measure only this row (repeatable): {', '.join(ROWS)}")
    parser.add_argument("--json-out")
    args = parser.parse_args(argv)
    workdir = tempfile.mkdtemp(prefix="parkd-bench-")
    results = {}
    steps = [
        ("throughput", lambda: measure_throughput(os.path.join(workdir, "tput"), args.quick)),
        ("latency", lambda: measure_latency(os.path.join(workdir, "lat"), args.quick)),
        ("failover", lambda: measure_failover(os.path.join(workdir, "fail"), 2 if args.quick else 5)),
        ("planned_stop", lambda: measure_planned_stop(os.path.join(workdir, "stop"))),
        ("scale", lambda: measure_scale(os.path.join(workdir, "scale"), args.quick)),
    ]
    if not args.skip_peer:
        steps.append(("pysyncobj", lambda: measure_peer(os.path.join(workdir, "peer"), args.quick)))
    if args.only:
        steps = [(name, step) for name, step in steps if name in args.only]
    for name, step in steps:
        print(f"measuring {name} …", flush=True)
        try:
            results[name] = step()
        except Exception as e:  # a failed row is reported, the others still run
            results[name] = {"error": f"{type(e).__name__}: {e}"[:300]}
        print(f"  {name}: {json.dumps(results[name])}", flush=True)
    print(table(results))
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(results, f, indent=2)
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


def table(r: dict) -> str:
    def get(name, key, fmt="{}"):
        value = r.get(name, {}).get(key)
        return "error" if value is None else fmt.format(value)

    rows = [
        ("throughput", "Durable throughput (acked frames/s, 3 nodes)", get("throughput", "rate", "{:,.0f}"), "≥ 5,000"),
        ("latency", "Low-load ack latency p50 / p99 (ms)", f"{get('latency', 'p50_ms')} / {get('latency', 'p99_ms')}",
         "≤ 2 / ≤ 10"),
        ("failover", "kill -9 leader → first new ack, median of runs (s)", get("failover", "median_s"), "≤ 1.0"),
        ("planned_stop", "Planned leader stop: longest ack gap (ms)", get("planned_stop", "longest_gap_ms"), "(none set)"),
        ("scale", f"{get('scale', 'cameras')} cameras: p99 (ms) / errors / node RSS (MB)",
         f"{get('scale', 'p99_ms')} / {get('scale', 'errors')} / {get('scale', 'node_rss_mb')}", "≤ 250 / 0 / ≤ 300"),
    ]  # fmt: skip
    rows = [row for key, *row in rows if key in r]  # rows not measured in this run (--only) are left out
    if "pysyncobj" in r:
        peer = r["pysyncobj"].get("rate")
        ours = r.get("throughput", {}).get("rate")
        rows.append(("PySyncObj 3 nodes, in memory (committed writes/s)", get("pysyncobj", "rate", "{:,.0f}"), ""))
        ratio = f"{ours / peer:.2f}" if peer and ours else "error"
        if "throughput" in r:
            rows.append(("parkd durable / PySyncObj non-durable", ratio, "≥ 0.5"))
    width = max(len(name) for name, _, _ in rows)
    lines = [f"| {'measure':<{width}} | value | target |", f"|{'-' * (width + 2)}|-------|--------|"]
    lines += [f"| {name:<{width}} | {value} | {target} |" for name, value, target in rows]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
