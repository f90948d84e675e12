"""A lot's free spaces over a time window, in a bounded number of points (``/history``).

The trend is read from ``lot_buckets`` (``parkd/parking/schema.py``), never from
the frames: for every lot and time bucket (``BUCKET_WIDTHS``: 10 s, 1 min and
10 min), the frame with the highest log index among those that changed the lot's
value, written by ``parkd/parking/batch.py`` in the transaction that applies the
frame (so buckets are in snapshots and identical on every node).  A frame changes
its lot's value when it advances its camera's current incarnation: a late lower
``seq``, and a late retry of an older incarnation (CONTRACT §9), land in the frame
history but never in the trend.

A window's answer costs one index seek plus one range of buckets of the coarsest
width no wider than a step: at most ``points`` times the ratio of two neighbouring
widths (<= 10) rows, whatever the number of frames.

**Placement of the points** (what changed from reading the frames, issue 14):

* ``start`` is the start of the first 10-s bucket in the window that holds data
  (it was the first frame's capture time), so a young lot still gets a detailed
  trend; the steps divide [start, end] as before.
* A step is made of whole buckets: a bucket belongs to the step its start falls
  in, so the step boundaries fall on bucket boundaries (each moved forward by less
  than one bucket width), and a bucket that starts before ``start`` is left out.
  Each step still reports its frame with the highest log index, at that frame's
  capture time; steps without a frame are left out.  Two frames in one bucket are
  never told apart: with 1000 points over an hour, steps are 10 s wide, not 3.6 s.
* A retention cut hides the buckets that end at or before its cutoff (and whose
  frame came before the cut in the log), as it hides the frames.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa

from parkd.parking.retention import hide_doomed_buckets, pending_cuts
from parkd.parking.schema import BUCKET_WIDTHS


@dataclass(frozen=True, slots=True)
class HistoryPoint:
    at: float
    free: int


_FIRST = """
SELECT b.bucket FROM lot_buckets AS b
WHERE b.lot = :lot AND b.width = :width AND b.bucket >= :start AND b.bucket <= :end {visible}
ORDER BY b.bucket LIMIT 1
"""
_STEPS = """
SELECT min(max(CAST((b.bucket - :first) / :step AS INTEGER), 0), :last) AS k, b.captured_at, b.free,
       max(b.log_index)
FROM lot_buckets AS b
WHERE b.lot = :lot AND b.width = :width AND b.bucket >= :first AND b.bucket <= :end {visible}
GROUP BY k ORDER BY k
"""


def step_width(step: float) -> int:
    """The bucket width a step of ``step`` seconds is read from: the coarsest no wider than it."""
    return max((w for w in BUCKET_WIDTHS if w <= step), default=BUCKET_WIDTHS[0])


def lot_history(conn: sa.Connection, lot: str, start: float, end: float, points: int):
    """The lot's free spaces over [start, end] in at most ``points`` steps (see the module docstring).

    Returns (the start of the first bucket with data, or None; the points).
    """
    visible = f"AND {hide_doomed_buckets('b')}" if pending_cuts(conn) else ""
    fine = BUCKET_WIDTHS[0]
    params = {"lot": lot, "start": start, "end": end, "width": fine}
    first = conn.scalar(sa.text(_FIRST.format(visible=visible)), params)
    if first is None:
        return None, []
    step = max((end - first) / points, 1e-6)
    params.update(first=first, step=step, last=points - 1, width=step_width(step))
    rows = conn.execute(sa.text(_STEPS.format(visible=visible)), params)
    return first, [HistoryPoint(at, free) for _, at, free, _ in rows]
