"""Turning a frame's payload into a free-space count (CONTRACT §5).

An interface so that a real vision model can replace the hash rule; the node that
receives a frame calls it and forwards only the result to the leader.
"""

from __future__ import annotations

import hashlib
from typing import Protocol


class Analyzer(Protocol):
    def free_spaces(self, payload: bytes, capacity: int) -> int:
        """Free spaces seen in ``payload`` for a lot of ``capacity``: 0..capacity."""


class HashAnalyzer:
    """The original design's stand-in for vision: a hash of the payload."""

    def free_spaces(self, payload: bytes, capacity: int) -> int:
        if capacity < 0:
            raise ValueError(f"capacity must not be negative, got {capacity}")
        return int(hashlib.sha256(payload).hexdigest()[:4], 16) % (capacity + 1)
