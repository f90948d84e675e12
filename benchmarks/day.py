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
  from the histogram's buckets (a bucket bound: "at most"); ``lag_max_at``: the
  nodes and fill rounds whose lag reached that maximum, and whether the node took a
  snapshot or logged a slow garbage collection in that round (:class:`LagPeaks`);
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
from twisted.logger import eventsFromJSONLogFile

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


def node_lag_buckets(cluster) -> dict[str, dict[float, float]]:
    """Each node's ``parkd_reactor_lag_seconds`` buckets (cumulative, as scraped)."""
    nodes = {}
    for node_id in cluster.nodes:
        _, _, body = http_request(cluster.config, node_id, "/metrics", timeout=10)
        nodes[node_id] = {float(s.labels["le"]): s.value for family in text_string_to_metric_families(body.decode())
                          for s in family.samples if s.name == "parkd_reactor_lag_seconds_bucket"}  # fmt: skip
    return nodes


def summed(nodes: dict[str, dict[float, float]]) -> dict[float, float]:
    """The nodes' buckets added up."""
    buckets: dict[float, float] = {}
    for node in nodes.values():
        for le, value in node.items():
            buckets[le] = buckets.get(le, 0.0) + value
    return buckets


class LagPeaks:
    """Where the fill's worst reactor lag happened: the (node, round) pairs whose lag reached the highest bucket.

    The nodes' histograms are read after every fill round; a round's lag on a node
    is what its buckets gained in that round.
    """

    def __init__(self, first: dict[str, dict[float, float]]):
        self._last = first
        self.ms = 0.0
        self.at: list[tuple[str, int]] = []  # (node, round number) with a lag in the highest bucket so far

    def round_ended(self, round_no: int, nodes: dict[str, dict[float, float]]) -> None:
        for node_id, buckets in nodes.items():
            before = self._last.get(node_id, {})
            worst = quantile_ms({le: value - before.get(le, 0.0) for le, value in buckets.items()}, 1.0)
            if worst is None or worst < self.ms:
                continue
            if worst > self.ms:
                self.ms, self.at = worst, []
            self.at.append((node_id, round_no))
        self._last = nodes


def slow_collections(json_path: str) -> list[tuple[float, float]]:
    """(log time, ms) of each collection a node logged as slow (``parkd_gc_ms``, over 50 ms)."""
    if not os.path.exists(json_path):
        return []
    with open(json_path, encoding="utf-8") as f:
        return [(e["log_time"], e["parkd_gc_ms"]) for e in eventsFromJSONLogFile(f) if "parkd_gc_ms" in e]


def describe_peaks(peaks: LagPeaks, rounds: list[tuple[float, float, dict]], snapshots: dict[str, list[dict]],
                   collections: dict[str, list[tuple[float, float]]], shown: int = 3) -> str:
    """Which nodes in which rounds reached the maximum, and whether a snapshot or a slow collection ran there then.

    The maximum is that of the fill rounds; it names its bucket, as the whole run's
    ``lag_max_ms`` also counts the start-up and the /history reads after the fill.
    """
    if not peaks.at:
        return "none"
    parts = []
    for node_id, round_no in peaks.at[:shown]:
        t0, t1, _ = rounds[round_no - 1]
        snapped = any(t0 <= e["log_time"] and e["log_time"] - e.get("seconds", 0) <= t1 for e in snapshots[node_id])
        gc_ms = max((ms for at, ms in collections[node_id] if t0 <= at <= t1), default=None)
        parts.append(f"node {node_id} round {round_no}/{len(rounds)}: " + ("snapshot" if snapped else "no snapshot")
                     + (f", gc {gc_ms:.0f} ms" if gc_ms else ", no slow gc"))  # fmt: skip
    more = len(peaks.at) - shown
    return f"{peaks.ms:.0f} ms bucket: " + "; ".join(parts) + (f"; {more} more" if more > 0 else "")


def _applied(cluster) -> int:
    leader = cluster.leader()
    status = cluster.status(leader) if leader else None
    return status["last_applied"] if status else 0


def measure_day(workdir: str, frames: int) -> dict:
    from bench import BenchCluster

    rounds = []
    started = time.monotonic()
    with BenchCluster(workdir) as c:
        peaks = LagPeaks(node_lag_buckets(c))
        while True:
            done = _applied(c)
            elapsed = time.monotonic() - started
            print(f"day: {done:,} of {frames:,} frames applied after {elapsed:.0f} s", file=sys.stderr, flush=True)
            if done >= frames:
                break
            t0 = time.time()
            r = c.loadgen(16, "--window", "128", "--duration", str(ROUND_S), "--drain", "10")
            rounds.append((t0, time.time(), r))
            peaks.round_ended(len(rounds), node_lag_buckets(c))
        fill_s = time.monotonic() - started
        snapshots = {node_id: read_events(node.json_path, "snapshot_taken") for node_id, node in c.nodes.items()}
        taken = [e for events in snapshots.values() for e in events]
        elected = [e for node in c.nodes.values() for e in read_events(node.json_path, "leader_elected")]
        during = [r["p99_ms"] for t0, t1, r in rounds
                  if any(t0 <= e["log_time"] - e.get("seconds", 0) <= t1 for e in taken)]  # fmt: skip
        lag = summed(node_lag_buckets(c))
        collections = {node_id: slow_collections(node.json_path) for node_id, node in c.nodes.items()}
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
        "lag_max_at": describe_peaks(peaks, rounds, snapshots, collections),
        "history_p99_ms": history,
        "disk_mb": disk,
    }
