"""How long a snapshot of a 1M-frame history takes, and how much it stalls the reactor thread.

    .venv/bin/python benchmarks/snapshot_pause.py [--frames 1000000] [--runs 3] [--dir DIR]

Builds a node.db like a busy node's (parking tables with N frames from 100 cameras in
log order, the last 10k log entries, a stored snapshot below them), then per run:

(a) ``pin_state`` on the main thread, then ``PinnedState.write`` in a background thread
    (as the node does): wall time and file size;
(b) meanwhile the MAIN thread plays reactor: it wakes every 10 ms, records how late it
    woke, and applies one new frame per wake-up (SqliteStorage.save + ParkingState.apply,
    as the node does), recording the longest such write;
(c) ``install_snapshot`` (parkd/node/snapshots.py) of the file into a fresh database (a
    new follower) and into a copy of the full one (a lagging follower: every row replaced).

Also: a baseline of (b) without a snapshot, the same with ``batch_rows`` slices, and one
retention trim.  Prints medians of the runs.  Not a test: it sleeps and takes a while.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sqlite3
import statistics
import tempfile
import threading
import time

from parkd.db import open_engine
from parkd.node.snapshots import install_snapshot
from parkd.parking import snapshot
from parkd.parking.codec import FrameResult, encode
from parkd.parking.retention import ensure_retention_index, trim_history
from parkd.parking.state import ParkingState
from parkd.raft.storage import SqliteStorage
from parkd.raft.types import Entry, EntryKind, HardState

LOTS = {"north": 100, "south": 100}
CAMERAS = 100
TICK_S = 0.010
KEEP_ENTRIES = 10_000
T0 = 1_700_000_000.0


def frame_of(i: int) -> tuple[int, int, str, float, int]:
    """The i-th frame (from 0) in log order: camera, seq, lot, captured_at, free."""
    camera = i % CAMERAS + 1
    seq = i // CAMERAS + 1
    return camera, seq, "north" if camera % 2 else "south", T0 + seq * 10.0, (i * 7919) % 101


def entry_of(i: int) -> Entry:
    camera, seq, lot, at, free = frame_of(i)
    return Entry(i + 1, 1, EntryKind.NORMAL, encode(FrameResult(camera, lot, seq, at, free)))


def build(path: str, n: int, index: bool) -> None:
    engine = open_engine(path)
    SqliteStorage(engine)
    ParkingState(engine, LOTS)
    if index:
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
        # every frame in incarnation 0 (parking schema 2)
        db.executemany(
            "INSERT INTO frames (camera_id, incarnation, seq, free, captured_at, log_index) "
            "VALUES (?, 0, ?, ?, ?, ?)",
            rows,
        )
    last = {}
    for i in range(max(0, n - 2 * CAMERAS), n):
        camera, seq, lot, at, free = frame_of(i)
        last[camera] = (camera, lot, seq, free, at)
    db.executemany("INSERT INTO cameras (camera_id, lot, incarnation) VALUES (?, ?, 0)",
                   [(camera, lot) for camera, lot, *_ in last.values()])  # fmt: skip
    db.executemany(
        "INSERT INTO incarnations (camera_id, incarnation, last_seq, free, last_seen) VALUES (?, 0, ?, ?, ?)",
        [(camera, seq, free, at) for camera, _, seq, free, at in last.values()],
    )
    final = {lot: (free, at) for _, lot, _, free, at in last.values()}
    lots = [(free, at, lot) for lot, (free, at) in final.items()]
    db.executemany("UPDATE lots SET free = ?, updated_at = ? WHERE id = ?", lots)
    db.execute("UPDATE applied SET last_applied = ?", (n,))
    kept = [entry_of(i) for i in range(max(0, n - KEEP_ENTRIES), n)]
    db.executemany('INSERT INTO entries ("index", term, kind, data) VALUES (?, ?, ?, ?)',
                   [(e.index, e.term, int(e.kind), e.data) for e in kept])  # fmt: skip
    compacted = max(0, n - KEEP_ENTRIES)
    db.execute('UPDATE snapshot_meta SET "index" = ?, term = 1, voters = ?', (compacted, "[1, 2, 3]"))
    db.execute("UPDATE hard_state SET term = 1, vote = 1, \"commit\" = ?", (n,))
    db.execute("COMMIT")
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()


def install_in_thread_run(snap: str, target: str, index: bool) -> dict:
    """install_snapshot on a worker thread while the main thread only reads (every TICK_S)."""
    engine = open_engine(target)
    storage = SqliteStorage(engine)
    state = ParkingState(engine, LOTS)
    if index:
        ensure_retention_index(engine)
    thread = threading.Thread(target=lambda: install_snapshot(engine, storage, snap))
    late = []
    due = time.perf_counter() + TICK_S
    thread.start()
    while thread.is_alive():
        time.sleep(max(0.0, due - time.perf_counter()))
        late.append(time.perf_counter() - due)
        state.lots()
        state.last_applied()
        due = max(due + TICK_S, time.perf_counter())
    thread.join()
    engine.dispose()
    return {"max_late_ms": 1000 * max(late, default=0.0)}


class Reactor:
    """The main thread's loop: wake every TICK_S, apply one frame, record lateness."""

    def __init__(self, path: str, next_index: int) -> None:
        self.engine = open_engine(path)
        self.storage = SqliteStorage(self.engine)
        self.state = ParkingState(self.engine, LOTS)
        self.next = next_index

    def run_while(self, busy: threading.Thread | None, seconds: float | None = None) -> dict:
        late, work = [], []
        deadline = time.perf_counter() + (seconds or 0)
        due = time.perf_counter() + TICK_S
        while (busy.is_alive() if busy else time.perf_counter() < deadline):
            time.sleep(max(0.0, due - time.perf_counter()))
            woke = time.perf_counter()
            late.append(woke - due)
            entry = entry_of(self.next - 1)
            self.storage.save(HardState(1, 1, entry.index), [entry])
            self.state.apply([entry])
            self.next += 1
            work.append(time.perf_counter() - woke)
            due = max(due + TICK_S, time.perf_counter())
        late.sort()
        return {
            "ticks": len(late),
            "max_late_ms": 1000 * late[-1] if late else 0.0,
            "p99_late_ms": 1000 * late[int(0.99 * (len(late) - 1))] if late else 0.0,
            "max_apply_ms": 1000 * max(work, default=0.0),
        }

    def close(self) -> None:
        self.engine.dispose()


