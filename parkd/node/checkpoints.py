"""The WAL's checkpoints, mostly off the reactor.

SQLite copies the WAL back into the database file (a *checkpoint*) in whichever
connection commits past ``wal_autocheckpoint`` pages (1000: 4 MiB): in a node,
the reactor thread, where a checkpoint is an fsync of the WAL, up to 4 MiB of
page writes and an fsync of the database.  During a retention trim at 2 M
frames that happened 7 times a second (strace: 145 fdatasyncs of node.db in
20 s on the reactor thread).

:class:`Checkpointer` runs a ``PASSIVE`` checkpoint every :data:`CHECKPOINT_S`
seconds on a thread of its own, with a connection of its own: it copies the
frames no reader still needs without waiting for the node's readers or writers,
so that when the reactor's commit does reach the threshold, little is left to
copy.  The reactor's own automatic checkpoint stays: it is what lets the WAL
start again from its beginning, since it runs between two of the node's writes
(the thread's, racing a steady stream of commits, rarely sees the WAL fully
copied at a moment when the next writer could restart it; with automatic
checkpoints off the WAL grew past 100 MB during a trim).

Only ``PASSIVE`` runs here.  The other modes take the write lock, and a
transaction of the reactor thread that read before that and writes after it
fails at once with "database is locked" (a stale WAL snapshot cannot be
upgraded; it stopped a node at 2 M frames): the housekeeping's ``TRUNCATE``
after a retention cut stays on the reactor thread.

Durability does not depend on checkpoints: a commit is durable once the WAL is
fsynced (``synchronous=FULL``, or ``SqliteStorage.sync``).  A failed checkpoint
is a warning (at most one per :data:`REPORT_S`); the WAL keeps the data and
the next one tries again.
"""

from __future__ import annotations

import sqlite3

from twisted.internet import defer
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

CHECKPOINT_S = 0.25
REPORT_S = 60.0  # at most one warning this often while checkpoints fail


class Checkpointer:
    """Checkpoints ``path``'s WAL every ``interval`` seconds on ``thread`` (one worker: its work runs in order)."""

    log = Logger()

    def __init__(self, path: str, clock, thread, interval: float = CHECKPOINT_S):
        self.path = path
        self.clock = clock
        self.thread = thread
        self.interval = interval
        self._db: sqlite3.Connection | None = None  # opened and used on the thread only
        self._warned_at: float | None = None
        self._loop = LoopingCall(self.checkpoint)  # waits for each checkpoint before the next interval
        self._loop.clock = clock
        self.done = 0  # checkpoints that ran

    def start(self) -> None:
        self.thread.start()
        self._loop.start(self.interval, now=False)

    def stop(self) -> defer.Deferred:
        """No more checkpoints; the connection is closed after the one under way, then the thread stops."""
        if self._loop.running:
            self._loop.stop()
        return self.thread.run(self._close).addBoth(lambda _: self.thread.stop())

    def checkpoint(self) -> defer.Deferred:
        """One PASSIVE checkpoint on the thread: SQLite's (busy, WAL frames, frames checkpointed), or None if it failed."""
        return self.thread.run(self._run).addCallbacks(self._ran, self._failed)

    # ------------------------------------------------------------ on the thread

    def _run(self) -> tuple[int, int, int]:
        if self._db is None:
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA synchronous=FULL")  # the checkpoint fsyncs the database after copying
        return tuple(self._db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone())

    def _close(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            db.close()

    # ------------------------------------------------------------ back on the reactor

    def _ran(self, result):
        self.done += 1
        return result

    def _failed(self, failure):
        failure.trap(sqlite3.Error, OSError)
        now = self.clock.seconds()
        if self._warned_at is None or now - self._warned_at >= REPORT_S:
            self._warned_at = now
            self.log.warn("checkpointing the WAL failed: {error}; the WAL keeps the data, trying again in "
                          "{seconds:.0f}s", error=failure.getErrorMessage(), seconds=self.interval)  # fmt: skip
        return None
