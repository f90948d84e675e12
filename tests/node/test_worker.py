"""The node's worker threads (parkd/node/worker.py), on the real reactor."""

from __future__ import annotations

import threading
import time

import pytest
import pytest_twisted
from twisted.internet import defer, reactor

from parkd.node.worker import WorkerThread


@pytest_twisted.ensureDeferred
async def test_calls_run_in_order_on_the_thread_and_results_come_back_on_the_reactor():
    worker = WorkerThread(reactor, name="parkd-test")
    worker.start()
    ran, delivered = [], []
    try:
        calls = [worker.run(lambda n=n: ran.append((n, threading.current_thread().name)) or n * n) for n in range(20)]
        for call in calls:
            call.addCallback(lambda value: delivered.append((value, threading.current_thread() is threading.main_thread())))
        await within(defer.gatherResults(calls))
    finally:
        worker.stop()
    assert ran == [(n, "parkd-test") for n in range(20)]
    assert delivered == [(n * n, True) for n in range(20)]


@pytest_twisted.ensureDeferred
async def test_an_exception_comes_back_as_a_failure_and_the_thread_goes_on():
    worker = WorkerThread(reactor, name="parkd-test")
    worker.start()
    try:
        with pytest.raises(OSError, match="disk gone"):
            await within(worker.run(_raise, OSError("disk gone")))
        assert await within(worker.run(lambda: "still here")) == "still here"
    finally:
        worker.stop()


def within(deferred, seconds=10):
    return deferred.addTimeout(seconds, reactor)


def _raise(error):
    raise error


@pytest_twisted.ensureDeferred
async def test_calls_given_before_start_wait_for_it_and_stop_waits_for_work_under_way():
    worker = WorkerThread(reactor, name="parkd-test")
    release, started = threading.Event(), threading.Event()
    order = []

    def slow():
        started.set()
        release.wait(10)
        order.append("slow")

    call = worker.run(slow)
    assert not started.is_set()
    worker.start()
    assert started.wait(10)  # the call given before start runs once it started
    stopper = threading.Thread(target=lambda: (worker.stop(), order.append("stopped")))
    stopper.start()
    deadline = time.monotonic() + 10
    while worker._calls.empty() and time.monotonic() < deadline:  # stop() has asked the thread to end
        time.sleep(0.001)  # bounded-poll: until stop() asked the thread to end, at most 10 s
    release.set()
    stopper.join(10)
    assert order == ["slow", "stopped"]
    await within(call)  # its result was handed to the reactor before the thread ended
