"""``parkctl backup FILE`` and ``parkctl restore FILE ...`` (CONTRACT §10): the commands and their progress.

``backup`` streams ``GET /api/v1/admin/backup`` from the leader into a temporary
file next to FILE, checking it as it arrives (``parking/backup.BackupVerifier``),
and gives it FILE's name only once whole and intact (fsync, rename): a failure,
however it happens (the node killed mid-stream, a corrupted stream, a full
disk), leaves FILE as it was and no temporary file.  ``restore`` is offline:
``parkd/node/restore.py`` builds the data dir.  On a terminal both show their
progress on stderr.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time

from parkd.config import ConfigError, load_config
from parkd.ctl_client import Refused
from parkd.node.restore import RestoreError, restore_data_dir
from parkd.parking.backup import BackupError, BackupVerifier
from parkd.parking.snapshot import publish_file

BACKUP_PATH = "/api/v1/admin/backup"
BACKUP_WAIT = 30.0  # seconds to find a leader that takes the backup (an election may be under way)


class ProgressLine:
    """``what: 12.0 of 96.5 MiB (12%)`` on one terminal line, at most every ``every`` seconds; silent elsewhere."""

    def __init__(self, err, what: str, every: float = 0.5, clock=time.monotonic):
        isatty = getattr(err, "isatty", None)
        self.err = err if isatty is not None and isatty() else None
        self.what = what
        self.every = every
        self.clock = clock
        self._last = None

    def __call__(self, done: int, total: int | None) -> None:
        if self.err is None:
            return
        now = self.clock()
        if self._last is not None and now - self._last < self.every and done != total:
            return
        self._last = now
        mib = done / (1 << 20)
        if total:
            text = f"{self.what}: {mib:.1f} of {total / (1 << 20):.1f} MiB ({100 * done // total}%)"
        else:
            text = f"{self.what}: {mib:.1f} MiB"
        print(f"\r{text}\x1b[K", end="", file=self.err, flush=True)

    def end(self) -> None:
        if self.err is not None and self._last is not None:
            print("\r\x1b[K", end="", file=self.err, flush=True)


def take_backup(cluster, path: str, progress: ProgressLine | None = None):
    """Download a backup from the leader to ``path`` (see the module); the CheckedBackup-like header and size.

    Refused (one line) on any failure, ``path`` untouched.
    """
    target = os.path.abspath(path)
    directory = os.path.dirname(target)
    if os.path.isdir(target):
        raise Refused(f"{path} is a directory: give a file name")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(target)}.", suffix=".part", dir=directory)
    except OSError as e:
        raise Refused(f"cannot write in {directory}: {e.strerror}") from None
    verifier = BackupVerifier()
    try:
        with os.fdopen(fd, "wb") as out:

            def sink(chunk: bytes) -> None:
                verifier.feed(chunk)  # raises BackupError at once for bytes that cannot be a backup
                out.write(chunk)
                if progress is not None:
                    progress(verifier.received, verifier.total)

            try:
                cluster.download(BACKUP_PATH, sink, BACKUP_WAIT)
                header = verifier.finish()
            except BackupError as e:
                raise Refused(f"the backup received is not usable: {e}; {path} not written") from None
            except OSError as e:
                raise Refused(f"cannot write {tmp}: {e.strerror}; {path} not written") from None
        publish_file(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    finally:
        if progress is not None:
            progress.end()
    return header, verifier.received, verifier.sha256


def cmd_backup(args, cluster, out, err) -> int:
    header, size, sha256 = take_backup(cluster, args.file, ProgressLine(err, f"backup {args.file}"))
    cluster_id = header.cluster_id or "none yet"
    print(f"backup {args.file}: index {header.index}, term {header.term}, {size} bytes "
          f"(cluster {cluster_id}, from node {header.node_id}; sha256 {sha256})", file=out)  # fmt: skip
    return 0


def cmd_restore(args, out, err) -> int:
    try:
        config = load_config(args.restore_config)
    except ConfigError as e:
        raise Refused(f"--config: {e}") from None
    if not os.path.isfile(args.file):
        raise Refused(f"{args.file}: no such file")
    progress = ProgressLine(err, f"restore {args.file}")
    try:
        restored = restore_data_dir(args.file, config, args.id, args.data_dir, progress)
    except (RestoreError, BackupError) as e:
        raise Refused(f"restore refused: {e}; nothing written") from None
    finally:
        progress.end()
    print(f"restored {args.file} into {restored.data_dir} for node {restored.node_id}: index {restored.index}, "
          f"term {restored.term}, voters {', '.join(map(str, restored.voters))}; new cluster id "
          f"{restored.cluster_id} (the same for every node restored from this file)", file=out)  # fmt: skip
    return 0


def add_backup_commands(sub, common, node_id) -> None:
    """``backup FILE`` (``common``: the cluster options) and ``restore FILE --config --id --data-dir``."""
    backup = sub.add_parser(
        "backup", help="save a consistent backup of the cluster's state to FILE",
        description="Stream a backup from the leader into FILE: checked as it arrives (sha256), renamed into "
        "place only whole; prints its index, term and size. Needs an operator certificate under TLS.",
    )  # fmt: skip
    backup.add_argument("file", metavar="FILE")
    common(backup, suppress=True)
    restore = sub.add_parser(
        "restore", help="build a data dir of a NEW cluster from a backup (offline)",
        description="Build node ID's data dir DIR for a new cluster from the backup FILE: the backup's state, "
        "the members of CFG as its configuration, a new cluster id derived from the file (the same for every "
        "node restored from it). Run once per node of CFG, then start the nodes. DIR must be empty or absent.",
    )  # fmt: skip
    restore.add_argument("file", metavar="FILE")
    restore.add_argument("--config", dest="restore_config", metavar="CFG", required=True,
                         help="the new cluster's parkd config ([[node]] members, lots)")  # fmt: skip
    restore.add_argument("--id", type=node_id, required=True, help="the node whose data dir to build")
    restore.add_argument("--data-dir", required=True, metavar="DIR", help="the data dir to build (empty or absent)")
