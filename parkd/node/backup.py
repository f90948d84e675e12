"""Backups on a node (CONTRACT §10 "Backup"): taking one on the leader and streaming it out.

:meth:`BackupTaker.take` runs on the reactor thread and does only fast things
there: it refuses on a follower (``NotLeader``: the HTTP port answers 421
naming the leader) and while another backup is under way (:class:`BackupBusy`),
waits for a read index (so the backup holds every frame acked before it was
asked for), then pins the parking state with its term, configuration and
address book (``snapshots.pin_snapshot``, the same read transaction a snapshot
uses).  The copy into a snapshot file runs on the backup's own thread (the
reactor keeps applying and answering; a snapshot or an install never waits
behind a backup), into ``DATA_DIR/backups/``.

:meth:`Backup.send` then streams the backup file (``parkd/parking/backup.py``:
head, the snapshot file as payload, sha256) into a consumer (the HTTP request)
with :class:`ChunkProducer`, a push producer: one chunk of 256 KiB per reactor
turn, read from the file on the reactor thread, paused while the connection's
buffer is full, so a slow client holds back only its own stream and the file is
never loaded into memory.  The
temporary snapshot file is removed when the stream ends, however it ends;
``backup_taken`` (index, term, bytes) is logged once the last byte was handed
to the connection.  Files a killed node left in ``backups/`` are removed at start.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator

from twisted.internet import defer
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from parkd import __version__
from parkd.node.alarms import NOSPACE
from parkd.node.snapshots import pin_snapshot
from parkd.node.worker import WorkerThread
from parkd.parking.backup import BackupHeader, backup_chunks
from parkd.parking.schema import PARKING_SCHEMA_VERSION
from parkd.parking.snapshot import FORMAT_VERSION as SNAPSHOT_FORMAT
from parkd.raft.core import NotLeader, Role


class BackupBusy(Exception):
    """Another backup is being taken or sent by this node."""


class BackupNoSpace(Exception):
    """The node's ``nospace`` alarm is raised: the copy would take the space its log needs."""


