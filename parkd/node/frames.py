"""Frames from cameras: analyse here, propose the result, ack after local apply.

The node that receives a frame computes its free spaces (spreading analysis
over the cluster) and proposes only the result; a follower's core forwards it
to the leader.  The camera is acknowledged once the entry is committed *and*
applied on this node (CONTRACT §5).  Retries are safe: the state machine
applies each ``(camera_id, incarnation, seq)`` once and answers duplicates with
the original result.  A frame belongs to the incarnation its connection's
``Hello`` named (CONTRACT §9).

A node that knows no leader (an election is on) holds new frames instead of
refusing them: they wait, as frames already in flight do, and are proposed
as soon as a leader is known.  The hold is bounded: a frame held for
:data:`MAX_HOLD_S` without a leader, or one beyond :data:`MAX_HELD` held
frames, gets ``Unavailable(retry_after_ms=NO_LEADER_RETRY_MS)`` as before and
the camera retries it from its outbox (CONTRACT §5).

A camera the registry disabled (``registry.py``) is refused with
``PERMISSION_DENIED`` and its connection closed: at its ``Hello``, at a frame,
and when a frame proposed before the disable entry is rejected at apply.

The intake follows the driver's events (applied entries, a new leader, an
installed snapshot), writes the per-frame ``frame_applied`` events and the
``incarnation_started`` events, and tells an :class:`IntakeObserver` (the
node's metrics) what it proposed and how long each ack took.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from typing import Protocol

from twisted.logger import Logger

from parkd.events import FRAME_EVENTS
from parkd.node.events import EntriesApplied, LeaderChanged, SnapshotInstalled
from parkd.parking import codec
from parkd.parking.batch import disabled_message
from parkd.parking.state import FrameRejected, Outcome, Rejection
from parkd.proto import parkd_pb2 as pb
from parkd.raft.core import NotLeader

NO_LEADER_RETRY_MS = 300
# A frame that finds no leader is held this long for an election to end (one
# after a kill -9 takes tens of ms: the survivors see the connection drop), and
# at most this many at once; then Unavailable.
MAX_HOLD_S = 1.0
MAX_HELD = 20_000
ALARM_RETRY_MS = 2000  # a camera refused for an alarm (nospace) waits this long
MAX_TIMED_ACKS = 100_000  # frames in flight whose arrival time is remembered
# The fields of a frame_applied event (CONTRACT §8), in the order _log_applied gives them.
_APPLIED_FIELDS = ("parkd_event", "camera_id", "incarnation", "seq", "index", "free", "lot")


class IntakeObserver(Protocol):
    def proposed(self, accepted: bool) -> None:
        """A frame result was proposed (or forwarded), or refused for want of a leader."""

    def acked(self, seconds: float) -> None:
        """A waiting camera was acked ``seconds`` after its frame arrived."""

    def applied(self, results) -> None:
        """Entries were applied: their results (applied, duplicate, rejected)."""


class _NoObserver:
    def proposed(self, accepted: bool) -> None:
        pass

    def acked(self, seconds: float) -> None:
        pass

    def applied(self, results) -> None:
        pass


Key = tuple[int, int, int]  # (camera_id, incarnation, seq): what exactly-once is per


class _NoRegistry:
    def is_disabled(self, camera_id: int) -> bool:
        return False


class FrameIntake:
    """Node-wide: validation, proposing, and who is waiting for which ack.

    ``registry``: the node's CameraRegistry (``is_disabled``); none: every camera is enabled.
    ``max_hold_s``, ``max_held``: how long and how many frames wait for a leader to be known.
    """

    log = Logger()

    def __init__(
        self,
        driver,
        state,
        analyzer,
        lots: dict[str, int],
        clock,
        registry=None,
        *,
        max_hold_s: float = MAX_HOLD_S,
        max_held: int = MAX_HELD,
    ):
        self.max_hold_s = max_hold_s
        self.max_held = max_held
        self.propose: Callable[[bytes], None] = driver.propose
        self.state = state
        self.analyzer = analyzer
        self.lots = lots
        self.clock = clock
        self.registry = registry if registry is not None else _NoRegistry()
        self.observer: IntakeObserver = _NoObserver()
        # Why new frames must wait (a raised alarm, parkd/node/alarms.py), or None.
        self.admission: Callable[[], str | None] = lambda: None
        driver.subscribe(self._applied, EntriesApplied)
        driver.subscribe(self._leader_changed, LeaderChanged)
        driver.subscribe(self._snapshot_installed, SnapshotInstalled)
        self.waiting: dict[Key, set] = defaultdict(set)
        self._arrived: dict[Key, float] = {}  # when each waiting frame arrived
        self.cameras = 0  # connected cameras (for metrics)
        # What this node has applied: each camera's lot, and each incarnation's
        # highest seq, read from the database in two queries at the first frame
        # (a query per camera cost ~0.3 ms each: 10,000 cameras connecting at once
        # stalled the reactor past the election timeout) and then kept current by
        # applied(): the hot path needs no query unless a frame may be a retry of
        # an applied one.
        self._applied_lots: dict[int, str] | None = None
        self._applied_seqs: dict[tuple[int, int], int] = {}
        # What was proposed for each waiting frame: re-proposed when the leader
        # changes, since a proposal in flight to a leader that stepped down (or
        # refused it while handing over) is lost; duplicates apply once anyway.
        self._proposed: dict[Key, bytes] = {}
        # Frames waiting for a leader to be known, and since when (in arrival
        # order): proposed at the next LeaderChanged, refused after MAX_HOLD_S.
        self._held: dict[Key, float] = {}
        self._expiry = None  # the timer that refuses the oldest held frame

    def observe(self, observer: IntakeObserver) -> None:
        """Tell ``observer`` (the node's metrics) what the intake proposes, acks and applies."""
        self.observer = observer

    def _camera(self, camera_id: int, incarnation: int) -> tuple[str | None, int]:
        """(the camera's lot or None, its incarnation's highest applied seq or 0) on this node."""
        if self._applied_lots is None:
            self._applied_lots = {view.camera_id: view.lot for view in self.state.cameras()}
            self._applied_seqs = self.state.applied_seqs()
        return self._applied_lots.get(camera_id), self._applied_seqs.get((camera_id, incarnation), 0)

    def _snapshot_installed(self, _event: SnapshotInstalled) -> None:
        """The state was replaced wholesale: read the applied cameras again when needed."""
        self._applied_lots = None
        self._applied_seqs = {}

    def check_hello(self, hello) -> tuple[int, str] | None:
        """An Error (code, message) for a bad Hello, or None (the connection is closed on one)."""
        if hello.lot not in self.lots:
            return pb.Error.UNKNOWN_LOT, f"unknown lot {hello.lot!r}"
        if self.registry.is_disabled(hello.camera_id):
            return pb.Error.PERMISSION_DENIED, disabled_message(hello.camera_id)
        return None

    def submit(self, conn, frame) -> None:
        """Handle one SubmitFrame from ``conn`` (a ClientPortProtocol)."""
        problem = self._check_connection(conn, frame)
        if problem is not None:
            conn.send_error(*problem, seq=frame.seq)
            return
        if self.registry.is_disabled(frame.camera_id):
            conn.reject(pb.Error.PERMISSION_DENIED, disabled_message(frame.camera_id))
            return
        incarnation = conn.incarnation
        known_lot, last_seq = self._camera(frame.camera_id, incarnation)
        try:
            capacity = self.state.check(
                frame.camera_id, frame.lot, frame.seq, frame.captured_at, frame.payload, known_lot
            )
        except FrameRejected as e:
            conn.send_error(pb.Error.Code.Value(e.code.name), str(e), seq=frame.seq)
            return
        earlier = self.state.lookup(frame.camera_id, incarnation, frame.seq) if frame.seq <= last_seq else None
        if earlier is not None:  # applied before: answer with the original result
            conn.send_ack(frame.camera_id, frame.seq, earlier.index or 0, earlier.free or 0)
            return
        refusal = self.admission()
        if refusal is not None:  # the camera keeps the frame in its outbox and retries
            conn.send_envelope(pb.Envelope(unavailable=pb.Unavailable(retry_after_ms=ALARM_RETRY_MS, reason=refusal)))
            return
        free = self.analyzer.free_spaces(frame.payload, capacity)
        result = codec.FrameResult(frame.camera_id, frame.lot, frame.seq, frame.captured_at, free, incarnation)
        data = codec.encode(result)
        key = (frame.camera_id, incarnation, frame.seq)
        now = self.clock.seconds()
        try:
            self.propose(data)
        except NotLeader:
            if key not in self._held and len(self._held) >= self.max_held:
                self.observer.proposed(False)
                conn.send_envelope(_no_leader())
                return
            self._held.setdefault(key, now)
            if self._expiry is None:
                self._expiry = self.clock.callLater(self.max_hold_s, self._expire_held)
        else:
            self.observer.proposed(True)
        if key not in self._arrived and len(self._arrived) < MAX_TIMED_ACKS:
            self._arrived[key] = now
        self.waiting[key].add(conn)
        self._proposed[key] = data
        conn.waiting_for.add(key)

    def awaits_applies(self) -> bool:
        """Whether a camera waits for a frame of its to be applied here (its ack)."""
        return bool(self.waiting)

    def _leader_changed(self, event: LeaderChanged) -> None:
        """A new leader is known: propose the waiting frames again (see ``_proposed``), held ones too."""
        if event.leader_id is None:
            return
        for data in list(self._proposed.values()):
            try:
                self.propose(data)
            except NotLeader:
                return
        for _ in range(len(self._held)):
            self.observer.proposed(True)
        self._held.clear()
        self._cancel_expiry()

    def _expire_held(self) -> None:
        """Refuse the frames held ``max_hold_s`` without a leader (Unavailable: the camera retries them)."""
        self._expiry = None
        now = self.clock.seconds()
        while self._held:
            key, since = next(iter(self._held.items()))
            if now - since < self.max_hold_s:
                self._expiry = self.clock.callLater(self.max_hold_s - (now - since), self._expire_held)
                return
            del self._held[key]
            self.observer.proposed(False)
            self._proposed.pop(key, None)
            self._arrived.pop(key, None)
            for conn in self.waiting.pop(key, ()):
                conn.waiting_for.discard(key)
                conn.send_envelope(_no_leader())

    def _cancel_expiry(self) -> None:
        if self._expiry is not None and self._expiry.active():
            self._expiry.cancel()
        self._expiry = None

    @staticmethod
    def _check_connection(conn, frame) -> tuple[int, str] | None:
        """The frame must come from the camera that said Hello, for its lot."""
        if conn.camera_id is None:
            return pb.Error.BAD_REQUEST, "send Hello before frames"
        if frame.camera_id != conn.camera_id:
            return pb.Error.BAD_REQUEST, f"frame of camera {frame.camera_id} on camera {conn.camera_id}'s connection"
        if frame.lot != conn.lot:
            return pb.Error.LOT_MISMATCH, f"camera {frame.camera_id} said lot {conn.lot!r}, frame says {frame.lot!r}"
        return None

    def _applied(self, event: EntriesApplied) -> None:
        """Log the frames this node just applied and tell the cameras waiting for them.

        Each camera connection gets the batch's answers in one write (one ``send``,
        one TLS record), after the batch's events are written.
        """
        results = event.results
        self._log_applied(results)
        self.observer.applied(results)
        now = self.clock.seconds()
        corked = set()  # connections holding their answers until the batch is done
        try:
            for result in results:
                self._settle(result, now, corked)
        finally:
            for conn in corked:
                conn.uncork()

    def _log_applied(self, results) -> None:
        FRAME_EVENTS.emit_rows(
            "parkd.node", "applied frame {seq} of camera {camera_id} at {index}: {free} free", _APPLIED_FIELDS,
            [("frame_applied", r.camera_id, r.incarnation, r.seq, r.index, r.free, r.lot)
             for r in results if r.outcome is Outcome.APPLIED],
        )  # fmt: skip
        for r in results:
            if r.outcome is Outcome.APPLIED and r.incarnation_started:
                self.log.info(
                    "camera {camera_id} started incarnation {incarnation} at index {index} (seq {seq})",
                    parkd_event="incarnation_started",
                    camera_id=r.camera_id, incarnation=r.incarnation, index=r.index, seq=r.seq, lot=r.lot,
                )  # fmt: skip

    def _settle(self, result, now: float, corked: set) -> None:
        """Forget ``result``'s frame as pending and answer the connections waiting for it (corking each)."""
        key = camera_id, incarnation, seq = result.key
        if self._applied_lots is not None and result.outcome is Outcome.APPLIED:
            self._applied_lots[camera_id] = result.lot
            if seq > self._applied_seqs.get((camera_id, incarnation), 0):
                self._applied_seqs[camera_id, incarnation] = seq
        self._proposed.pop(key, None)
        if self._held:
            self._held.pop(key, None)
        arrived = self._arrived.pop(key, None)
        waiters = self.waiting.pop(key, None)
        if not waiters:
            return
        if arrived is not None and result.outcome is not Outcome.REJECTED:
            self.observer.acked(max(0.0, now - arrived))
        for conn in waiters:
            if conn not in corked:
                conn.cork()
                corked.add(conn)
            conn.waiting_for.discard(key)
            if result.rejection is Rejection.PERMISSION_DENIED:  # disabled after it was proposed
                conn.reject(pb.Error.PERMISSION_DENIED, result.reason)
            elif result.outcome is Outcome.REJECTED:
                conn.send_error(pb.Error.Code.Value(result.rejection.name), result.reason, seq=result.seq)
            else:
                conn.send_ack(result.camera_id, result.seq, result.index or 0, result.free or 0)

    def forget(self, conn) -> None:
        for key in conn.waiting_for:
            waiters = self.waiting.get(key)
            if waiters is not None:
                waiters.discard(conn)
                if not waiters:
                    del self.waiting[key]
                    self._proposed.pop(key, None)
                    self._arrived.pop(key, None)
                    self._held.pop(key, None)
        conn.waiting_for.clear()
        if not self._held:
            self._cancel_expiry()


def _no_leader() -> pb.Envelope:
    return pb.Envelope(unavailable=pb.Unavailable(retry_after_ms=NO_LEADER_RETRY_MS, reason="no leader known"))
