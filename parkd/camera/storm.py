"""A reconnect storm as the load generator measures it (``bench.py``'s scale row)."""

from __future__ import annotations

import math
from collections import Counter

from parkd.camera.outbox import Frame


class Storm:
    """A reconnect storm: for each camera, the time from ``started`` to the ack of the frame it captured then."""

    def __init__(self, gen, started: float):
        self.gen = gen
        self.started = started
        self.connects_before = gen.camera_connects()
        self.refused_before = gen.errors()
        self.events_before = Counter(gen.log.counts)
        self.marks: dict[int, int] = {}  # camera id -> seq of its frame captured at ``started``
        self.recovered: dict[int, float] = {}  # camera id -> seconds from ``started`` to that frame's ack
        self.before = {c.camera_id: c.proto for c in gen.clients}  # each camera's connection at ``started``
        self.moved = self.resumed = 0  # cameras acked again on a new connection; ... that resumed a TLS session

    def mark(self, client, frame: Frame) -> None:
        self.marks[client.camera_id] = frame.seq

    def acked(self, client, frame: Frame, now: float) -> None:
        if frame.seq == self.marks.get(client.camera_id) and client.camera_id not in self.recovered:
            self.recovered[client.camera_id] = now - self.started
            if client.proto is not self.before.get(client.camera_id):
                self.moved += 1
                self.resumed += bool(getattr(client.proto.transport, "resumed", False))

    def done(self) -> bool:
        return len(self.recovered) == len(self.marks)

    def result(self) -> dict:
        """``t50_s``, ``t99_s``, ``t100_s``: when that share of the cameras had been acked again (None: not yet).

        ``by_second``: how many were acked again in each second after ``started``.
        """
        times = sorted(self.recovered.values())

        def until(share: float):
            needed = math.ceil(share * len(self.marks))
            return round(times[needed - 1], 3) if 0 < needed <= len(times) else None

        per_second = Counter(int(t) for t in times)
        return dict(cameras=len(self.marks), recovered=len(times), t50_s=until(0.5), t99_s=until(0.99),
                    by_second=[per_second[i] for i in range(int(times[-1]) + 1 if times else 0)],
                    t100_s=until(1.0), connects=self.gen.camera_connects() - self.connects_before,
                    refused=self.gen.errors() - self.refused_before, moved=self.moved, resumed=self.resumed,
                    client_events=dict(self.gen.log.counts - self.events_before))  # fmt: skip
