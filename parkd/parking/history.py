"""A lot's free spaces over a time window, in a bounded number of points (``/history``).

A frame counts toward its lot's trend only if its incarnation was still the
camera's current one when it was applied (``log_index`` below the incarnation's
``superseded_index``): a late retry of an older incarnation lands in the frame
history but, as it never changed the lot's value, it is not part of the trend
either (CONTRACT §9).
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa


@dataclass(frozen=True, slots=True)
class HistoryPoint:
    at: float
    free: int


_LOT_FRAMES = """
FROM frames AS f JOIN cameras AS c ON c.camera_id = f.camera_id
JOIN incarnations AS i ON i.camera_id = f.camera_id AND i.incarnation = f.incarnation
WHERE c.lot = :lot AND f.captured_at >= :start AND f.captured_at <= :end
AND (i.superseded_index IS NULL OR f.log_index < i.superseded_index)
"""
_HISTORY_FIRST = f"SELECT MIN(f.captured_at) {_LOT_FRAMES}"
_HISTORY = f"""
SELECT MIN(CAST((f.captured_at - :start) / :step AS INTEGER), :last) AS bucket, f.captured_at, f.free,
       MAX(f.log_index)
{_LOT_FRAMES}
GROUP BY bucket ORDER BY bucket
"""


def lot_history(conn: sa.Connection, lot: str, start: float, end: float, points: int):
    """The lot's free spaces over [start, end] in at most ``points`` equal steps.

    The steps divide the part of the window that has frames (from the first
    frame in it to ``end``), so a young cluster still gets a detailed trend.
    A lot's value is the newest judgement (in log order) of any of its cameras,
    so each step reports its frame with the highest log index (SQLite takes the
    bare columns from the MAX row).  Steps without a frame are left out.
    Returns (the first frame's time or None, the points).
    """
    first = conn.scalar(sa.text(_HISTORY_FIRST), {"lot": lot, "start": start, "end": end})
    if first is None:
        return None, []
    step = max((end - first) / points, 1e-6)
    params = {"lot": lot, "start": first, "end": end, "step": step, "last": points - 1}
    rows = conn.execute(sa.text(_HISTORY), params)
    return first, [HistoryPoint(at, free) for _, at, free, _ in rows]
