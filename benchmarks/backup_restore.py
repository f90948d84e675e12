"""Backup and restore time and size for a state of N frames (CONTRACT §10; issue 13's figures).

    .venv/bin/python benchmarks/backup_restore.py [--frames 1000000] [--runs 3] [--dir DIR]

Fills a node database directly through ``ParkingState.apply`` (N frames from 100
cameras in 4 lots, 1,000 entries per apply, as a node applies committed batches),
then per run, the same code paths a node and parkctl take, without the HTTP/TLS hop:

* **backup**: ``pin_state`` + ``PinnedState.write`` of the payload (the node's copy,
  on its backup thread), then ``backup_chunks`` of head, payload and sha256, each
  chunk checked by ``BackupVerifier`` and written to the backup file (what the node
  streams and ``parkctl backup`` checks and writes), fsync and rename;
* **restore**: ``restore_data_dir`` (what ``parkctl restore`` runs) into a new data
  dir for node 1 of a 3-node config.

Prints each run and the medians: seconds and bytes.  Not a test (takes minutes).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time

from parkd.config import load_config
from parkd.db import open_engine
from parkd.launcher import write_config
from parkd.node.restore import restore_data_dir
from parkd.parking.backup import BackupHeader, BackupVerifier, backup_chunks
from parkd.parking.codec import FrameResult, encode
from parkd.parking.schema import PARKING_SCHEMA_VERSION
from parkd.parking.snapshot import FORMAT_VERSION as SNAPSHOT_FORMAT
from parkd.parking.snapshot import pin_state, publish_file
from parkd.parking.state import ParkingState
from parkd.raft.storage import SqliteStorage
from parkd.raft.types import Entry, EntryKind

LOTS = {"north": 4000, "south": 3000, "east": 5000, "west": 2000}
CAMERAS = 100
TERM = 7
BATCH = 1000
MEMBERS = [{"id": i, "raft": f"127.0.0.1:{7100 + i}", "client": f"127.0.0.1:{7200 + i}",
            "http": f"127.0.0.1:{7300 + i}", "index": 0} for i in (1, 2, 3)]  # fmt: skip


def fill(db_path: str, frames: int) -> float:
    """A node database with ``frames`` frames applied through ParkingState.apply; seconds taken."""
    started = time.perf_counter()
    engine = open_engine(db_path)
    try:
        SqliteStorage(engine)
        state = ParkingState(engine, LOTS)
        lots = list(LOTS)
        for low in range(1, frames + 1, BATCH):
            entries = []
            for i in range(low, min(low + BATCH, frames + 1)):
                camera = 1 + i % CAMERAS
                lot = lots[camera % len(lots)]
                result = FrameResult(camera, lot, 1 + i // CAMERAS, 1_700_000_000.0 + i * 0.02, i % LOTS[lot])
                entries.append(Entry(i, TERM, EntryKind.NORMAL, encode(result)))
            state.apply(entries)
    finally:
        engine.dispose()
    return time.perf_counter() - started


def backup(db_path: str, out_path: str, work: str) -> tuple[float, float, int]:
    """(seconds of the copy, seconds in all, bytes of the backup file)."""
    started = time.perf_counter()
    payload = os.path.join(work, ".backup-payload.db")
    pinned = pin_state(db_path)
    info = pinned.write(payload, term=TERM, voters=(1, 2, 3), learners=(), config_index=0, members=MEMBERS)
    copied = time.perf_counter() - started
    header = BackupHeader(
        cluster_id="", index=info.index, term=TERM, voters=(1, 2, 3), learners=(), config_index=0,
        members=tuple(MEMBERS), snapshot_format=SNAPSHOT_FORMAT, parking_schema=PARKING_SCHEMA_VERSION,
        payload_bytes=info.size_bytes, node_id=1, created_at=time.time(), parkd_version="bench",
    )  # fmt: skip
    verifier = BackupVerifier()
    tmp = out_path + ".part"
    with open(tmp, "wb") as f:
        for chunk in backup_chunks(header, payload):
            verifier.feed(chunk)
            f.write(chunk)
    verifier.finish()
    publish_file(tmp, out_path)
    os.unlink(payload)
    return copied, time.perf_counter() - started, os.path.getsize(out_path)


def restore(backup_path: str, config_path: str, data_dir: str) -> tuple[float, int]:
    """(seconds, bytes of the data dir made)."""
    started = time.perf_counter()
    restore_data_dir(backup_path, load_config(config_path), 1, data_dir)
    seconds = time.perf_counter() - started
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(data_dir) for f in files)
    return seconds, size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dir", help="work directory (default: a temporary one, removed afterwards)")
    args = parser.parse_args()
    work = args.dir or tempfile.mkdtemp(prefix="parkd-backup-bench-")
    os.makedirs(work, exist_ok=True)
    try:
        db = os.path.join(work, "node.db")
        print(f"filling {args.frames} frames through ParkingState.apply ...", flush=True)
        print(f"  {fill(db, args.frames):.1f} s; node.db {os.path.getsize(db) / 1e6:.1f} MB", flush=True)
        config = write_config(os.path.join(work, "parkd.toml"), nodes=3, lots=LOTS)
        rows = []
        for run in range(1, args.runs + 1):
            out = os.path.join(work, "b.pkb")
            copied, backup_s, size = backup(db, out, work)
            target = os.path.join(work, f"restored-{run}")
            restore_s, restored = restore(out, config, target)
            rows.append((copied, backup_s, size, restore_s, restored))
            print(f"run {run}: backup {backup_s:.2f} s (copy {copied:.2f} s), {size / 1e6:.1f} MB; "
                  f"restore {restore_s:.2f} s, data dir {restored / 1e6:.1f} MB", flush=True)  # fmt: skip
            shutil.rmtree(target)
            os.unlink(out)
        med = [statistics.median(column) for column in zip(*rows)]
        print(f"median of {args.runs}: backup {med[1]:.2f} s (copy {med[0]:.2f} s), file {med[2] / 1e6:.1f} MB; "
              f"restore {med[3]:.2f} s, data dir {med[4] / 1e6:.1f} MB")  # fmt: skip
    finally:
        if not args.dir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
