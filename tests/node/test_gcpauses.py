"""The collector's pauses: timed per generation, slow ones and full collections reported (parkd/node/gcpauses.py)."""

import gc

import pytest
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher

from parkd.node.gcpauses import REPORT_INTERVAL_S, REPORT_PAUSE_S, SLOW_PAUSE_S, GcPauses, GcService, settle_after_start


class Steps:
    """A timer that moves ``step`` seconds at every reading."""

    def __init__(self, step: float):
        self.step, self.now = step, 0.0

    def __call__(self) -> float:
        self.now += self.step
        return self.now


@pytest.fixture
def no_automatic_gc():
    enabled = gc.isenabled()
    gc.disable()  # only the test's own collections
    yield
    if enabled:
        gc.enable()


def test_each_collection_is_timed_in_its_generation(no_automatic_gc):
    pauses = GcPauses(timer=Steps(0.001))
    pauses.install()
    try:
        gc.collect(0)
        gc.collect(0)
        gc.collect(2)
    finally:
        pauses.uninstall()
    gc.collect(2)  # after uninstall: not counted
    young, middle, full = pauses.take()
    assert (young.count, middle.count, full.count) == (2, 0, 1)
    assert full.longest == pytest.approx(0.001) and young.total == pytest.approx(0.002)
    assert [p.count for p in pauses.take()] == [0, 0, 0]  # taken: reset


def test_a_slow_collection_is_reported_at_once(no_automatic_gc):
    slow = []
    pauses = GcPauses(on_slow=lambda generation, seconds: slow.append((generation, seconds)),
                      timer=Steps(SLOW_PAUSE_S * 2))  # fmt: skip
    pauses.install()
    try:
        gc.collect(1)
    finally:
        pauses.uninstall()
    assert slow == [(1, pytest.approx(SLOW_PAUSE_S * 2))]


def test_the_service_logs_the_full_collections_of_each_interval(no_automatic_gc):
    clock, events = Clock(), []
    gcs = GcService(clock, settle=False)
    gcs.pauses = GcPauses(timer=Steps(0.002))
    globalLogPublisher.addObserver(events.append)
    try:
        gcs.startService()
        clock.advance(REPORT_INTERVAL_S)  # nothing collected: no line
        gc.collect(2)
        gc.collect(0)
        clock.advance(REPORT_INTERVAL_S)
        gcs.stopService()
    finally:
        globalLogPublisher.removeObserver(events.append)
    lines = [e for e in events if e.get("log_namespace", "").endswith("GcService") and "full" in e]
    assert [(e["full"], e["young"], round(e["longest_ms"], 1)) for e in lines] == [(1, 1, 2.0)]
    assert gcs.pauses._callback not in gc.callbacks


def test_settling_freezes_start_up_and_raises_the_young_threshold_without_a_collection(no_automatic_gc):
    threshold = gc.get_threshold()
    pauses = GcPauses()
    pauses.install()
    try:
        frozen = settle_after_start(12345)
        assert frozen == gc.get_freeze_count() > 1000  # at least the modules' objects
        assert gc.get_threshold() == (12345, *threshold[1:])
        # a full collection of start-up's objects is the very stall settling avoids
        assert [p.count for p in pauses.take()] == [0, 0, 0]
    finally:
        pauses.uninstall()
        gc.unfreeze()
        gc.set_threshold(*threshold)


def test_a_long_young_collection_is_reported_too(no_automatic_gc):
    clock, events = Clock(), []
    gcs = GcService(clock, settle=False)
    gcs.pauses = GcPauses(timer=Steps(REPORT_PAUSE_S))
    globalLogPublisher.addObserver(events.append)
    try:
        gcs.startService()
        gc.collect(0)
        clock.advance(REPORT_INTERVAL_S)
        gcs.stopService()
    finally:
        globalLogPublisher.removeObserver(events.append)
    [line] = [e for e in events if e.get("log_namespace", "").endswith("GcService") and "full" in e]
    assert (line["full"], line["young"], round(line["younger_ms"], 1)) == (0, 1, REPORT_PAUSE_S * 1000)


def test_the_service_logs_a_slow_collection_as_a_gc_slow_event(no_automatic_gc):
    clock, events = Clock(), []
    gcs = GcService(clock, settle=False)
    gcs.pauses = GcPauses(on_slow=gcs._slow, timer=Steps(SLOW_PAUSE_S + 0.01))
    globalLogPublisher.addObserver(events.append)
    try:
        gcs.startService()
        gc.collect(2)
        gcs.stopService()
    finally:
        globalLogPublisher.removeObserver(events.append)
    [line] = [e for e in events if e.get("parkd_event") == "gc_slow"]  # what the day-of-data bench reads
    assert (line["generation"], line["ms"]) == (2, pytest.approx((SLOW_PAUSE_S + 0.01) * 1000))
