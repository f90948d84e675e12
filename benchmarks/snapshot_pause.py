"""How long the snapshot work of a node takes at N frames, and how much of it stalls the reactor thread.

    .venv/bin/python benchmarks/snapshot_pause.py [--frames 1000000] [--runs 3] [--only take,compact,install,send]
                                                  [--log-entries 110000] [--dir DIR] [--keep]

Builds a ``node.db`` like a busy node's directly with SQL (parking schema 2: N frames of
100 cameras in incarnation 0, in log order; the retention index; the last
``--log-entries`` Raft log entries above a stored snapshot: what a node holds when its
next snapshot is due), then per run, on a fresh copy of it, with the MAIN thread
playing the reactor (every 10 ms it wakes, and records how late it woke):

(a) **take**: ``pin_state`` on the main thread, the copy (``PinnedState.write``) on a
    worker thread as the node does, while the main thread applies one frame per
    wake-up (``SqliteStorage.save`` + ``ParkingState.apply``); then 1 s more of that
    (the WAL checkpoint that the pinned read held back lands on one of those commits);
(b) **compact**: the log compaction that follows (``storage.compact`` for the
    snapshot's index minus the 10k margin, as the driver does it), while the main
    thread goes on applying;
(c) **install**: the snapshot installed (as ``SnapshotManager.install`` does)
    into a copy of the node's database (a lagging follower: every row replaced) on a
    worker thread while the main thread reads (lots, last applied: what HTTP reads
    do; a follower's driver writes nothing while it installs), then its first write;
(d) **send**: the file streamed in 1 MiB chunks through ``read_chunk`` and a
    ``SnapshotReceiver`` on the main thread (each chunk is handled on the reactor).

Prints the medians of the runs for each phase: wall time of the work, and the main
thread's worst lateness (``max late``), its 99th percentile, and its longest own
database write (``max write``, the time of the statement(s) it ran on a wake-up).
Not a test: it sleeps and takes a while.  Profile a phase with py-spy:

    .venv/bin/py-spy record --idle --threads -o run/snap.svg -- \
        .venv/bin/python benchmarks/snapshot_pause.py --only take --runs 1
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(HERE), HERE]

import datadir  # noqa: E402
from parkd.db import open_engine  # noqa: E402
from parkd.node.snapshot_stream import (  # noqa: E402
    CHUNK_SIZE, SnapshotReceiver, read_chunk, snapshot_sha256, transfer_size)
from parkd.parking import snapshot  # noqa: E402
from parkd.parking.state import ParkingState  # noqa: E402
from parkd.parking.snapshot import restore_snapshot  # noqa: E402
from parkd.raft.storage import SqliteStorage, install_snapshot_in  # noqa: E402
from parkd.raft.types import HardState, SnapshotMeta  # noqa: E402

LOTS = {"north": 100, "south": 60, "east": 250}
FRAMES = datadir.Frames(sorted(LOTS), cameras=100, first_camera=1000)
TICK_S = 0.010
MARGIN = 10_000  # CompactionPolicy.margin
PHASES = ("take", "compact", "install", "send")
VOTERS = (1, 2, 3)


def wal_mb(path: str) -> float:
    try:
        return os.path.getsize(path + "-wal") / 1e6
    except FileNotFoundError:
        return 0.0


class Reactor:
    """The main thread: wake every TICK_S, do one small piece of a node's work, record lateness."""

    def __init__(self, path: str) -> None:
        self.engine = open_engine(path)
        self.storage = SqliteStorage(self.engine)
        self.state = ParkingState(self.engine, LOTS)
        self.next = self.state.last_applied() + 1
        self.late: list[float] = []
        self.work: list[float] = []

    def apply_one(self) -> None:
        """What a node does per entry: save it (fsynced), apply it (not fsynced)."""
        entry = FRAMES.entry(self.next - 1)
        self.storage.save(HardState(1, 1, entry.index), [entry])
        self.state.apply([entry])
        self.next += 1

    def read(self) -> None:
        """What HTTP reads do on a follower that installs a snapshot."""
        self.state.lots()
        self.state.last_applied()

    def run(self, action, until) -> None:
        """``action()`` every TICK_S until ``until()`` is true (checked at each wake-up)."""
        due = time.perf_counter() + TICK_S
        while not until():
            time.sleep(max(0.0, due - time.perf_counter()))
            woke = time.perf_counter()
            self.late.append(woke - due)
            action()
            self.work.append(time.perf_counter() - woke)
            due = max(due + TICK_S, time.perf_counter())

    def run_for(self, action, seconds: float) -> None:
        deadline = time.perf_counter() + seconds
        self.run(action, lambda: time.perf_counter() >= deadline)

    def timed(self, function, *args):
        """``function(*args)`` on the main thread as one (long) wake-up: lateness for the ticks it blocks."""
        started = time.perf_counter()
        result = function(*args)
        took = time.perf_counter() - started
        self.late.append(took)
        self.work.append(took)
        return result, took

    def figures(self) -> dict:
        late = sorted(self.late)
        return {
            "ticks": len(late),
            "max_late_ms": 1000 * late[-1] if late else 0.0,
            "p99_late_ms": 1000 * late[int(0.99 * (len(late) - 1))] if late else 0.0,
            "max_write_ms": 1000 * max(self.work, default=0.0),
        }

    def close(self) -> None:
        self.engine.dispose()


