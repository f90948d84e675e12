"""A day of data in the parking layer: /history from buckets, retention in bounded batches, file sizes.

    .venv/bin/python benchmarks/day_of_data.py [--frames 2000000] [--runs 5] [--dir DIR] [--batch-rows 500]

Builds a node.db like a busy node's (200 cameras at one frame per 10 s, N frames in
log order: 2 M is ~28 h; the trend buckets built from them as the schema 3 upgrade
does), then:

(a) ``ParkingState.history`` for a day's window (86400 s, 200 points; what /history
    runs on the reactor thread), and for 1 h / 1000 points: median and p99 of
    ``--runs`` x 50 calls;
(b) a retention entry that dooms about half the frames, then ``trim_step`` until
    done: per-batch duration (median, p99, max), batches, total;
(c) node.db + WAL before the trim, after it, after the free pages went back
    (``vacuum_step`` until none left) and the WAL was truncated; and, on a copy of
    the trimmed file, the time and result of one full VACUUM (a "defrag" instead).

Not a test: it takes minutes.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import statistics
import tempfile
import time

from parkd.db import checkpoint_truncate, open_engine, vacuum_step
from parkd.parking.retention import ensure_retention_index, retention_entry
from parkd.parking.schema import build_buckets
from parkd.parking.state import ParkingState
from parkd.raft.storage import SqliteStorage
from parkd.raft.types import Entry, EntryKind

CAMERAS = 200
LOTS = {f"lot{n}": 100 for n in range(20)}  # 10 cameras per lot
T0 = 1_700_000_000.0


def frame_of(i: int) -> tuple[int, int, str, float, int]:
    camera = i % CAMERAS + 1
    seq = i // CAMERAS + 1
    return camera, seq, f"lot{camera % 20}", T0 + seq * 10.0 + camera * 0.01, (i * 7919) % 101


def build(path: str, n: int) -> float:
    engine = open_engine(path)
    SqliteStorage(engine)
    ParkingState(engine, LOTS)
    ensure_retention_index(engine)
    engine.dispose()
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA synchronous=OFF")
    db.execute("BEGIN")
    step = 100_000
    for start in range(0, n, step):
        rows = []
        for i in range(start, min(n, start + step)):
            camera, seq, _, at, free = frame_of(i)
            rows.append((camera, seq, free, at, i + 1))
        db.executemany("INSERT INTO frames (camera_id, incarnation, seq, free, captured_at, log_index) "
                       "VALUES (?, 0, ?, ?, ?, ?)", rows)  # fmt: skip
    last = {}
    for i in range(max(0, n - 2 * CAMERAS), n):
        camera, seq, lot, at, free = frame_of(i)
        last[camera] = (camera, lot, seq, free, at)
    db.executemany("INSERT INTO cameras (camera_id, lot, incarnation) VALUES (?, ?, 0)",
                   [(camera, lot) for camera, lot, *_ in last.values()])  # fmt: skip
    db.executemany("INSERT INTO incarnations (camera_id, incarnation, last_seq, free, last_seen) "
                   "VALUES (?, 0, ?, ?, ?)", [(camera, seq, free, at) for camera, _, seq, free, at in last.values()])
    db.execute("UPDATE applied SET last_applied = ?", (n,))
    db.execute("COMMIT")
    db.close()
    engine = open_engine(path)
    with engine.begin() as conn:
        build_buckets(conn)
    checkpoint_truncate(engine)
    engine.dispose()
    return frame_of(n - 1)[3]


def sizes(path: str) -> tuple[float, float]:
    wal = path + "-wal"
    return os.path.getsize(path) / 1e6, (os.path.getsize(wal) if os.path.exists(wal) else 0) / 1e6


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(p * len(values)))]


def history_run(state: ParkingState, end: float, window: float, points: int, calls: int = 50) -> list[float]:
    """Wall times of ``calls`` calls; the CPU time of each is in CPU[-calls:]."""
    times = []
    for k in range(calls):
        lot = f"lot{k % 20}"
        started, cpu = time.perf_counter(), time.thread_time()
        state.history(lot, end - window, end, points)
        times.append(time.perf_counter() - started)
        CPU.append(time.thread_time() - cpu)
    return times


CPU: list[float] = []  # thread CPU time of each timed call: the machine is shared, wall times are noisy


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--frames", type=int, default=2_000_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--batch-rows", type=int, default=500)
    parser.add_argument("--dir", default=None)
    args = parser.parse_args()
    root = tempfile.mkdtemp(prefix="parkd-day-", dir=args.dir)
    try:
        path = os.path.join(root, "node.db")
        started = time.perf_counter()
        end = build(path, args.frames)
        print(f"built {args.frames} frames in {time.perf_counter() - started:.1f}s: "
              f"node.db {sizes(path)[0]:.1f} MB, WAL {sizes(path)[1]:.1f} MB")  # fmt: skip
        engine = open_engine(path)
        state = ParkingState(engine, LOTS)
        for window, points in ((86400.0, 200), (3600.0, 1000)):
            medians, p99s, cpus = [], [], []
            for _ in range(args.runs):
                times = history_run(state, end, window, points)
                medians.append(statistics.median(times))
                p99s.append(pct(times, 0.99))
                cpus.append(pct(CPU[-50:], 0.99))
            print(f"history window={window:.0f}s points={points}: median {1000 * statistics.median(medians):.2f} ms, "
                  f"p99 {1000 * statistics.median(p99s):.2f} ms wall, p99 {1000 * statistics.median(cpus):.2f} ms CPU "
                  f"(medians of {args.runs} runs of 50 calls)")  # fmt: skip
        cutoff = T0 + (args.frames // CAMERAS // 2) * 10.0
        state.apply([Entry(args.frames + 1, 1, EntryKind.NORMAL, retention_entry(cutoff))])
        with engine.connect() as conn:
            doomed = conn.exec_driver_sql("SELECT count(*) FROM frames WHERE captured_at < ?", (cutoff,)).scalar()
        times = history_run(state, end, 86400.0, 200)
        print(f"history with the cut pending: median {1000 * statistics.median(times):.2f} ms, "
              f"p99 {1000 * pct(times, 0.99):.2f} ms")
        db, wal = sizes(path)
        steps, started = [], time.perf_counter()
        cpu = []
        while True:
            t = time.thread_time()
            step = state.trim_step(args.batch_rows)
            cpu.append(time.thread_time() - t)
            steps.append(step)
            if not step.pending:
                break
        total = time.perf_counter() - started
        durations = [s.seconds for s in steps]
        print(f"trim of {steps[-1].done.frames_deleted} frames (~{doomed} captured before the cutoff) in {len(steps)} "
              f"batches of <= {args.batch_rows} rows: batch median {1000 * statistics.median(durations):.2f} ms, "
              f"p99 {1000 * pct(durations, 0.99):.2f} ms, max {1000 * max(durations):.2f} ms wall; CPU median "
              f"{1000 * statistics.median(cpu):.2f} ms, p99 {1000 * pct(cpu, 0.99):.2f} ms; total {total:.1f}s")
        after = sizes(path)
        print(f"before the trim: node.db {db:.1f} MB + WAL {wal:.1f} MB; after: {after[0]:.1f} + {after[1]:.1f} MB")
        checkpoint_truncate(engine)
        defrag = os.path.join(root, "defrag.db")
        shutil.copy(path, defrag)
        if os.path.exists(path + "-wal"):
            shutil.copy(path + "-wal", defrag + "-wal")
        vac, started = [], time.perf_counter()
        while True:
            t = time.thread_time()
            left = vacuum_step(engine)
            vac.append(time.thread_time() - t)
            if not left:
                break
        checkpoint_truncate(engine)
        print(f"incremental vacuum: {len(vac)} steps, step median {1000 * statistics.median(vac):.2f} ms CPU, "
              f"max {1000 * max(vac):.2f} ms, total {time.perf_counter() - started:.1f}s; then WAL truncated: "
              f"node.db {sizes(path)[0]:.1f} MB + WAL {sizes(path)[1]:.1f} MB")  # fmt: skip
        engine.dispose()
        db = sqlite3.connect(defrag, isolation_level=None)
        started = time.perf_counter()
        db.execute("VACUUM")  # what a defrag (or an old file's one-time switch) costs after the trim
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        seconds = time.perf_counter() - started
        db.close()
        print(f"instead, one VACUUM of the trimmed file (offline, or a parkctl defrag): {seconds:.1f}s wall, "
              f"node.db {sizes(defrag)[0]:.1f} MB")  # fmt: skip
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
