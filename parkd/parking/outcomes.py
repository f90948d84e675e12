"""What applying a frame entry yields: its outcome, the reason for a refusal, the receipt."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Outcome(enum.Enum):
    APPLIED = "applied"
    DUPLICATE = "duplicate"
    REJECTED = "rejected"


class Rejection(enum.Enum):
    """Why a frame is refused; the names match ``Error.Code`` in the wire protocol."""

    UNKNOWN_LOT = "unknown_lot"
    LOT_MISMATCH = "lot_mismatch"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    BAD_REQUEST = "bad_request"
    PERMISSION_DENIED = "permission_denied"  # the camera is disabled (CONTRACT §9)


class FrameRejected(ValueError):
    """A frame the state machine will not accept, with a reason fit for the camera."""

    def __init__(self, code: Rejection, message: str) -> None:
        super().__init__(message)
        self.code = code


# Receipt and ApplyResult are made per applied frame on every node, so they are not
# frozen: a frozen dataclass's __init__ sets each field through object.__setattr__,
# three times the cost (ApplyResult 1.9 against 0.6 µs; with FrameResult they were
# 7-9 % of a node's GIL time at saturation, py-spy).  Treat them as values all the same.
@dataclass(slots=True)
class Receipt:
    """Proof that a frame took effect: what the camera's ack reports.

    ``index`` and ``free`` are None only when retention has trimmed the frame.
    """

    camera_id: int
    seq: int
    index: int | None
    free: int | None
    incarnation: int = 0


@dataclass(slots=True)
class ApplyResult:
    """The outcome of the committed frame entry at ``entry_index``.

    ``index`` and ``free`` are what the camera's ack reports: those of the frame's
    first application (this entry, or the original one for a duplicate).  They are
    None for a rejection and for a duplicate of a trimmed frame.  ``camera_id``,
    ``incarnation``, ``seq`` and ``lot`` are those of the entry (0, 0, 0, "" if it
    could not be decoded).  ``incarnation_started``: this frame is the first of its
    camera's incarnation, which became the camera's current one.
    """

    entry_index: int
    outcome: Outcome
    camera_id: int
    seq: int
    lot: str
    index: int | None = None
    free: int | None = None
    rejection: Rejection | None = None
    reason: str = ""
    incarnation: int = 0
    incarnation_started: bool = False

    @property
    def duplicate(self) -> bool:
        return self.outcome is Outcome.DUPLICATE

    @property
    def key(self) -> tuple[int, int, int]:
        """``(camera_id, incarnation, seq)``: what exactly-once is per."""
        return (self.camera_id, self.incarnation, self.seq)
