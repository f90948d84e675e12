"""One worker thread for blocking work the reactor must not wait on: snapshot copies
and installs, backups, and the Raft log's fsync (each has a worker of its own)."""

from __future__ import annotations

import queue
import threading

from twisted.internet import defer
from twisted.python.failure import Failure


class WorkerThread:
    """A thread of its own: work given to it runs in order, off the reactor.

    A queue the thread takes calls from, each result handed back to the reactor
    with ``callFromThread``.  It replaced a Twisted ``ThreadPool`` of one thread,
    whose team coordinator and context tracking cost more Python per call than the
    fsync it carried did on the reactor (the node hands one over per Ready).

    Calls given before :meth:`start` wait for it.  It never keeps the process
    alive: an unfinished copy or install is a temporary file or a rolled-back
    transaction, and an fsync the process did not wait for was never relied on
    (nothing that needed it left the node).
    """

    def __init__(self, clock, name: str):
        self.clock = clock  # the reactor: results come back with its callFromThread
        self.name = name
        self._calls: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name=self.name, daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """End the thread once the calls given so far have run (waits for them)."""
        thread, self._thread = self._thread, None
        if thread is not None:
            self._calls.put(None)
            thread.join()

    def run(self, function, *args, **kwargs) -> defer.Deferred:
        """``function(*args, **kwargs)`` on the worker; its result on the reactor."""
        result = defer.Deferred()
        self._calls.put((result, function, args, kwargs))
        return result

    def _work(self) -> None:
        while (call := self._calls.get()) is not None:
            result, function, args, kwargs = call
            try:
                value = function(*args, **kwargs)
            except BaseException:
                self.clock.callFromThread(result.errback, Failure())
            else:
                self.clock.callFromThread(result.callback, value)
            del call, result, function, args, kwargs  # hold nothing while waiting for the next
