"""Frames from cameras: analyse here, propose the result, ack after local apply.

The node that receives a frame computes its free spaces (spreading analysis
over the cluster) and proposes only the result; a follower's core forwards it
to the leader.  The camera is acknowledged once the entry is committed *and*
applied on this node (CONTRACT §5).  Retries are safe: the state machine
applies each ``(camera_id, seq)`` once and answers duplicates with the original
result.
"""

from __future__ import annotations

from collections import defaultdict

from twisted.logger import Logger

from parkd.parking import codec
from parkd.parking.state import FrameRejected, Outcome
from parkd.proto import parkd_pb2 as pb
from parkd.raft.core import NotLeader

NO_LEADER_RETRY_MS = 300


class FrameIntake:
    """Node-wide: validation, proposing, and who is waiting for which ack."""

    log = Logger()

    def __init__(self, propose, state, analyzer, lots: dict[str, int]):
        self.propose = propose
        self.state = state
        self.analyzer = analyzer
        self.lots = lots
        self.waiting: dict[tuple[int, int], set] = defaultdict(set)
        self.cameras = 0  # connected cameras (for metrics)
        # camera_id -> (lot, highest applied seq) on this node, read from the
        # database in one query at the first frame (a query per camera cost
        # ~0.3 ms each: 10,000 cameras connecting at once stalled the reactor
        # past the election timeout) and then kept current by applied(): the
        # hot path needs no query unless a frame may be a retry of an applied one.
        self._applied_cameras: dict[int, tuple[str | None, int]] | None = None
        # What was proposed for each waiting frame: re-proposed when the leader
        # changes, since a proposal in flight to a leader that stepped down (or
        # refused it while handing over) is lost; duplicates apply once anyway.
        self._proposed: dict[tuple[int, int], bytes] = {}

    def _camera(self, camera_id: int) -> tuple[str | None, int]:
        if self._applied_cameras is None:
            self._applied_cameras = {view.camera_id: (view.lot, view.last_seq) for view in self.state.cameras()}
        return self._applied_cameras.get(camera_id, (None, 0))

    def forget_applied_state(self) -> None:
        """The state was replaced wholesale (a snapshot was installed)."""
        self._applied_cameras = None

    def check_hello(self, hello) -> tuple[int, str] | None:
        """An Error (code, message) for a bad Hello, or None."""
        if hello.lot not in self.lots:
            return pb.Error.UNKNOWN_LOT, f"unknown lot {hello.lot!r}"
        return None

    def submit(self, conn, frame) -> None:
        """Handle one SubmitFrame from ``conn`` (a ClientPortProtocol)."""
        problem = self._check_connection(conn, frame)
        if problem is not None:
            conn.send_error(*problem, seq=frame.seq)
            return
        known_lot, last_seq = self._camera(frame.camera_id)
        try:
            capacity = self.state.check(
                frame.camera_id, frame.lot, frame.seq, frame.captured_at, frame.payload, known_lot
            )
        except FrameRejected as e:
            conn.send_error(pb.Error.Code.Value(e.code.name), str(e), seq=frame.seq)
            return
        earlier = self.state.lookup(frame.camera_id, frame.seq) if frame.seq <= last_seq else None
        if earlier is not None:  # applied before: answer with the original result
            conn.send_ack(frame.camera_id, frame.seq, earlier.index or 0, earlier.free or 0)
            return
        free = self.analyzer.free_spaces(frame.payload, capacity)
        data = codec.encode(codec.FrameResult(frame.camera_id, frame.lot, frame.seq, frame.captured_at, free))
        try:
            self.propose(data)
        except NotLeader:
            conn.send_envelope(
                pb.Envelope(unavailable=pb.Unavailable(retry_after_ms=NO_LEADER_RETRY_MS, reason="no leader known"))
            )
            return
        key = (frame.camera_id, frame.seq)
        self.waiting[key].add(conn)
        self._proposed[key] = data
        conn.waiting_for.add(key)

    def leader_changed(self, soft_state) -> None:
        """A new leader is known: propose the waiting frames again (see ``_proposed``)."""
        if soft_state.leader_id is None:
            return
        for data in list(self._proposed.values()):
            try:
                self.propose(data)
            except NotLeader:
                return

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

    def applied(self, results) -> None:
        """Tell waiting cameras about frames this node just applied."""
        cameras = self._applied_cameras
        for result in results:
            if cameras is not None and result.outcome is Outcome.APPLIED:
                known = cameras.get(result.camera_id, (None, 0))
                cameras[result.camera_id] = (result.lot, max(known[1], result.seq))
            self._proposed.pop((result.camera_id, result.seq), None)
            waiters = self.waiting.pop((result.camera_id, result.seq), ())
            for conn in waiters:
                conn.waiting_for.discard((result.camera_id, result.seq))
                if result.outcome is Outcome.REJECTED:
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
        conn.waiting_for.clear()
