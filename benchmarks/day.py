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
  snapshot or logged a slow garbage collection in that round (:func:`lag_peaks`);
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

from parkd.chaos.checker import read_events
from parkd.launcher import http_request
from scrapes import Scrapes, quantile_ms

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


LAG = "parkd_reactor_lag_seconds_bucket"


def lag_peaks(scrapes: Scrapes, rounds: list[tuple[float, float, dict]]) -> tuple[float, list[tuple[str, int]]]:
    """The fill rounds' worst reactor lag (ms, a bucket bound) and every (node, round number) that reached it.

    A round's lag on a node is what its buckets gained from the scrape before the
    round to the one after it.
    """
    worst_ms, at = 0.0, []
    for round_no, (t0, t1, _) in enumerate(rounds, 1):
        for node_id in scrapes.taken[-1][1]:
            ms = quantile_ms(scrapes.between(t0, t1, LAG, node_id), 1.0)
            if ms is None or ms < worst_ms:
                continue
            if ms > worst_ms:
                worst_ms, at = ms, []
            at.append((node_id, round_no))
    return worst_ms, at


def slow_collections(json_path: str) -> list[tuple[float, float]]:
    """(log time, ms) of each collection a node logged as slow (``gc_slow``, over 50 ms)."""
    return [(e["log_time"], e["ms"]) for e in read_events(json_path, "gc_slow")]


def describe_peaks(peaks: tuple[float, list[tuple[str, int]]], rounds: list[tuple[float, float, dict]],
                   snapshots: dict[str, list[dict]], collections: dict[str, list[tuple[float, float]]],
                   shown: int = 3) -> str:
    """Which nodes in which rounds reached the maximum, and whether a snapshot or a slow collection ran there then.

    The maximum is that of the fill rounds; it names its bucket, as ``lag_max_ms``
    also counts the nodes' start-up.
    """
    worst_ms, at = peaks
    if not at:
        return "none"
    parts = []
    for node_id, round_no in at[:shown]:
        t0, t1, _ = rounds[round_no - 1]
        snapped = any(t0 <= e["log_time"] and e["log_time"] - e.get("seconds", 0) <= t1 for e in snapshots[node_id])
        gc_ms = max((ms for at, ms in collections[node_id] if t0 <= at <= t1), default=None)
        parts.append(f"node {node_id} round {round_no}/{len(rounds)}: " + ("snapshot" if snapped else "no snapshot")
                     + (f", gc {gc_ms:.0f} ms" if gc_ms else ", no slow gc"))  # fmt: skip
    more = len(at) - shown
    return f"{worst_ms:.0f} ms bucket: " + "; ".join(parts) + (f"; {more} more" if more > 0 else "")


def _applied(cluster) -> int:
    leader = cluster.leader()
    status = cluster.status(leader) if leader else None
    return status["last_applied"] if status else 0


def measure_day(workdir: str, frames: int) -> dict:
    from bench import BenchCluster

    rounds = []
    started = time.monotonic()
    with BenchCluster(workdir) as c:
        scrapes = Scrapes(c, (LAG,))
        scrapes.scrape()
        while True:
            done = _applied(c)
            elapsed = time.monotonic() - started
            print(f"day: {done:,} of {frames:,} frames applied after {elapsed:.0f} s", file=sys.stderr, flush=True)
            if done >= frames:
                break
            t0 = time.time()
            r = c.loadgen(16, "--window", "128", "--duration", str(ROUND_S), "--drain", "10")
            rounds.append((t0, time.time(), r))
            scrapes.scrape()
        fill_s = time.monotonic() - started
        snapshots = {node_id: read_events(node.json_path, "snapshot_taken") for node_id, node in c.nodes.items()}
        taken = [e for events in snapshots.values() for e in events]
        elected = [e for node in c.nodes.values() for e in read_events(node.json_path, "leader_elected")]
        during = [r["p99_ms"] for t0, t1, r in rounds
                  if any(t0 <= e["log_time"] - e.get("seconds", 0) <= t1 for e in taken)]  # fmt: skip
        lag = scrapes.between(None, scrapes.taken[-1][0], LAG)  # since each node started
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
        "lag_max_at": describe_peaks(lag_peaks(scrapes, rounds), rounds, snapshots, collections),
        "history_p99_ms": history,
        "disk_mb": disk,
    }
