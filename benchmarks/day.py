"""The "day of data" rows of ``make bench`` (issue 14): a 3-node cluster filled through the camera path.

    python benchmarks/bench.py --only day [--day-frames 2000000]

Fills a cluster (default settings: a snapshot every 100k entries, staggered per
node) to ``--day-frames`` frames with the load generator (saturating cameras, the
real client protocol), in rounds of 30 s, printing progress to stderr.  Then:

- ``fill_s``, ``fill_rate``: how long the fill took, frames/s;
- ``elections``: leaders elected after the first one (during fill and snapshots);
- ``snapshots``: snapshots taken on all nodes, and the longest copy (``snapshot_max_s``);
- ``ack_p99_snap_ms``: the worst p99 ack latency of the fill rounds in which a node
  took a snapshot (the loadgen's capture-to-ack latency of that round), next to the
  median of all rounds' p99 (``ack_p99_fill_ms``).  The fill saturates the cluster
  (16 cameras, 128 frames in flight each), so these include queueing: they compare
  rounds with and without a snapshot, not the ≤ 100 ms of a normal load;
- ``lag_p99_ms``, ``lag_max_ms``: ``parkd_reactor_lag_seconds`` over every node,
  from the histogram's buckets (a bucket bound: "at most");
- ``history_p99_ms``: 100 reads of a day's ``/history`` of one lot on a follower;
- ``disk_mb``: node.db + WAL + JSON logs per node.

The snapshots and a 1 M-row trim under a normal camera load, at this size, are
measured by the ``day_at`` row (``day_at.py``), once per round.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time

from prometheus_client.parser import text_string_to_metric_families

from parkd.chaos.checker import read_events
from parkd.launcher import http_request

ROUND_S = 30


def history_ms(cluster) -> float:
    """The p99 (the 99th of 100) of reads of a day's /history of one lot on a follower, ms (each a new HTTPS connection)."""
    leader = cluster.leader()
    follower = next(n for n in cluster.nodes if n != leader)
    took = []
    for _ in range(100):
        t = time.perf_counter()
        status, _, _ = http_request(cluster.config, follower, "/api/v1/lots/north/history?window=86400&consistency=local",
                                    timeout=30)  # fmt: skip
        if status != 200:
            raise RuntimeError(f"/history answered {status}")
        took.append(1000 * (time.perf_counter() - t))
    return round(sorted(took)[98], 1)


def disk_mb(cluster, workdir: str) -> str:
    """node.db + WAL + JSON and text logs per node, MB (a JSON object by node id)."""
    disk = {}
    for node_id, node in cluster.nodes.items():
        db = os.path.join(workdir, f"node-{node_id}", "node.db")
        sizes = [os.path.getsize(p) for p in (db, db + "-wal", node.json_path, node.log_path) if os.path.exists(p)]
        disk[node_id] = round(sum(sizes) / 1e6, 1)
    return json.dumps(disk)


def quantile_ms(buckets: dict[float, float], q: float) -> float | None:
    """The smallest bucket bound (ms) holding the ``q`` quantile of a histogram's cumulative buckets; None if empty."""
    total = buckets.get(float("inf"), 0.0)
    if total <= 0:
        return None
    return 1000 * next(b for b in sorted(buckets) if buckets[b] >= q * total)


def lag_buckets(cluster) -> dict[float, float]:
    """``parkd_reactor_lag_seconds`` buckets summed over every node."""
    buckets: dict[float, float] = {}
    for node_id in cluster.nodes:
        _, _, body = http_request(cluster.config, node_id, "/metrics", timeout=10)
        for family in text_string_to_metric_families(body.decode()):
            for s in family.samples:
                if s.name == "parkd_reactor_lag_seconds_bucket":
                    le = float(s.labels["le"])
                    buckets[le] = buckets.get(le, 0.0) + s.value
    return buckets


def _applied(cluster) -> int:
    leader = cluster.leader()
    status = cluster.status(leader) if leader else None
    return status["last_applied"] if status else 0


def measure_day(workdir: str, frames: int) -> dict:
    from bench import BenchCluster

    rounds = []
    started = time.monotonic()
    with BenchCluster(workdir) as c:
        while True:
            done = _applied(c)
            elapsed = time.monotonic() - started
            print(f"day: {done:,} of {frames:,} frames applied after {elapsed:.0f} s", file=sys.stderr, flush=True)
            if done >= frames:
                break
            t0 = time.time()
            r = c.loadgen(16, "--window", "128", "--duration", str(ROUND_S), "--drain", "10")
            rounds.append((t0, time.time(), r))
        fill_s = time.monotonic() - started
        taken = [e for node in c.nodes.values() for e in read_events(node.json_path, "snapshot_taken")]
        elected = [e for node in c.nodes.values() for e in read_events(node.json_path, "leader_elected")]
        during = [r["p99_ms"] for t0, t1, r in rounds
                  if any(t0 <= e["log_time"] - e.get("seconds", 0) <= t1 for e in taken)]  # fmt: skip
        lag = lag_buckets(c)
        history = history_ms(c)
        disk = disk_mb(c, workdir)
    return {
        "frames": frames,
        "fill_s": round(fill_s),
        "fill_rate": round(frames / fill_s),
        "elections": max(0, len(elected) - 1),
        "snapshots": len(taken),
        "snapshot_max_s": round(max((e.get("seconds", 0) for e in taken), default=0), 2),
        "ack_p99_snap_ms": max(during, default=None),
        "ack_p99_fill_ms": statistics.median(r["p99_ms"] for *_, r in rounds) if rounds else None,
        "lag_p99_ms": quantile_ms(lag, 0.99),
        "lag_max_ms": quantile_ms(lag, 1.0),
        "history_p99_ms": history,
        "disk_mb": disk,
    }
