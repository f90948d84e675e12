"""A node's disk (CONTRACT §10): its database's size, the free space, the ``nospace`` alarm.

:meth:`DiskMonitor.check` (the node runs it every :data:`CHECK_INTERVAL_S`
seconds on its clock, and once before it listens) measures the database
(``node.db`` and its WAL) and the free space of the data dir's filesystem
(what an unprivileged writer may use: ``statvfs`` ``f_bavail``; injected in
tests).  Below ``min_free_bytes`` it raises the ``nospace`` alarm.  The alarm
also goes up at once when the driver reports that a write found the disk full
(:class:`~parkd.node.events.StorageStalled`), whatever the threshold.

It clears by itself once no write is stalled and the free space is back to
the threshold plus a margin (a tenth of it, at least 1 MiB), so that a disk
hovering at the threshold does not raise and clear it every second.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from parkd.node.alarms import NOSPACE, Alarms
from parkd.node.events import StorageResumed, StorageStalled

CHECK_INTERVAL_S = 1.0
MIB = 1 << 20


def free_bytes(path: str) -> int:
    """Bytes an unprivileged process may still write on ``path``'s filesystem."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def database_bytes(db_path: str) -> int:
    """The SQLite database's size on disk: the file and its write-ahead log."""
    total = 0
    for path in (db_path, db_path + "-wal"):
        try:
            total += os.path.getsize(path)
        except OSError:
            pass
    return total


def _mib(n: int) -> str:
    return f"{n / MIB:.1f} MiB"


class DiskMonitor:
    """Measures the data dir's disk and raises or clears ``nospace`` on ``alarms``.

    ``driver``: the node's driver (its ``stalled`` flag and event stream);
    ``free``: the free-space function (:func:`free_bytes` unless a test gives one).
    """

    def __init__(
        self,
        data_dir: str,
        db_path: str,
        alarms: Alarms,
        min_free_bytes: int,
        driver,
        free: Callable[[str], int] = free_bytes,
    ):
        self.data_dir = data_dir
        self.db_path = db_path
        self.alarms = alarms
        self.min_free_bytes = min_free_bytes
        self.clear_at = min_free_bytes + max(MIB, min_free_bytes // 10) if min_free_bytes else 0
        self.driver = driver
        self._free = free
        self.free_bytes: int | None = None  # as of the last check
        self.db_bytes = 0
        driver.subscribe(self._stalled, StorageStalled)
        driver.subscribe(self._resumed, StorageResumed)

    def check(self) -> None:
        try:
            self.free_bytes = self._free(self.data_dir)
        except OSError:
            pass  # keep the last figure; a data dir that vanished shows in the next write
        self.db_bytes = database_bytes(self.db_path)
        free = self.free_bytes
        if free is not None and free < self.min_free_bytes:
            self.alarms.raise_alarm(
                NOSPACE,
                f"{_mib(free)} free on the data dir's filesystem, below min_free_disk_mb "
                f"({_mib(self.min_free_bytes)})",
            )
        elif not self.driver.stalled and (free is None or free >= self.clear_at):
            shown = "" if free is None else f"{_mib(free)} free on the data dir's filesystem"
            self.alarms.clear(NOSPACE, shown or "writes go through again")

    def _stalled(self, event: StorageStalled) -> None:
        self.alarms.raise_alarm(NOSPACE, f"a write found the disk full ({event.error}); retrying")

    def _resumed(self, _event: StorageResumed) -> None:
        self.check()
