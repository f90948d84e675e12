"""How long a follower may leave committed entries unapplied (see ``parkd/node/driver.py``).

While nothing on the node waits for the next applies (the registered ``waiting``
predicates: a camera's frame, a linearizable read), a follower holds its
committed entries and applies them in one batch ``hold_s`` after the first was
held: fewer, bigger apply transactions, off the moment the leader commits and
acks.  The Raft core decides which entries may wait (``RaftCore.ready``'s
``hold_applies``); this only decides whether to ask, and for how long.
"""

from __future__ import annotations

from collections.abc import Callable


class ApplyHold:
    def __init__(self, clock, hold_s: float, release: Callable[[], None]) -> None:
        self.clock = clock
        self.hold_s = hold_s
        self._release = release  # runs the Ready loop once the hold ended
        self._waiting: list[Callable[[], bool]] = []
        self._timer = None  # ends the hold on the entries held now
        self._released = False  # the hold ended: apply what is committed

    def wait_for(self, waiting: Callable[[], bool]) -> None:
        """``waiting()`` is True while something on the node waits for the next applies."""
        self._waiting.append(waiting)

    def holding(self) -> bool:
        """Whether the next Ready should hold its applies."""
        return self.hold_s > 0 and not self._released and not any(w() for w in self._waiting)

    def settle(self, unapplied: bool) -> None:
        """After the Ready loop: time the hold of what is left ``unapplied``, or end it."""
        if not unapplied:
            self.end()
        elif self._timer is None and not self._released:
            self._timer = self.clock.callLater(self.hold_s, self._ended)

    def _ended(self) -> None:
        self._timer = None
        self._released = True
        self._release()

    def end(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self._released = False
