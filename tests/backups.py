"""Backup files for tests: a snapshot of a small parking state, a header for it, a whole backup file."""

from __future__ import annotations

from parkd.db import open_engine
from parkd.parking.backup import BackupHeader, write_backup
from parkd.parking.codec import FrameResult, encode
from parkd.parking.snapshot import pin_state
from parkd.parking.state import ParkingState
from parkd.raft.types import Entry, EntryKind

LOTS = {"north": 100, "south": 60}
MEMBERS = tuple({"id": i, "raft": f"127.0.0.1:710{i}", "client": f"127.0.0.1:720{i}",
                 "http": f"127.0.0.1:730{i}", "index": 0} for i in (1, 2, 3))  # fmt: skip


def snapshot_file(tmp_path, frames: int = 300):
    """A snapshot of a state with ``frames`` frames (term 2, voters 1-3): (path, SnapshotInfo)."""
    db = str(tmp_path / "node.db")
    engine = open_engine(db)
    try:
        entries = [
            Entry(i, 2, EntryKind.NORMAL, encode(FrameResult(1 + i % 5, "north", 1 + i // 5, 1_000.0 + i, i % 90)))
            for i in range(1, frames + 1)
        ]
        ParkingState(engine, LOTS).apply(entries)
    finally:
        engine.dispose()
    out = tmp_path / "snap.db"
    info = pin_state(db).write(out, term=2, voters=(1, 2, 3), learners=(), config_index=0, members=MEMBERS)
    return out, info


def header_for(info, payload_path, **changes) -> BackupHeader:
    fields = dict(
        cluster_id="c0ffee" * 5 + "00", index=info.index, term=info.term, voters=info.voters,
        learners=info.learners, config_index=0, members=MEMBERS, snapshot_format=1, parking_schema=2,
        payload_bytes=payload_path.stat().st_size, node_id=2, created_at=1_700_000_000.5, parkd_version="0.1.0",
    )  # fmt: skip
    fields.update(changes)
    return BackupHeader(**fields)


def backup_file(tmp_path, frames: int = 300, name: str = "b.pkb", **changes):
    """A backup file of a ``frames``-frame state: (path, header, payload path)."""
    payload, info = snapshot_file(tmp_path, frames)
    header = header_for(info, payload, **changes)
    path = tmp_path / name
    write_backup(path, header, payload)
    return path, header, payload
