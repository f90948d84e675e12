"""One worker thread for blocking work the reactor must not wait on: snapshot copies
and installs, backups, and the Raft log's fsync (each has a worker of its own)."""

from __future__ import annotations

import threading

from twisted.internet import defer
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool


class WorkerThread(ThreadPool):
    """A pool of exactly one thread: work given to it runs in order, off the reactor.

    It never keeps the process alive: an unfinished copy or install is a
    temporary file or a rolled-back transaction, and an fsync the process did
    not wait for was never relied on (nothing that needed it left the node).
    """

    @staticmethod
    def threadFactory(*args, **kwargs) -> threading.Thread:
        return threading.Thread(*args, daemon=True, **kwargs)

    def __init__(self, clock, name: str):
        super().__init__(1, 1, name=name)
        self.clock = clock

    def run(self, function, *args, **kwargs) -> defer.Deferred:
        """``function(*args, **kwargs)`` on the worker; its result on the reactor."""
        return deferToThreadPool(self.clock, self, function, *args, **kwargs)