def snapshot_run(db: str, out: str, n: int, rows: int | None) -> dict:
    reactor = Reactor(db, reactor_next(db))
    box: list = []
    members = tuple({"id": i} for i in (1, 2, 3))
    pinned = snapshot.pin_state(db)  # on the "reactor", as the node does; build() wrote term 1 everywhere
    raft = {"term": 1, "voters": (1, 2, 3), "learners": (), "config_index": 0}
    thread = threading.Thread(
        target=lambda: box.append(pinned.write(out, **raft, members=members, batch_rows=rows)),
        name="snapshot-writer",
    )
    thread.start()
    pauses = reactor.run_while(thread)
    thread.join()
    reactor.close()
    info = box[0]
    return {"write_s": info.seconds, "size_mb": info.size_bytes / 1e6, "index": info.index, **pauses}


def reactor_next(db: str) -> int:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT last_applied FROM applied").fetchone()[0] + 1


def install_run(snap: str, target: str, fresh: bool, index: bool) -> float:
    if fresh:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(target)
    engine = open_engine(target)
    storage = SqliteStorage(engine)
    ParkingState(engine, LOTS)
    if index:
        ensure_retention_index(engine)
    started = time.perf_counter()
    install_snapshot(engine, storage, snap)
    seconds = time.perf_counter() - started
    engine.dispose()
    return seconds


