"""Every node's ``/metrics``, read now and then during a bench row, and what the histograms gained between two reads.

Used by the "day of data" rows (``day.py``, ``day_at.py``).
"""

from __future__ import annotations

import time


def quantile_ms(buckets: dict[float, float], q: float) -> float | None:
    """The smallest bucket bound (ms) holding the ``q`` quantile of a histogram's cumulative buckets; None if empty."""
    total = buckets.get(float("inf"), 0.0)
    if total <= 0:
        return None
    return 1000 * next(b for b in sorted(buckets) if buckets[b] >= q * total)


class Scrapes:
    """Every node's samples of ``names`` (histogram buckets, counters), read at each :meth:`scrape`:
    ``taken`` is [(time, {node: {(sample, le): value}})]."""

    def __init__(self, cluster, names: tuple[str, ...]):
        self.cluster = cluster
        self.names = names
        self.taken: list[tuple[float, dict]] = []

    def scrape(self) -> None:
        from prometheus_client.parser import text_string_to_metric_families

        from parkd.launcher import http_request

        now, nodes = time.time(), {}
        for node_id in self.cluster.nodes:
            try:
                _, _, body = http_request(self.cluster.config, node_id, "/metrics", timeout=5)
            except OSError:
                continue
            samples = {}
            for family in text_string_to_metric_families(body.decode()):
                for s in family.samples:
                    if s.name in self.names:
                        samples[(s.name, s.labels.get("le"))] = s.value
            nodes[node_id] = samples
        self.taken.append((now, nodes))

    def between(self, start: float | None, end: float, name: str, node: str | None = None) -> dict[float, float]:
        """The buckets of ``name`` gained from the last scrape at or before ``start`` (None: since each node
        started) to the first at or after ``end``, summed over the nodes or of ``node`` alone."""
        before = (None, {}) if start is None else next((s for s in reversed(self.taken) if s[0] <= start),
                                                         self.taken[0])  # fmt: skip
        after = next((s for s in self.taken if s[0] >= end), self.taken[-1])
        gained: dict[float, float] = {}
        for node_id, samples in after[1].items():
            if node is not None and node_id != node:
                continue
            for (sample, le), value in samples.items():
                if sample == name:
                    old = before[1].get(node_id, {}).get((sample, le), 0.0)
                    gained[float(le)] = gained.get(float(le), 0.0) + value - old
        return gained
