"""The load generator's outbox: the Outbox interface without a disk (benchmarks only)."""

from __future__ import annotations

import itertools
import random
from collections import OrderedDict

from parkd.camera.outbox import Frame, new_incarnation


class MemoryOutbox:
    """The Outbox interface without a disk (benchmarks only).

    Each one is a new state dir, so it has a new incarnation (CONTRACT §9): a run
    that starts its cameras at seq 1 again is not taken for a retry of an earlier run.
    """

    def __init__(self, on_ack, on_discard=None, rng: random.Random | None = None):
        self.client = None  # the CameraClient sending from this outbox
        self.incarnation = new_incarnation(rng or random.SystemRandom())
        self.frames: OrderedDict[int, Frame] = OrderedDict()
        self.next_seq = 1
        self.on_ack = on_ack
        self.on_discard = on_discard or (lambda frame: None)
        self.dropped = 0

    def add(self, payload: bytes, captured_at: float) -> Frame:
        frame = Frame(self.next_seq, captured_at, payload)
        self.frames[frame.seq] = frame
        self.next_seq += 1
        return frame

    def pending(self, after: int = 0, limit: int | None = None) -> list[Frame]:
        """Unacknowledged frames with seq > ``after``, oldest first.

        Looked up by seq when fewer seqs than frames follow ``after``: a camera
        asks for what follows the frames it sent, and walking its whole window
        each time (every ack) took a quarter of the load generator's CPU at
        saturation (py-spy, 16 cameras with 128 frames in flight each).
        """
        if self.next_seq - after > len(self.frames):
            candidates = (frame for seq, frame in self.frames.items() if seq > after)
        else:
            candidates = (self.frames[seq] for seq in range(after + 1, self.next_seq) if seq in self.frames)
        return list(itertools.islice(candidates, limit))

    def ack(self, seq: int) -> bool:
        frame = self.frames.pop(seq, None)
        if frame is not None:
            self.on_ack(self.client, frame)
        return frame is not None

    def discard(self, seq: int) -> bool:
        self.dropped += 1
        frame = self.frames.pop(seq, None)
        if frame is not None:
            self.on_discard(frame)
        return frame is not None

    def counter(self, key: str) -> int:
        return self.next_seq if key == "next_seq" else self.dropped