def median(rows: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dir", default=None, help="work directory (default: a temporary one)")
    parser.add_argument(
        "--no-retention-index", dest="index", action="store_false", help="no frames.captured_at index"
    )
    args = parser.parse_args()
    work = args.dir or tempfile.mkdtemp(prefix="parkd-snapbench-")
    os.makedirs(work, exist_ok=True)
    db = os.path.join(work, "node.db")
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(db + suffix)
    started = time.perf_counter()
    build(db, args.frames, args.index)
    base = os.path.join(work, "lagging.db")  # as built: what a lagging follower holds
    shutil.copyfile(db, base)
    size_mb, took = os.path.getsize(db) / 1e6, time.perf_counter() - started
    print(f"built {db}: {args.frames:,} frames, {size_mb:.0f} MB in {took:.1f} s")

    baseline = []
    for _ in range(args.runs):
        reactor = Reactor(db, reactor_next(db))
        baseline.append(reactor.run_while(None, seconds=2.0))
        reactor.close()

    variants = {}
    for label, batch_rows in (("one statement", None), ("slices of 10k", 10_000)):
        rows = [snapshot_run(db, os.path.join(work, f"snap-{label[0]}-{r}.db"), args.frames, batch_rows)
                for r in range(args.runs)]  # fmt: skip
        variants[label] = rows

    snap = os.path.join(work, "snap-o-0.db")
    fresh = [install_run(snap, os.path.join(work, "fresh.db"), True, args.index) for _ in range(args.runs)]
    replace = []
    for r in range(args.runs):
        target = os.path.join(work, f"full-{r}.db")
        for suffix in ("-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(target + suffix)
        shutil.copyfile(base, target)
        replace.append(install_run(snap, target, False, args.index))

    threaded = []
    for r in range(args.runs):
        target = os.path.join(work, f"threaded-{r}.db")
        shutil.copyfile(base, target)
        threaded.append(install_in_thread_run(snap, target, args.index))

    trims = []
    for r in range(args.runs):
        target = os.path.join(work, f"full-{r}.db")
        engine = open_engine(target)
        cutoff = T0 + 600.0  # the oldest 10 minutes: one trim at the default interval
        t = time.perf_counter()
        result = trim_history(engine, cutoff)
        trims.append((time.perf_counter() - t, result.frames_deleted))
        engine.dispose()

    print(f"\nmedian of {args.runs} runs; reactor tick {TICK_S * 1000:.0f} ms, one frame applied per tick; "
          f"retention index {'on' if args.index else 'off'}")
    header = f"{'':28} {'write s':>8} {'MB':>6} {'max late ms':>12} {'p99 late ms':>12} {'max apply ms':>13}"
    header += f" {'ticks':>6}"
    print(header)
    print("-" * len(header))
    print(f"{'baseline (no snapshot, 2 s)':28} {'':>8} {'':>6} {median(baseline, 'max_late_ms'):12.1f} "
          f"{median(baseline, 'p99_late_ms'):12.1f} {median(baseline, 'max_apply_ms'):13.1f} "
          f"{median(baseline, 'ticks'):6.0f}")  # fmt: skip
    for label, rows in variants.items():
        print(f"{'snapshot, ' + label:28} {median(rows, 'write_s'):8.2f} {median(rows, 'size_mb'):6.1f} "
              f"{median(rows, 'max_late_ms'):12.1f} {median(rows, 'p99_late_ms'):12.1f} "
              f"{median(rows, 'max_apply_ms'):13.1f} {median(rows, 'ticks'):6.0f}")  # fmt: skip
    print(f"\ninstall_snapshot into a fresh db:       {statistics.median(fresh):.2f} s")
    print(f"install_snapshot replacing a full db:   {statistics.median(replace):.2f} s")
    print(f"  same on a worker thread, main thread reading every {TICK_S * 1000:.0f} ms: "
          f"max lateness {median(threaded, 'max_late_ms'):.1f} ms")
    print(f"retention trim of {statistics.median(n for _, n in trims):,.0f} frames: "
          f"{statistics.median(s for s, _ in trims) * 1000:.0f} ms")
    if not args.dir:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
