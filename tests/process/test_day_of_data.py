"""A trim of most of the history and a burst of history reads on real nodes stall no reactor (issue 14).

Each node's database is filled directly with the same 100k-frame history (as if
applied from a log already compacted into a snapshot at its last index), all of it
older than ``--history-hours``; the nodes then run with cameras, the leader proposes
a retention entry every 2 s, and the housekeeping deletes the history in bounded
batches while the test reads /history from every node.  ``parkd_reactor_lag_seconds``
must never see a lateness above 200 ms, and every acked frame is applied exactly once.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import sys
import time

from prometheus_client.parser import text_string_to_metric_families

from parkd.db import open_engine
from parkd.launcher import http_request, wait_for
from parkd.parking.retention import ensure_retention_index
from parkd.parking.state import ParkingState
from parkd.raft.storage import SqliteStorage

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks"))
import datadir  # noqa: E402

FRAMES = 100_000
CAMERAS = 200  # ids 101..300, ten seconds apart: 500 frames each
LOTS = ("north", "south", "east")
STALL_S = 0.2


def fill(path: str, lots: dict[str, int], now: float, frames: int = FRAMES, older_parkd: bool = False) -> None:
    """A node.db holding ``frames`` frames captured from ~6 h ago on (all older than 1 h), applied up to that index.

    ``older_parkd``: the file is made without ``auto_vacuum = INCREMENTAL``, as every parkd before it made them.
    """
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if older_parkd:
        with contextlib.closing(sqlite3.connect(path)) as db:  # a page written first: open_engine then leaves the mode
            db.execute("CREATE TABLE made_before (x)")
    engine = open_engine(path)
    SqliteStorage(engine)
    ParkingState(engine, lots)
    ensure_retention_index(engine)
    engine.dispose()
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("BEGIN")
    start = now - 6 * 3600
    rows, last = [], {}
    for i in range(frames):
        camera, seq = 101 + i % CAMERAS, i // CAMERAS + 1
        at, free = start + seq * 10.0 + (camera % 10) * 0.1, (i * 7919) % 61
        rows.append((camera, seq, free, at, i + 1))
        last[camera] = (seq, free, at)
    db.executemany("INSERT INTO frames (camera_id, incarnation, seq, free, captured_at, log_index) "
                   "VALUES (?, 0, ?, ?, ?, ?)", rows)  # fmt: skip
    db.executemany("INSERT INTO cameras (camera_id, lot, incarnation) VALUES (?, ?, 0)",
                   [(c, LOTS[c % 3]) for c in last])  # fmt: skip
    db.executemany("INSERT INTO incarnations (camera_id, incarnation, last_seq, free, last_seen) "
                   "VALUES (?, 0, ?, ?, ?)", [(c, *v) for c, v in last.items()])  # fmt: skip
    db.execute("UPDATE applied SET last_applied = ?", (frames,))
    db.execute('UPDATE snapshot_meta SET "index" = ?, term = 1, voters = ?', (frames, "[1, 2, 3]"))
    db.execute('UPDATE hard_state SET term = 1, vote = 0, "commit" = ?', (frames,))
    db.execute("COMMIT")
    db.close()
    datadir.add_buckets(path)


def metrics(cluster, node_id) -> dict[str, float]:
    _, _, body = http_request(cluster.config, node_id, "/metrics")
    return {
        s.name + "".join(f",{k}={v}" for k, v in sorted(s.labels.items())): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }


def frames_left(cluster, node_id) -> int:
    db = sqlite3.connect(f"file:{cluster.db_path(node_id)}?mode=ro", uri=True)
    try:
        return db.execute("SELECT count(*) FROM frames WHERE camera_id > 100").fetchone()[0]
    finally:
        db.close()


def test_a_trim_of_most_of_the_history_and_history_reads_stall_no_reactor(make_cluster, tmp_path):
    lots = {"north": 100, "south": 60, "east": 250}  # the harness's
    first = str(tmp_path / "node-1" / "node.db")
    fill(first, lots, time.time())  # once, copied: every node holds the same state (before the ports are chosen)
    for node_id in (2, 3):
        os.makedirs(tmp_path / f"node-{node_id}")
        shutil.copy(first, tmp_path / f"node-{node_id}" / "node.db")
    cluster = make_cluster(lots=lots, node_args=("--history-hours", "1", "--retention-interval", "2"))
    assert cluster.db_path(3) == str(tmp_path / "node-3" / "node.db")
    cluster.start_all()
    cluster.leader()
    cluster.wait_acks(10)
    # a follower answers local reads once it applied the cluster's id (it may learn that
    # commit only with the leader's next heartbeat: 503 until then)
    cluster.wait_ready()
    seen_lag = 0.0
    reads = 0
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # bounded-poll: history reads from every node until every trim is done
        for node_id in cluster.nodes:
            for lot in LOTS:
                path = f"/api/v1/lots/{lot}/history?window=86400&consistency=local"
                status, _, _ = http_request(cluster.config, node_id, path)
                assert status == 200
                reads += 1
            state = cluster.status(node_id)
            seen_lag = max(seen_lag, state["reactor_lag_ms"] if state else 0.0)
        if all(frames_left(cluster, n) == CAMERAS for n in cluster.nodes):  # each camera's newest frame is kept
            break
    else:
        raise AssertionError({n: frames_left(cluster, n) for n in cluster.nodes})
    for node_id in cluster.nodes:
        m = metrics(cluster, node_id)
        # no timer fired more than 200 ms late during the start, the trim and the reads
        assert m["parkd_reactor_lag_seconds_bucket,le=0.2"] == m["parkd_reactor_lag_seconds_count"], (node_id, m)
        assert m["parkd_retention_rows_trimmed_total"] >= FRAMES - CAMERAS
        assert m["parkd_retention_seconds_count"] >= (FRAMES - CAMERAS) / 1000  # in batches
    assert seen_lag <= STALL_S * 1000 and reads >= 3 * len(LOTS)
    for camera in cluster.cameras.values():
        camera.stop()
    cluster.check_exactly_once()


def pragma(path: str, name: str) -> int:
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        return db.execute(f"PRAGMA {name}").fetchone()[0]


def test_data_dirs_of_an_older_parkd_are_rewritten_once_and_then_give_trimmed_space_back(make_cluster, tmp_path):
    lots = {"north": 100, "south": 60, "east": 250}
    first = str(tmp_path / "node-1" / "node.db")
    fill(first, lots, time.time(), frames=20_000, older_parkd=True)
    assert pragma(first, "auto_vacuum") == 0
    for node_id in (2, 3):
        os.makedirs(tmp_path / f"node-{node_id}")
        shutil.copy(first, tmp_path / f"node-{node_id}" / "node.db")
    cluster = make_cluster(lots=lots, node_args=("--history-hours", "1", "--retention-interval", "2"))
    cluster.start_all()
    cluster.leader()
    cluster.wait_acks(10)
    wait_for(lambda: all(frames_left(cluster, n) == CAMERAS for n in cluster.nodes), timeout=60,
             what="every node trimmed the old history")  # fmt: skip
    for node_id in cluster.nodes:
        path = cluster.db_path(node_id)
        assert pragma(path, "auto_vacuum") == 2, node_id  # INCREMENTAL
        wait_for(lambda: pragma(path, "freelist_count") < 256, timeout=30,
                 what=f"node {node_id} gave the trimmed pages back")  # fmt: skip
        log = cluster.nodes[node_id].log_text()
        assert log.count("was made by an older parkd: rewriting it once") == 1, node_id
    for camera in cluster.cameras.values():
        camera.stop()
    cluster.check_exactly_once()
