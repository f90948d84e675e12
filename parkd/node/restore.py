"""Restoring a backup into a data dir (CONTRACT §10 "Restore"): offline, one node at a time.

One job: build node N's data dir for a NEW cluster from a backup file
(``parkd/parking/backup.py``), so that ``twistd parkd node --id N`` starts as a
member of the restored cluster.  ``parkctl restore`` calls :func:`restore_data_dir`.

What the data dir gets:

* ``node.db``: the backup's parking state (the backup's index and term), and a
  Raft storage whose snapshot meta is at that index and term with the voters of
  the new config (its ``[[node]]`` ids; no learners) and an empty log;
* ``snapshots/``: a snapshot file of that state (written from ``node.db`` by the
  snapshot writer, with the new config's members as address book), which the
  node sends to a member that needs one;
* a new cluster id, the same for every member restored from the same file:
  :func:`parkd.parking.backup.restored_cluster_id` of the backup's sha256.  Three
  restores of one file make one cluster; restoring another file makes another.

Everything is built in a temporary directory next to DIR and renamed into
place at the end, so a refusal or a failure leaves nothing behind.  Refused
(:class:`RestoreError`, one line) before anything is written: N not in the
config, DIR not empty, DIR's parent missing; while reading: a file that is not a
whole, intact backup of a format this parkd reads (BackupError's line).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from dataclasses import dataclass

from parkd.config import Config
from parkd.db import StorageError, open_engine
from parkd.node.addresses import member_json
from parkd.parking.backup import BackupError, Progress, extract_payload, restored_cluster_id
from parkd.parking.snapshot import SnapshotError, pin_state, restore_snapshot
from parkd.parking.state import ParkingState
from parkd.raft.storage import SqliteStorage, install_snapshot_in
from parkd.raft.types import SnapshotMeta


class RestoreError(Exception):
    """A restore was refused or failed; ``str()`` is one line, and nothing was left in DIR."""


@dataclass(frozen=True, slots=True)
class Restored:
    """A data dir made by :func:`restore_data_dir`."""

    data_dir: str
    node_id: int
    index: int
    term: int
    voters: tuple[int, ...]
    cluster_id: str
    old_cluster_id: str
    backup_sha256: str


def check_target(config: Config, node_id: int, data_dir: str) -> None:
    """The refusals that need no reading of the backup: RestoreError, nothing written."""
    ids = [m.id for m in config.members]
    if node_id not in ids:
        raise RestoreError(f"node {node_id} is not in the config (its [[node]] ids: {', '.join(map(str, ids))})")
    if os.path.exists(data_dir):
        if not os.path.isdir(data_dir):
            raise RestoreError(f"{data_dir} exists and is not a directory")
        if os.listdir(data_dir):
            raise RestoreError(f"{data_dir} is not empty: restore builds a new data dir (give an empty or new one)")
    parent = os.path.dirname(os.path.abspath(data_dir))
    if not os.path.isdir(parent):
        raise RestoreError(f"{parent} does not exist (the data dir's parent directory)")


def restore_data_dir(backup_path: str, config: Config, node_id: int, data_dir: str,
                     progress: Progress | None = None) -> Restored:  # fmt: skip
    """Build ``data_dir`` for node ``node_id`` of the cluster ``config`` from ``backup_path``; see the module."""
    check_target(config, node_id, data_dir)
    target = os.path.abspath(data_dir)
    work = tempfile.mkdtemp(prefix=f".{os.path.basename(target)}.restore-", dir=os.path.dirname(target))
    try:
        restored = _build(backup_path, config, node_id, work, progress)
        if os.path.isdir(target):
            os.rmdir(target)  # empty (checked): the built one takes its name
        os.rename(work, target)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return dataclasses.replace(restored, data_dir=target)


def _build(backup_path, config: Config, node_id: int, work: str, progress) -> Restored:
    payload = os.path.join(work, "backup-payload.db")
    try:
        checked = extract_payload(backup_path, payload, progress)
    except BackupError as e:
        raise RestoreError(f"{backup_path}: {e}") from None
    header = checked.header
    voters = tuple(sorted(m.id for m in config.members))
    members = [{**member_json(m), "index": 0} for m in sorted(config.members, key=lambda m: m.id)]
    cluster_id = restored_cluster_id(checked.sha256)
    db_path = os.path.join(work, "node.db")
    meta = SnapshotMeta(header.index, header.term, voters, ())
    engine = open_engine(db_path)
    try:
        SqliteStorage(engine)
        state = ParkingState(engine, {lot.id: lot.capacity for lot in config.lots})
        restore_snapshot(engine, payload, lambda conn: install_snapshot_in(conn, meta))
        state.replace_cluster_identity(cluster_id)
    except (SnapshotError, StorageError, ValueError) as e:
        raise RestoreError(f"{backup_path}: its state cannot be restored: {e}") from None
    finally:
        engine.dispose()
    os.unlink(payload)
    snapshots = os.path.join(work, "snapshots")
    os.mkdir(snapshots)
    try:
        with pin_state(db_path) as pinned:
            if pinned.index != header.index:
                raise SnapshotError(f"restored state at {pinned.index}, the backup's is {header.index}")
            pinned.write(os.path.join(snapshots, f"snapshot-{header.index}-restored.db"), term=header.term,
                         voters=voters, learners=(), config_index=0, members=members)  # fmt: skip
    except SnapshotError as e:
        raise RestoreError(f"writing the restored snapshot failed: {e}") from None
    return Restored(work, node_id, header.index, header.term, voters, cluster_id, header.cluster_id, checked.sha256)
