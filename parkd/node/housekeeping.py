"""The node's retention housekeeping: pending cuts deleted in bounded batches, then space given back.

Applying a retention entry only records its cut (``parkd/parking/retention.py``);
:class:`Housekeeping` deletes the rows on the reactor thread, one bounded
:meth:`ParkingState.trim_step` per reactor turn, and after each a pause of
``REST_FACTOR`` times as long as the batch took (at most ``MAX_REST_S``): Raft
messages, camera frames and HTTP reads are served in between, and trimming takes
at most about a quarter of the reactor's time and of the disk's (the WAL its
deletes write is fsynced with the Raft log's next write: at half, acks during a
1 M-row trim at 2 M frames had a p99 of 100-250 ms, at a quarter with batches of
200 rows under 100 ms).  It looks
for pending cuts every ``check_s`` seconds (and at start, so a cut a restart or
an installed snapshot left half done is finished).  Once no cut is pending it
gives the space back, also a step per turn with the same rests (a step of
returning free pages took ~9 ms at 2 M frames; back to back, each HTTPS read's
handshake turns waited behind one: /history p99 33 ms after a trim, 7 ms
without): free pages are returned to the filesystem, then the WAL is
checkpointed and truncated (``parkd/db.py``).

A storage error in a batch is one warning line; the cut stays pending (readers
are unaffected) and the next check tries again.  Observers (the node's metrics)
get each :class:`TrimStep`.
"""

from __future__ import annotations

import time

from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from parkd.db import StorageError, checkpoint_truncate, vacuum_step
from parkd.parking.retention import DEFAULT_BATCH_ROWS

CHECK_S = 1.0  # seconds between looks for pending cuts
REST_FACTOR = 3  # pause this many times as long as a batch took before the next
MAX_REST_S = 0.3  # the longest pause between two batches


class Housekeeping:
    """Runs pending retention cuts to completion on ``clock``, a bounded batch per turn."""

    log = Logger()

    def __init__(self, state, engine, clock, batch_rows: int = DEFAULT_BATCH_ROWS, check_s: float = CHECK_S):
        self.state = state
        self.engine = engine
        self.clock = clock
        self.batch_rows = batch_rows
        self._observers: list = []
        self._loop = LoopingCall(self.check)
        self._loop.clock = clock
        self._check_s = check_s
        self._call = None  # the next batch or vacuum step, while busy
        self._free_pages: int | None = None  # free pages left after the last vacuum step
        self.timer = time.perf_counter  # how long a vacuum step took (a test's fake)

    def observe(self, observer) -> None:
        """``observer.trim_step(step)`` is called after every batch."""
        self._observers.append(observer)

    def start(self) -> None:
        self._loop.start(self._check_s, now=True)

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    @property
    def busy(self) -> bool:
        return self._call is not None

    def check(self) -> None:
        """Start deleting if a cut is pending and nothing runs yet."""
        if self._call is not None:
            return
        try:
            pending = self.state.trims_pending()
        except StorageError as e:
            self.log.warn("retention: {error}", error=e)
            return
        if pending:
            self._call = self.clock.callLater(0, self._trim)

    def _trim(self) -> None:
        try:
            step = self.state.trim_step(self.batch_rows)
        except StorageError as e:
            self._call = None
            self.log.warn("retention: {error}; trying again in {seconds:.0f}s", error=e, seconds=self._check_s)
            return
        for observer in self._observers:
            observer.trim_step(step)
        if step.done is not None:
            self.log.info("retention: cut at index {index} done, {frames} frames deleted",
                          index=step.done.index, frames=step.done.frames_deleted)  # fmt: skip
        self._call = self.clock.callLater(_rest(step.seconds), self._trim if step.pending else self._vacuum)

    def _vacuum(self) -> None:
        started = self.timer()
        try:
            left = vacuum_step(self.engine)
        except StorageError as e:
            self.log.warn("retention: {error}", error=e)
            left = 0
        progress = self._free_pages is None or left < self._free_pages
        self._free_pages = left if left and progress else None
        then = self._vacuum if self._free_pages else self._checkpoint
        self._call = self.clock.callLater(_rest(self.timer() - started), then)

    def _checkpoint(self) -> None:
        self._call = None
        try:
            checkpoint_truncate(self.engine)
        except StorageError as e:
            self.log.warn("retention: {error}", error=e)


def _rest(seconds: float) -> float:
    """At most a quarter of the reactor's time (and of the disk's): rest thrice as long as a step took."""
    return min(REST_FACTOR * seconds, MAX_REST_S)
