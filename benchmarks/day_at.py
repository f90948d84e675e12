"""The "day of data" rows measured at N frames (issue 14): snapshots and a 1 M-row trim under camera load.

    python benchmarks/bench.py --only day_at [--day-frames 2000000] [--rounds 3]

Filling a cluster to 2 M frames through cameras takes about half an hour (the
``day`` row, once per run); this row measures what happens *at* that size, once
per round, so its times are medians.  Each round:

1. A node.db of ``--day-frames`` frames is built directly (``datadir.py``: 200
   cameras, one frame per 10 s each, so 2 M frames span ~28 h ending now; their
   trend buckets built as the schema upgrade does) and copied to the three data
   dirs.  Each copy keeps just enough of the log above its snapshot position
   that, with the default ``snapshot_entries`` and the per-node stagger, node
   ``i`` takes its snapshot ``10 * i`` seconds into the load: three snapshot
   windows, one node at a time as in production.
2. The nodes start with default settings except ``--history-hours`` (set so that
   half of the frames, ~1 M rows, are older) and ``--retention-interval 60``:
   the leader's first retention entry, 60 s after start, dooms them.
3. 200 cameras send one frame per second each (10 x the campus rate) for the
   whole round (240 s: the trim ends about 175 s in), while every node's ``/metrics`` is read every 0.5 s.

Figures: ``ack_p99_snap_ms`` and ``ack_p99_trim_ms``, the p99 of
``parkd_ack_latency_seconds`` (receipt to ack, all nodes) over the scrapes that
cover the snapshot windows and the first cut's deletion (bucket bounds: "at
most"), and ``ack_p99_ms`` over the whole round;
``elections`` after the first; ``lag_p99_ms`` / ``lag_max_ms`` of the reactor lag
over the round; ``snapshot_max_s``; ``trimmed_rows`` (per node, all cuts), ``trim_s`` (the first cut: first to
last batch over all nodes; None if unfinished), ``trim_batch_p99_ms`` and ``trim_batch_max_ms``;
``history_p99_ms`` of 100 day reads on a follower after the round; ``disk_mb`` (node.db + WAL + logs) per node at
the end; ``loadgen_p99_ms`` (capture to ack, whole round).
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time

import datadir
from day import disk_mb, history_ms
from parkd.chaos.checker import read_events
from scrapes import Scrapes, quantile_ms

CAMERAS = 200  # the built history's cameras
LOAD_CAMERAS = 200
LOAD_INTERVAL_S = 1.0
SNAPSHOT_ENTRIES = 100_000  # the default ``snapshot_entries``
STAGGER = 15_000  # 15 % of it per node id (parkd/node/snapshots.py)
SNAPSHOT_EVERY_S = 10.0  # node i snapshots about 10 * i seconds into the load
RETENTION_INTERVAL_S = 60
ROUND_S = 240  # the load's duration: snapshots at 10-30 s, the trim from 60 s on (~115 s for 1 M rows)
SCRAPE_S = 0.5


def build_base(path: str, frames: int) -> float:
    """Build the shared node.db (if not there yet); the capture time of its oldest frames (``t0``)."""
    marker = path + ".t0"
    if os.path.exists(marker):
        with open(marker) as f:
            return float(f.read())
    span = frames / CAMERAS * datadir.FRAME_EVERY_S
    t0 = time.time() - span - 30
    started = time.monotonic()
    log_entries = SNAPSHOT_ENTRIES + 3 * STAGGER
    datadir.build(path, frames, log_entries, cameras=CAMERAS, t0=t0)
    datadir.add_buckets(path)
    print(f"day_at: built {frames:,} frames in {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
    with open(marker, "w") as f:
        f.write(repr(t0))
    return t0


def keep_log(db_path: str, frames: int, node_id: int) -> None:
    """Compact the copy's log so that node ``node_id`` snapshots ``10 * node_id`` s into the load."""
    threshold = SNAPSHOT_ENTRIES + (node_id % 4) * STAGGER
    keep = threshold - int(SNAPSHOT_EVERY_S * node_id * LOAD_CAMERAS / LOAD_INTERVAL_S)
    upto = frames - keep
    db = sqlite3.connect(db_path, isolation_level=None)
    try:
        db.execute("BEGIN")
        db.execute('DELETE FROM entries WHERE "index" <= ?', (upto,))
        db.execute('UPDATE snapshot_meta SET "index" = ?, term = 1', (upto,))
        db.execute("COMMIT")
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        db.close()


