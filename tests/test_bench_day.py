"""Where the "day of data" row locates its worst reactor lag (benchmarks/day.py), from scraped buckets.

The row itself fills a real cluster for minutes and runs with ``python benchmarks/bench.py --only day``.
"""

from __future__ import annotations

import json
import os
import sys

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
if BENCHMARKS not in sys.path:
    sys.path.insert(0, BENCHMARKS)

import day  # noqa: E402

import scrapes  # noqa: E402

INF = float("inf")


def lags(**counts: int) -> dict[float, float]:
    """Cumulative buckets with ``counts`` observations of at most ``le_<ms>`` (the rest at 0.05 s)."""
    bounds = [0.05, 0.2, 0.5, 1.0, INF]
    observed = {0.05: counts.get("fast", 0), 0.2: counts.get("le_200", 0), 0.5: counts.get("le_500", 0)}
    total, buckets = 0, {}
    for le in bounds:
        total += observed.get(le, 0)
        buckets[le] = float(total)
    return buckets


def scraped(*reads: dict[str, dict[float, float]]):
    """Scrapes at t = 0, 1, 2, ... of each node's lag buckets, and the fill rounds between them."""
    taken = scrapes.Scrapes(cluster=None, names=(day.LAG,))
    for t, nodes in enumerate(reads):
        taken.taken.append((float(t), {node: {(day.LAG, "+Inf" if le == INF else str(le)): value
                                              for le, value in buckets.items()} for node, buckets in nodes.items()}))
    rounds = [(t + 0.1, t + 0.9, {}) for t in range(len(reads) - 1)]
    return taken, rounds


def test_a_round_counts_only_what_each_node_gained_in_it():
    taken, rounds = scraped({"1": lags(fast=10, le_500=1), "2": lags(fast=10)},
                            {"1": lags(fast=20, le_500=1), "2": lags(fast=20, le_200=1)})
    assert day.lag_peaks(taken, rounds) == (200.0, [("2", 1)])  # node 1's 500 ms lag was before the fill


def test_every_node_and_round_at_the_highest_bucket_is_kept_and_a_higher_one_replaces_them():
    taken, rounds = scraped({"1": lags(), "2": lags()},
                            {"1": lags(le_200=1), "2": lags(le_200=1)},
                            {"1": lags(le_200=2), "2": lags(le_200=1)},
                            {"1": lags(le_200=2), "2": lags(le_200=1, le_500=1)})
    assert day.lag_peaks(taken, rounds[:2]) == (200.0, [("1", 1), ("2", 1), ("1", 2)])
    assert day.lag_peaks(taken, rounds) == (500.0, [("2", 3)])


def test_the_description_says_whether_the_node_took_a_snapshot_or_a_slow_collection_in_that_round():
    taken, _ = scraped({"1": lags(), "2": lags()},
                       {"1": lags(le_500=1), "2": lags(fast=1)},
                       {"1": lags(le_500=1), "2": lags(fast=1, le_500=1)})
    rounds = [(100.0, 130.0, {}), (131.0, 161.0, {})]
    peaks = day.lag_peaks(taken, [(0.1, 0.9, {}), (1.1, 1.9, {})])
    snapshots = {"1": [{"log_time": 129.0, "seconds": 2.0}], "2": [{"log_time": 120.0, "seconds": 1.0}]}
    collections = {"1": [], "2": [(150.0, 412.3), (120.0, 90.0)]}
    assert day.describe_peaks(peaks, rounds, snapshots, collections) == (
        "500 ms bucket: node 1 round 1/2: snapshot, no slow gc; node 2 round 2/2: no snapshot, gc 412 ms")
    assert day.describe_peaks(peaks, rounds, snapshots, collections, shown=1).endswith("; 1 more")
    assert day.describe_peaks((0.0, []), rounds, snapshots, collections) == "none"


def test_the_whole_fill_counts_from_each_nodes_start_to_the_last_scrape():
    taken, _ = scraped({"1": lags(le_500=1), "2": lags()}, {"1": lags(le_500=1, fast=3), "2": lags(le_200=1)})
    assert taken.between(None, 1.0, day.LAG) == {0.05: 3.0, 0.2: 4.0, 0.5: 5.0, 1.0: 5.0, INF: 5.0}
    assert taken.between(0.0, 1.0, day.LAG, "1") == {0.05: 3.0, 0.2: 3.0, 0.5: 3.0, 1.0: 3.0, INF: 3.0}


def test_slow_collections_are_read_from_the_nodes_json_log(tmp_path):
    path = tmp_path / "node.json"
    events = [{"log_time": 5.0, "parkd_event": "gc_slow", "generation": 2, "ms": 61.5}, {"log_time": 6.0, "ms": 9.0}]
    path.write_text("".join("\x1e" + json.dumps(e) + "\n" for e in events))
    assert day.slow_collections(str(path)) == [(5.0, 61.5)]
    assert day.slow_collections(str(tmp_path / "missing.json")) == []