def in_thread(function, *args) -> tuple[threading.Thread, list]:
    box: list = []

    def run():
        try:
            box.append(function(*args))
        except BaseException as e:  # shown by the caller
            box.append(e)

    thread = threading.Thread(target=run, name="snapshot-worker")
    thread.start()
    return thread, box


def result_of(box: list):
    if isinstance(box[0], BaseException):
        raise box[0]
    return box[0]


# -- what the node does, as this parkd does it -----------------------------------------------


def start_compaction(reactor: Reactor, meta: SnapshotMeta, upto: int):
    """The driver's compaction (the meta and a first batch), then one ``trim`` batch per wake-up
    between the applies, as the snapshot manager schedules them; returns "is it done?"."""
    reactor.timed(reactor.storage.compact, upto, meta)
    left = [True]

    def done() -> bool:
        if left[0]:
            started = time.perf_counter()
            left[0] = reactor.storage.trim()
            reactor.work.append(time.perf_counter() - started)
        return not left[0]

    return done


def start_install(reactor: Reactor, snap: str, meta: SnapshotMeta) -> tuple[threading.Thread, list]:
    """The snapshot manager's install: one transaction on the snapshot thread."""
    return in_thread(restore_snapshot, reactor.engine, snap, lambda conn: install_snapshot_in(conn, meta))


def take_phase(db: str, out: str) -> tuple[dict, snapshot.SnapshotInfo]:
    reactor = Reactor(db)
    pinned = snapshot.pin_state(db)  # on the "reactor", as the node does; build() wrote term 1 everywhere
    members = tuple({"id": i} for i in VOTERS)

    def copy():
        info = pinned.write(out, term=1, voters=VOTERS, learners=(), config_index=0, members=members)
        snapshot_sha256(info.path)
        return info

    started = time.perf_counter()
    thread, box = in_thread(copy)
    reactor.run(reactor.apply_one, lambda: not thread.is_alive())
    took = time.perf_counter() - started
    info = result_of(box)
    wal_after_copy = wal_mb(db)
    reactor.run_for(reactor.apply_one, 1.0)
    reactor.close()
    return {"work_s": took, "size_mb": info.size_bytes / 1e6, "wal_mb": wal_after_copy, **reactor.figures()}, info


def compact_phase(db: str, info: snapshot.SnapshotInfo) -> dict:
    reactor = Reactor(db)
    meta = SnapshotMeta(info.index, 1, VOTERS, ())
    upto = max(0, info.index - MARGIN)
    before = reactor.storage._snapshot_meta.index
    reactor.run_for(reactor.apply_one, 0.2)
    started = time.perf_counter()
    compacted = start_compaction(reactor, meta, upto)
    reactor.run(reactor.apply_one, compacted)
    took = time.perf_counter() - started
    reactor.run_for(reactor.apply_one, 1.0)
    reactor.close()
    return {"work_s": took, "entries": upto - before, "wal_mb": wal_mb(db), **reactor.figures()}


def install_phase(snap: str, db: str) -> dict:
    reactor = Reactor(db)
    meta = snapshot.read_snapshot_meta(snap).meta
    started = time.perf_counter()
    thread, box = start_install(reactor, snap, meta)
    reactor.run(reactor.read, lambda: not thread.is_alive())
    took = time.perf_counter() - started
    result_of(box)
    reactor.storage.refresh()
    _, first = reactor.timed(reactor.apply_one)
    reactor.run_for(reactor.apply_one, 1.0)
    reactor.close()
    return {"work_s": took, "first_write_ms": 1000 * first, "wal_mb": wal_mb(db), **reactor.figures()}


def send_phase(snap: str, work: str) -> dict:
    incoming = os.path.join(work, "incoming")
    shutil.rmtree(incoming, ignore_errors=True)
    receiver = SnapshotReceiver(incoming)
    meta = snapshot.read_snapshot_meta(snap).meta
    total = transfer_size(snap)
    chunks, offset = [], 0
    started = time.perf_counter()
    while offset < total:
        t = time.perf_counter()
        data = read_chunk(snap, offset, CHUNK_SIZE)
        received = receiver.accept(meta.index, meta.term, offset, data, offset + len(data) >= total)
        chunks.append(time.perf_counter() - t)
        offset = received.next_offset
        if received.done:
            break
    took = time.perf_counter() - started
    shutil.rmtree(incoming, ignore_errors=True)
    return {"work_s": took, "chunks": len(chunks), "max_late_ms": 1000 * max(chunks), "p99_late_ms":
            1000 * sorted(chunks)[int(0.99 * (len(chunks) - 1))], "max_write_ms": 1000 * max(chunks)}  # fmt: skip