def trim_window(scrapes: Scrapes, quiet_s: float = 5.0) -> tuple[float, float] | None:
    """The first cut's deletion over all nodes: from the scrape before its first trimmed row to the first
    scrape after its last (a gap of ``quiet_s`` with nothing trimmed ends it); None if nothing was trimmed
    or it had not ended by the last scrape."""
    key = ("parkd_retention_rows_trimmed_total", None)
    first = last = None
    for (t, nodes), (prev_t, prev) in zip(scrapes.taken[1:], scrapes.taken):
        grew = any(samples.get(key, 0.0) > prev.get(n, {}).get(key, 0.0) for n, samples in nodes.items())
        if grew and first is None:
            first = prev_t
        elif grew and t - last > quiet_s + SCRAPE_S:
            return first, last  # a later cut
        if grew:
            last = t
    if first is None or scrapes.taken[-1][0] - last < quiet_s:
        return None
    return first, last


def measure_day_at(workdir: str, frames: int) -> dict:
    from bench import BenchCluster

    base = os.path.join(os.path.dirname(workdir), f"day-base-{frames}.db")
    t0 = build_base(base, frames)
    span = frames / CAMERAS * datadir.FRAME_EVERY_S
    hours = (time.time() + 5 - (t0 + span / 2)) / 3600  # the leader's cutoff falls mid-history
    extra = ("--history-hours", f"{hours:.4f}", "--retention-interval", str(RETENTION_INTERVAL_S))
    cluster = BenchCluster(workdir, node_args=extra)
    for node_id in cluster.nodes:
        db = os.path.join(workdir, f"node-{node_id}", "node.db")
        datadir.copy_db(base, db)
        keep_log(db, frames, node_id)
    with cluster as c:
        scrapes = Scrapes(c, ("parkd_ack_latency_seconds_bucket", "parkd_reactor_lag_seconds_bucket",
                              "parkd_retention_rows_trimmed_total", "parkd_retention_seconds_bucket"))  # fmt: skip
        command = c.loadgen_command(LOAD_CAMERAS, "--interval", str(LOAD_INTERVAL_S), "--window", "4",
                                    "--duration", str(ROUND_S), "--warmup", "2", "--drain", "10")  # fmt: skip
        load = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            while load.poll() is None:
                scrapes.scrape()
                time.sleep(SCRAPE_S)
            out, err = load.communicate(timeout=60)
        finally:
            if load.poll() is None:
                load.kill()
        if load.returncode != 0:
            raise RuntimeError(err[-2000:])
        scrapes.scrape()
        loadgen = json.loads(out.strip().splitlines()[-1])
        taken = [e for node in c.nodes.values() for e in read_events(node.json_path, "snapshot_taken")]
        elected = [e for node in c.nodes.values() for e in read_events(node.json_path, "leader_elected")]
        snap = [(e["log_time"] - e.get("seconds", 0), e["log_time"]) for e in taken]
        ack_snap = _worst(scrapes, snap, "parkd_ack_latency_seconds_bucket")
        trim = trim_window(scrapes)
        ack_trim = _worst(scrapes, [trim] if trim else [], "parkd_ack_latency_seconds_bucket")
        whole = scrapes.between(scrapes.taken[0][0], scrapes.taken[-1][0], "parkd_reactor_lag_seconds_bucket")
        acks = scrapes.between(scrapes.taken[0][0], scrapes.taken[-1][0], "parkd_ack_latency_seconds_bucket")
        batches = scrapes.between(scrapes.taken[0][0], scrapes.taken[-1][0], "parkd_retention_seconds_bucket")
        trimmed = sum(samples.get(("parkd_retention_rows_trimmed_total", None), 0.0)
                      for samples in scrapes.taken[-1][1].values()) / len(c.nodes)  # fmt: skip
        history = history_ms(c)
        disk = disk_mb(c, workdir)
    return {
        "frames": frames,
        "snapshots": len(taken),
        "snapshot_max_s": round(max((e.get("seconds", 0) for e in taken), default=0), 2),
        "ack_p99_snap_ms": ack_snap,
        "ack_p99_trim_ms": ack_trim,
        "ack_p99_ms": quantile_ms(acks, 0.99),
        "elections": max(0, len(elected) - 1),
        "lag_p99_ms": quantile_ms(whole, 0.99),
        "lag_max_ms": quantile_ms(whole, 1.0),
        "trimmed_rows": round(trimmed),
        "trim_s": round(trim[1] - trim[0], 1) if trim else None,
        "trim_batch_p99_ms": quantile_ms(batches, 0.99),
        "trim_batch_max_ms": quantile_ms(batches, 1.0),
        "history_p99_ms": history,
        "disk_mb": disk,
        "loadgen_p99_ms": loadgen.get("p99_ms"),
    }


def _worst(scrapes: Scrapes, windows: list[tuple[float, float]], name: str) -> float | None:
    """The worst p99 (ms) over ``windows``, each from the scrapes around it."""
    p99s = [quantile_ms(scrapes.between(start, end, name), 0.99) for start, end in windows]
    return max((p for p in p99s if p is not None), default=None)
