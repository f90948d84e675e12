"""Frame-history retention: keep ``frames`` bounded while dedup and current values survive.

Every node must trim alike, so trimming is a committed log entry of its own (issue 6):
the leader periodically proposes :func:`retention_entry` carrying a cutoff time it
computed once (``now - window``), and :meth:`ParkingState.apply` runs :func:`trim_in`
when that entry is applied, in the same transaction as the frames around it and
``last_applied``.  The result depends only on the cutoff and the tables, never on a
node's clock, so all nodes reach identical tables at the same index.

What a trim does (one transaction), per camera incarnation (CONTRACT §9):

* deletes every ``frames`` row with ``captured_at < cutoff`` except each
  incarnation's newest frame (``seq = incarnations.last_seq``), which stays as the
  receipt of its newest frame (for the current incarnation: the camera's current
  value);
* raises the incarnation's ``trimmed_seq`` to the highest ``seq`` it deleted of it
  (never lowers it).  ``ParkingState`` treats any frame with ``seq <= trimmed_seq``
  of that incarnation as a duplicate, so a retry of a trimmed frame is never applied
  again.  The price is the one the state module describes: a frame that was *never*
  applied and arrives after a higher ``seq`` of its incarnation was trimmed (that is,
  more than the window late) is taken for a duplicate too.
* ``incarnations`` rows themselves (the dedup positions), ``cameras`` current values
  and ``lots`` are not touched.

No Twisted here; the node layer decides when to propose (see :class:`RetentionPolicy`).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass

import sqlalchemy as sa

from parkd.db import storage_errors
from parkd.parking.codec import Retention, encode_retention
from parkd.parking.schema import incarnation_from_db

DEFAULT_WINDOW_S = 24 * 3600.0
DEFAULT_INTERVAL_S = 600.0

# Plain SQL on the parking tables (parkd/parking/schema.py defines them).
_DOOMED = "f.captured_at < :cutoff AND f.seq < i.last_seq"
_PER_INCARNATION = (
    "SELECT f.camera_id, f.incarnation, max(f.seq), count(*) FROM frames AS f "
    "JOIN incarnations AS i ON i.camera_id = f.camera_id AND i.incarnation = f.incarnation "
    f"WHERE {_DOOMED} "
    # "+": group in a temporary B-tree; grouping along the primary key would read
    # every row through the index (measured: 1.8 s instead of 0.08 s for 1M frames).
    "GROUP BY +f.camera_id, +f.incarnation ORDER BY 1, 2"
)
_RAISE_TRIMMED = (
    "UPDATE incarnations SET trimmed_seq = :seq "
    "WHERE camera_id = :camera_id AND incarnation = :incarnation AND trimmed_seq < :seq"
)
_DELETE = (
    "DELETE FROM frames WHERE frames.captured_at < :cutoff AND frames.seq < ("
    "SELECT i.last_seq FROM incarnations AS i "
    "WHERE i.camera_id = frames.camera_id AND i.incarnation = frames.incarnation)"
)


RETENTION_INDEX = "frames_by_captured_at"


def ensure_retention_index(target) -> None:
    """Index ``frames.captured_at`` so that a trim costs what it deletes, not a full scan.

    Optional and idempotent; the node calls it once at start-up (on an Engine or a
    Connection).  Without it a trim scans the whole history: about 0.25 s per 1M
    frames; with it, about 0.1 s per 40k frames deleted and ~0 when nothing is due
    (benchmarks/snapshot_pause.py).  It changes no result, only the query plan, so
    nodes with and without it still trim alike.  Building it costs ~0.5 s per 1M rows.
    """
    statement = sa.text(f"CREATE INDEX IF NOT EXISTS {RETENTION_INDEX} ON frames (captured_at)")
    with storage_errors("creating the retention index"), _transaction(target) as conn:
        conn.execute(statement)


@contextlib.contextmanager
def _transaction(target) -> Iterator[sa.Connection]:
    """A connection in a transaction on an Engine, a Connection or a ``ParkingState``.

    A Connection already in a transaction is used as it is (the caller commits).
    """
    if isinstance(target, sa.Connection):
        if target.in_transaction():
            yield target
        else:
            with target.begin():
                yield target
        return
    engine = target if isinstance(target, sa.Engine) else target.engine
    with engine.begin() as conn:
        yield conn


@dataclass(frozen=True, slots=True)
class TrimResult:
    """What one trim removed: ``trimmed`` holds (camera_id, incarnation, highest deleted seq) triples."""

    cutoff: float
    frames_deleted: int
    trimmed: tuple[tuple[int, int], ...] = ()


def retention_entry(cutoff: float) -> bytes:
    """The data of a NORMAL log entry that trims the history before ``cutoff`` when applied."""
    return encode_retention(Retention(cutoff))


def trim_in(conn: sa.Connection, cutoff: float) -> TrimResult:
    """Trim inside the caller's transaction (how ``ParkingState.apply`` runs a retention entry)."""
    if not math.isfinite(cutoff):
        raise ValueError(f"retention cutoff {cutoff} is not a finite number")
    params = {"cutoff": cutoff}
    per_incarnation = conn.execute(sa.text(_PER_INCARNATION), params).all()
    if not per_incarnation:
        return TrimResult(cutoff, 0)
    raises = [{"camera_id": c, "incarnation": i, "seq": s} for c, i, s, _ in per_incarnation]
    conn.execute(sa.text(_RAISE_TRIMMED), raises)
    deleted = conn.execute(sa.text(_DELETE), params).rowcount
    expected = sum(n for *_, n in per_incarnation)
    if deleted != expected:  # the same predicate twice in one transaction
        raise AssertionError(f"retention deleted {deleted} frames, expected {expected}")
    trimmed = tuple((c, incarnation_from_db(i), s) for c, i, s, _ in per_incarnation)
    return TrimResult(cutoff, deleted, trimmed)


def trim_history(target, before_captured_at: float) -> TrimResult:
    """Trim in a transaction of its own on an Engine, a Connection or a ``ParkingState``.

    For tools and tests on ONE database: a node must trim only by applying a
    :func:`retention_entry`, or replicas would diverge.  ``last_applied`` does not move.
    """
    with storage_errors("trimming the frame history"), _transaction(target) as conn:
        return trim_in(conn, before_captured_at)


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    """When the leader proposes a retention entry and with which cutoff.

    ``window_s`` of history is kept (default 24 h); a trim is proposed at most every
    ``interval_s`` (default 10 min) so each one deletes a small slice.  The clock
    readings come from the caller (the reactor's clock); only the cutoff in the entry
    reaches the state machine.
    """

    window_s: float = DEFAULT_WINDOW_S
    interval_s: float = DEFAULT_INTERVAL_S

    def __post_init__(self) -> None:
        if not (math.isfinite(self.window_s) and self.window_s > 0):
            raise ValueError(f"retention window must be positive seconds, not {self.window_s}")
        if not (math.isfinite(self.interval_s) and self.interval_s > 0):
            raise ValueError(f"retention interval must be positive seconds, not {self.interval_s}")

    def cutoff(self, now: float) -> float:
        return now - self.window_s

    def due(self, now: float, last_proposed: float | None) -> bool:
        return last_proposed is None or now - last_proposed >= self.interval_s