def baseline(db: str) -> dict:
    reactor = Reactor(db)
    reactor.run_for(reactor.apply_one, 2.0)
    reactor.close()
    return reactor.figures()


COLUMNS = (("work_s", "work s", "{:8.2f}"), ("max_late_ms", "max late ms", "{:11.1f}"),
           ("p99_late_ms", "p99 late ms", "{:11.1f}"), ("max_write_ms", "max write ms", "{:12.1f}"),
           ("wal_mb", "WAL MB", "{:7.1f}"))  # fmt: skip


def print_row(label: str, rows: list[dict], extra: str = "") -> None:
    cells = []
    for key, title, fmt in COLUMNS:
        values = [r[key] for r in rows if key in r]
        cells.append(fmt.format(statistics.median(values)) if values else " " * len(fmt.format(0)))
    spread = ""
    if rows and "max_late_ms" in rows[0]:
        lates = sorted(r["max_late_ms"] for r in rows)
        spread = f"  (max late {lates[0]:.0f}..{lates[-1]:.0f})"
    print(f"{label:34} {' '.join(cells)}{spread} {extra}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--log-entries", type=int, default=110_000,
                        help="log entries above the stored snapshot (a node's log when its next snapshot is due)")
    parser.add_argument("--only", default=",".join(PHASES), help=f"comma-separated phases: {', '.join(PHASES)}")
    parser.add_argument("--dir", default=None, help="work directory (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="reuse DIR/base.db if it was built for --frames")
    args = parser.parse_args()
    phases = [p.strip() for p in args.only.split(",") if p.strip()]
    if unknown := set(phases) - set(PHASES):
        parser.error(f"unknown phase(s) {', '.join(sorted(unknown))}")
    work = args.dir or tempfile.mkdtemp(prefix="parkd-snapbench-")
    os.makedirs(work, exist_ok=True)
    base = os.path.join(work, "base.db")
    stamp = os.path.join(work, "base.frames")
    if not (args.keep and os.path.exists(stamp) and open(stamp).read() == f"{args.frames} {args.log_entries}"):
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(base + suffix)
        started = time.perf_counter()
        datadir.build(base, args.frames, args.log_entries, LOTS)
        with open(stamp, "w") as f:
            f.write(f"{args.frames} {args.log_entries}")
        took = time.perf_counter() - started
        print(f"built {base}: {args.frames:,} frames, {args.log_entries:,} log entries, "
              f"{os.path.getsize(base) / 1e6:.0f} MB in {took:.1f} s", flush=True)  # fmt: skip
    load = os.getloadavg()[0]
    print(f"{args.runs} run(s) of {', '.join(phases)}; reactor tick {TICK_S * 1000:.0f} ms; load average {load:.1f}")
    header = f"{'median of runs':34} " + " ".join(f"{title:>{len(fmt.format(0))}}" for _, title, fmt in COLUMNS)
    print(header + "\n" + "-" * len(header), flush=True)

    db = os.path.join(work, "node.db")
    datadir.copy_db(base, db)
    print_row("baseline: apply every 10 ms, 2 s", [baseline(db) for _ in range(args.runs)])
    results: dict[str, list[dict]] = {p: [] for p in PHASES}
    snap_path = os.path.join(work, "snapshot.db")
    for run in range(args.runs):
        datadir.copy_db(base, db)
        out = os.path.join(work, f"snapshot-{run}.db")
        info = None
        if {"take", "compact"} & set(phases) or not os.path.exists(snap_path):
            figures, info = take_phase(db, out)
            results["take"].append(figures)
            os.replace(info.path, snap_path)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(info.path + ".sha256")
            snapshot_sha256(snap_path)  # as the node has it: computed on the snapshot thread
        if "compact" in phases and info is not None:
            results["compact"].append(compact_phase(db, info))
        if "install" in phases:
            datadir.copy_db(base, db)  # a lagging follower: it has the same history, every row is replaced
            results["install"].append(install_phase(snap_path, db))
        if "send" in phases:
            results["send"].append(send_phase(snap_path, work))
    size = os.path.getsize(snap_path) / 1e6
    labels = {"take": f"(a) take ({size:.0f} MB file)", "compact": "(b) compact the log",
              "install": "(c) install (full db replaced)", "send": "(d) send: read_chunk + receiver"}  # fmt: skip
    for phase in phases:
        rows = results[phase]
        extra = ""
        if phase == "install" and rows:
            extra = f"first write after {statistics.median(r['first_write_ms'] for r in rows):.0f} ms"
        if phase == "compact" and rows:
            extra = f"{statistics.median(r['entries'] for r in rows):,.0f} entries"
        print_row(labels[phase], rows, extra)
    if not args.dir:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
