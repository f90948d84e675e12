"""The garbage collector's pauses in this process: measured, reported, and kept short.

Every automatic collection stops the reactor for as long as it traverses the
tracked objects of its generations: a full (generation 2) collection of a node
holding 10,000 camera connections took 60-400 ms under load, longer than the
ack latency it stalls.  :class:`GcPauses` times each collection through
``gc.callbacks`` (two ``perf_counter`` calls per collection) and keeps, per
generation, how many ran and the longest.  :class:`GcService` (the node process's, wired by
``parkd/tap.py``) installs it, logs the full collections every
:data:`REPORT_INTERVAL_S` and a pause above :data:`SLOW_PAUSE_S` on its own line.

:func:`settle_after_start` is called once the node is built: ``gc.freeze()``
moves everything start-up made (modules, classes, the config, the recovered log)
to the permanent generation, which no later collection traverses; and the young
generation's threshold is raised (:data:`GEN0_THRESHOLD`) so that the many
short-lived objects of each frame trigger fewer collections.  Cycles are still
collected; only start-up's objects are never looked at again.  It does not
collect first: start-up leaves almost no garbage (11 objects on a node that
opened 200k frames), while a full collection of its ~116k objects stopped the
just-started reactor for 60-230 ms.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from dataclasses import dataclass

from twisted.application import service
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

SLOW_PAUSE_S = 0.05  # a single collection longer than this is logged
REPORT_INTERVAL_S = 10.0
REPORT_PAUSE_S = 0.01  # a younger collection this long is worth a report line too
GEN0_THRESHOLD = 50_000  # allocations minus deallocations between young collections (CPython's default: 700)


@dataclass
class Pauses:
    """Collections of one generation since the last report: how many, their total and the longest (seconds)."""

    count: int = 0
    total: float = 0.0
    longest: float = 0.0


class GcPauses:
    """Times the collector's runs while installed (``gc.callbacks``); ``take()`` hands over and resets."""

    def __init__(self, on_slow: Callable[[int, float], None] | None = None, timer=time.perf_counter):
        self._timer = timer
        self._on_slow = on_slow
        self._started: float | None = None
        self._pauses = [Pauses(), Pauses(), Pauses()]

    def install(self) -> None:
        if self._callback not in gc.callbacks:
            gc.callbacks.append(self._callback)

    def uninstall(self) -> None:
        if self._callback in gc.callbacks:
            gc.callbacks.remove(self._callback)

    def _callback(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._started = self._timer()
            return
        if self._started is None:
            return
        seconds, self._started = self._timer() - self._started, None
        pauses = self._pauses[min(info.get("generation", 2), 2)]
        pauses.count += 1
        pauses.total += seconds
        pauses.longest = max(pauses.longest, seconds)
        if seconds > SLOW_PAUSE_S and self._on_slow is not None:
            self._on_slow(info.get("generation", 2), seconds)

    def take(self) -> list[Pauses]:
        """The pauses per generation (0, 1, 2) since the last call."""
        taken, self._pauses = self._pauses, [Pauses(), Pauses(), Pauses()]
        return taken


def settle_after_start(gen0_threshold: int = GEN0_THRESHOLD) -> int:
    """Freeze what start-up made (no collection: see the module's docstring), raise the young threshold; the objects frozen."""
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(gen0_threshold, gen1, gen2)
    return gc.get_freeze_count()


class GcService(service.Service):
    """The node process's collector: settled once the reactor runs, its pauses timed and reported."""

    log = Logger()

    def __init__(self, reactor, settle: bool = True):
        self.reactor = reactor
        self.settle = settle
        self.pauses = GcPauses(on_slow=self._slow)
        self._report = LoopingCall(self.report)
        self._report.clock = reactor

    def startService(self) -> None:
        super().startService()
        self.pauses.install()
        if self.settle:
            self.reactor.callWhenRunning(self._settle)
        self._report.start(REPORT_INTERVAL_S, now=False)

    def stopService(self):
        if self._report.running:
            self._report.stop()
        self.pauses.uninstall()
        return super().stopService()

    def _settle(self) -> None:
        frozen = settle_after_start()
        self.log.info("gc: {frozen} objects of start-up frozen; young threshold {threshold}",
                      frozen=frozen, threshold=gc.get_threshold()[0])  # fmt: skip

    def _slow(self, generation: int, seconds: float) -> None:
        self.log.warn("gc: a generation {generation} collection stopped the node for {ms:.0f} ms",
                      generation=generation, ms=round(seconds * 1000, 1), parkd_event="gc_slow")  # fmt: skip

    def report(self) -> None:
        """One line per interval with a full collection or a younger one above :data:`REPORT_PAUSE_S`."""
        young, middle, full = self.pauses.take()
        younger = max(young.longest, middle.longest)
        if full.count or younger >= REPORT_PAUSE_S:
            self.log.info(
                "gc in the last {seconds:.0f}s: {full} full collections (longest {longest_ms:.1f} ms), "
                "{young} young and {middle} middle (longest {younger_ms:.1f} ms, {young_ms:.1f} ms in all)",
                seconds=REPORT_INTERVAL_S, full=full.count, longest_ms=full.longest * 1000, young=young.count,
                middle=middle.count, younger_ms=younger * 1000, young_ms=(young.total + middle.total) * 1000,
            )  # fmt: skip
