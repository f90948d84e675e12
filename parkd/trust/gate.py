"""Handshakes taking turns: a bounded amount of TLS handshake work per reactor turn.

Thousands of cameras failing over to a node at once otherwise made single
reactor turns of seconds, in which no heartbeat went out: the survivors lost
their leader over and over while the cameras' handshakes timed out and started
again.  About 50 ms of handshake work runs per turn.  The guarded TLS
protocol (:mod:`parkd.trust.guard`) asks the gate before each handshake step
and waits, unread, when told to; the gate knows protocols only through
``closed`` and ``take_turn()``.
"""

from __future__ import annotations

from collections import deque

HANDSHAKE_BUDGET_PER_TURN = 0.05  # seconds of handshake work per reactor turn (then heartbeats and the rest)


class HandshakeGate:
    """About ``budget`` seconds of handshake work per reactor turn; the rest waits for later turns.

    A step is one read that moves a handshake on (a ClientHello, a client's
    certificate and Finished, a server's answer); it costs 0.5-2 ms of CPU.
    ``admit(continuing)`` says whether a step may run now, and ``ran(seconds)``
    counts what it took.  A step that may not run is ``wait``-ed with its
    protocol, which stops reading and has its ``take_turn()`` called on a later
    turn: steps of handshakes already under way first (they finish a
    handshake, and free a client to send), then new ones, each in arrival
    order.  A protocol closed while waiting (its handshake deadline ran out) is
    skipped.  The gate does not bound how many connections handshake at once,
    so a client that stalls its handshake holds no place: its deadline cuts it.
    """

    def __init__(self, clock, budget: float = HANDSHAKE_BUDGET_PER_TURN):
        if budget <= 0:
            raise ValueError("budget must be positive")
        self.clock = clock
        self.budget = budget
        self.waited = 0  # steps that had to wait for a later turn, in all
        self._spent = 0.0  # seconds of handshake steps in this turn
        self._continuing: deque = deque()
        self._new: deque = deque()
        self._next_turn = None

    def admit(self, continuing: bool) -> bool:
        """Whether a step may run in this turn (``continuing``: its handshake had a step before)."""
        self._turn_ends()
        waiting = self._continuing if continuing else (self._continuing or self._new)
        return not waiting and self._spent < self.budget

    def ran(self, seconds: float) -> None:
        self._spent += seconds

    def wait(self, protocol, continuing: bool) -> None:
        self.waited += 1
        (self._continuing if continuing else self._new).append(protocol)

    def _turn_ends(self) -> None:
        if self._next_turn is None:
            self._next_turn = self.clock.callLater(0, self._new_turn)

    def _new_turn(self) -> None:
        self._next_turn = None
        self._spent = 0.0
        for queue in (self._continuing, self._new):
            while queue and self._spent < self.budget:
                protocol = queue.popleft()
                if not protocol.closed:
                    protocol.take_turn()
        if self._continuing or self._new or self._spent:
            self._turn_ends()