@implementer(IPushProducer)
class ChunkProducer:
    """Writes the chunks of an iterator into a consumer, one chunk per reactor turn (a push producer).

    Each chunk is written from a ``callLater(0)`` on ``clock``, so the reactor
    handles everything else between two chunks; while the consumer has paused
    it (its buffer is full: a slow client), nothing is read.  :attr:`done` fires
    with the bytes written once the iterator is exhausted (the producer is
    unregistered first), or fails if the iterator raises or the consumer stops
    it (``stopProducing``: the connection was lost).
    """

    def __init__(self, chunks: Iterator[bytes], consumer, clock):
        self.chunks = chunks
        self.consumer = consumer
        self.clock = clock
        self.sent = 0
        self.paused = False
        self.done = defer.Deferred()
        self._call = None

    def start(self) -> defer.Deferred:
        self.consumer.registerProducer(self, True)
        self._schedule()
        return self.done

    def _schedule(self) -> None:
        if not self.paused and not self.done.called and self._call is None:
            self._call = self.clock.callLater(0, self._produce)

    def _produce(self) -> None:
        self._call = None
        try:
            chunk = next(self.chunks)
        except StopIteration:
            self._end(None)
            return
        except Exception:
            self._end(Failure())
            return
        self.sent += len(chunk)
        self.consumer.write(chunk)  # may pause us at once
        self._schedule()

    def pauseProducing(self) -> None:
        self.paused = True
        self._cancel()

    def resumeProducing(self) -> None:
        self.paused = False
        self._schedule()

    def stopProducing(self) -> None:
        if not self.done.called:
            failure = Failure(ConnectionLost(f"the stream was stopped after {self.sent} bytes"))
            self._end(failure, unregister=False)  # the consumer is going away: it forgets us itself

    def _cancel(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def _end(self, failure: Failure | None, unregister: bool = True) -> None:
        self._cancel()
        close = getattr(self.chunks, "close", None)
        if close is not None:
            close()  # a generator closes its file
        if unregister:
            self.consumer.unregisterProducer()
        if failure is None:
            self.done.callback(self.sent)
        else:
            self.done.errback(failure)


class Backup:
    """A backup taken and not yet sent: its header, and the snapshot file it streams as payload."""

    log = Logger()

    def __init__(self, header: BackupHeader, payload_path: str, clock, on_end):
        self.header = header
        self.payload_path = payload_path
        self.clock = clock
        self._on_end = on_end
        self._ended = False
        self._producer: ChunkProducer | None = None

    @property
    def size(self) -> int:
        """Bytes of the backup file."""
        return self.header.total_bytes

    def send(self, consumer) -> defer.Deferred:
        """Stream the backup file into ``consumer``; fires with the bytes sent (or fails), then discards it."""
        self._producer = ChunkProducer(backup_chunks(self.header, self.payload_path), consumer, self.clock)
        return self._producer.start().addBoth(self._sent)

    def stop(self) -> None:
        """The client went away: stop the stream (or, before it started, discard the backup)."""
        if self._producer is not None:
            self._producer.stopProducing()
        else:
            self.discard()

    def _sent(self, result):
        header = self.header
        if isinstance(result, Failure):
            self.log.warn("backup at {index} not sent whole: {reason}", index=header.index,
                          reason=result.getErrorMessage())  # fmt: skip
        else:
            self.log.info("backup taken at {index} (term {term}): {bytes} bytes sent",
                          parkd_event="backup_taken", index=header.index, term=header.term, bytes=result)  # fmt: skip
        self.discard()
        return result

    def discard(self) -> None:
        """Remove the payload file and let another backup start (idempotent)."""
        if not self._ended:
            self._ended = True
            with contextlib.suppress(OSError):
                os.unlink(self.payload_path)
            self._on_end()


class BackupTaker:
    """Takes backups on the leader, one at a time (see the module docstring).

    ``driver``: the Raft status and log (role, leader, term and configuration at
    an index); ``store``: the data dir's database (``db_path``, ``state``);
    ``membership``: the address book; ``reads``: the read barrier;
    ``directory``: where payload files are made; ``thread``: where the copy runs
    (a :class:`~parkd.node.worker.WorkerThread` of its own by default; tests pass one that runs at once);
    ``alarms``: the node's Alarms (no backup while ``nospace`` is raised: the copy is
    as large as the state and would take the space the log needs).
    """

    log = Logger()

    def __init__(self, driver, store, membership, reads, clock, directory: str, thread=None, alarms=None):
        self.driver = driver
        self.store = store
        self.membership = membership
        self.reads = reads
        self.clock = clock
        self.directory = directory
        self.busy = False
        self.alarms = alarms
        os.makedirs(directory, exist_ok=True)
        for stale in os.listdir(directory):  # left by a node killed mid-backup: the directory is ours
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(directory, stale))
        self._thread = thread if thread is not None else WorkerThread(clock, name="parkd-backup")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._thread.stop()

    def take(self) -> defer.Deferred:
        """Fires with a :class:`Backup` to send (and then discard), or fails.

        Raises NotLeader at once on a follower, BackupBusy while another
        backup is taken or sent, BackupNoSpace while the nospace alarm is raised; the Deferred fails with ReadUnavailable when no
        leader confirms the read index, SnapshotError when the copy fails.
        """
        driver = self.driver
        if driver.role is not Role.LEADER:
            raise NotLeader(driver.leader_id)
        if self.busy:
            raise BackupBusy("a backup is already being taken on this node; try again once it is sent")
        if self.alarms is not None and self.alarms.is_raised(NOSPACE):
            raise BackupNoSpace(f"node {driver.node_id} has the nospace alarm raised: a backup copies the whole "
                                "state to its disk first; free space, then try again")  # fmt: skip
        self.busy = True
        return self.reads.read().addCallback(lambda _: self._copy()).addErrback(self._failed)

    def _copy(self) -> defer.Deferred:
        fd, path = tempfile.mkstemp(prefix=".backup-", suffix=".db", dir=self.directory)
        os.close(fd)
        try:
            pinned = pin_snapshot(self.store.db_path, self.driver, self.membership)
        except BaseException:
            os.unlink(path)
            raise
        created_at, node_id = self.clock.seconds(), self.driver.node_id
        cluster_id = self.store.state.cluster_id() or ""

        def copy() -> Backup:  # on the backup thread
            try:
                info = pinned.write(path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(path)
                raise
            header = BackupHeader(
                cluster_id=cluster_id, index=info.index, term=info.term, voters=tuple(info.voters),
                learners=tuple(info.learners), config_index=pinned.config.index,
                members=tuple(pinned.members), snapshot_format=SNAPSHOT_FORMAT,
                parking_schema=PARKING_SCHEMA_VERSION, payload_bytes=info.size_bytes,
                node_id=node_id, created_at=created_at, parkd_version=__version__,
            )  # fmt: skip
            return Backup(header, path, self.clock, self._ended)

        return self._thread.run(copy)

    def _failed(self, failure: Failure) -> Failure:
        self.busy = False
        return failure

    def _ended(self) -> None:
        self.busy = False
