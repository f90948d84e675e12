"""The client port: Hello, frames, acks after local apply, refusals (CONTRACT §5)."""


from twisted.internet.task import Clock
from twisted.logger import Logger
from twisted.internet.testing import StringTransport

from parkd.db import open_engine
from parkd.node.frames import MAX_HOLD_S, NO_LEADER_RETRY_MS, FrameIntake
from parkd.node.ports import ClientPortFactory
from parkd.parking.analyzer import HashAnalyzer
from parkd.parking.codec import decode
from parkd.parking.state import ParkingState
from parkd.proto import parkd_pb2 as pb
from parkd.wire import frame_envelope, split_envelopes
from doubles import Proposals

LOTS = {"north": 100, "south": 60}


def setup():
    state = ParkingState(open_engine("sqlite://"), LOTS)
    cluster = Proposals()
    intake = FrameIntake(cluster, state, HashAnalyzer(), LOTS, Clock())
    factory = ClientPortFactory(Clock(), 4 << 20, intake)
    return state, cluster, intake, factory


def connect(factory):
    proto = factory.buildProtocol(None)
    proto.makeConnection(StringTransport())
    return proto


def send(proto, **body):
    proto.dataReceived(frame_envelope(pb.Envelope(**body)))


def received(proto):
    out = split_envelopes(proto.transport.value())
    proto.transport.clear()
    return out


def frame(seq, lot="north", camera_id=7, payload=b"picture"):
    return pb.SubmitFrame(camera_id=camera_id, lot=lot, seq=seq, captured_at=100.0 + seq, payload=payload)


def test_frame_is_analysed_here_proposed_and_acked_after_apply():
    state, cluster, intake, factory = setup()
    proto = connect(factory)
    send(proto, hello=pb.Hello(camera_id=7, lot="north"))
    assert not intake.awaits_applies()
    send(proto, submit_frame=frame(1))
    assert received(proto) == []  # no ack before commit and apply
    assert intake.awaits_applies()  # a follower applies at once for it (parkd/node/driver.py)
    [data] = cluster.pending
    result = decode(data)
    assert result.free == HashAnalyzer().free_spaces(b"picture", 100)  # only the result travels
    cluster.commit(state)
    [ack] = received(proto)
    assert ack.frame_ack == pb.FrameAck(camera_id=7, seq=1, index=1, free=result.free)
    assert not intake.awaits_applies()


def test_retry_of_an_applied_frame_gets_the_original_result_at_once():
    state, cluster, intake, factory = setup()
    proto = connect(factory)
    send(proto, hello=pb.Hello(camera_id=7, lot="north"))
    send(proto, submit_frame=frame(1))
    cluster.commit(state)
    [first] = received(proto)
    send(proto, submit_frame=frame(1, payload=b"different"))
    [again] = received(proto)
    assert again.frame_ack == first.frame_ack and cluster.pending == []


def test_duplicate_in_the_log_acks_both_waiters_with_one_result():
    state, cluster, intake, factory = setup()
    a, b = connect(factory), connect(factory)
    for proto in (a, b):
        send(proto, hello=pb.Hello(camera_id=7, lot="north"))
        send(proto, submit_frame=frame(1))
    cluster.commit(state)
    [ack_a], [ack_b] = received(a), received(b)
    assert ack_a.frame_ack == ack_b.frame_ack
    assert len(state.frames(7)) == 1


def counting_writes(proto) -> list[bytes]:
    """Each write the connection makes to its transport (one ``send``, one TLS record on a real one)."""
    writes, write = [], proto.transport.write
    proto.transport.write = lambda data: (writes.append(data), write(data))
    return writes


def test_the_acks_of_one_applied_batch_leave_in_one_write_per_connection():
    state, cluster, intake, factory = setup()
    a, b = connect(factory), connect(factory)
    send(a, hello=pb.Hello(camera_id=7, lot="north"))
    send(b, hello=pb.Hello(camera_id=8, lot="north"))
    for seq in (1, 2, 3):
        send(a, submit_frame=frame(seq))
    send(b, submit_frame=frame(1, camera_id=8))
    writes_a, writes_b = counting_writes(a), counting_writes(b)
    cluster.commit(state)  # all four frames in one batch
    assert len(writes_a) == 1 and len(writes_b) == 1
    assert [e.frame_ack.seq for e in received(a)] == [1, 2, 3] and [e.frame_ack.seq for e in received(b)] == [1]
    send(a, submit_frame=frame(4))
    cluster.commit(state)
    assert len(writes_a) == 2 and [e.frame_ack.seq for e in received(a)] == [4]  # no longer held


def held_setup(**limits):
    """A node that knows no leader, on a clock the test moves."""
    clock = Clock()
    state = ParkingState(open_engine("sqlite://"), LOTS)
    cluster = Proposals()
    cluster.leader = False
    intake = FrameIntake(cluster, state, HashAnalyzer(), LOTS, clock, **limits)
    return clock, state, cluster, intake, ClientPortFactory(clock, 4 << 20, intake)


def camera(factory, camera_id=7):
    proto = connect(factory)
    send(proto, hello=pb.Hello(camera_id=camera_id, lot="north"))
    return proto


def test_no_leader_holds_the_frame_and_proposes_it_once_a_leader_is_known():
    clock, state, cluster, intake, factory = held_setup()
    proto = camera(factory)
    send(proto, submit_frame=frame(1))
    clock.advance(MAX_HOLD_S / 2)
    assert received(proto) == [] and cluster.pending == []  # held, not refused
    cluster.leader = True
    cluster.new_leader(2)
    [data] = cluster.pending
    assert decode(data).seq == 1
    cluster.commit(state)
    [ack] = received(proto)
    assert ack.frame_ack.seq == 1 and ack.frame_ack.index == 1
    clock.advance(MAX_HOLD_S)  # the hold's timer is gone: nothing more for the camera
    assert received(proto) == [] and clock.getDelayedCalls() == []


def test_a_frame_held_max_hold_without_a_leader_gets_unavailable():
    clock, state, cluster, intake, factory = held_setup()
    proto = camera(factory)
    send(proto, submit_frame=frame(1))
    clock.advance(MAX_HOLD_S - 0.01)
    assert received(proto) == []
    clock.advance(0.01)
    [answer] = received(proto)
    assert answer.unavailable.retry_after_ms == NO_LEADER_RETRY_MS and answer.unavailable.reason == "no leader known"
    assert intake.waiting == {} and proto.waiting_for == set()
    cluster.leader = True
    cluster.new_leader(2)
    assert cluster.pending == []  # refused: the camera sends it again from its outbox


def test_each_held_frame_waits_its_own_max_hold():
    clock, state, cluster, intake, factory = held_setup(max_hold_s=1.0)
    a, b = camera(factory, 7), camera(factory, 8)
    send(a, submit_frame=frame(1, camera_id=7))
    clock.advance(0.6)
    send(b, submit_frame=frame(1, camera_id=8))
    clock.advance(0.4)
    assert [e.WhichOneof("body") for e in received(a)] == ["unavailable"] and received(b) == []
    clock.advance(0.6)
    assert [e.WhichOneof("body") for e in received(b)] == ["unavailable"]
    assert clock.getDelayedCalls() == []


def test_no_more_than_max_held_frames_are_held():
    clock, state, cluster, intake, factory = held_setup(max_held=2)
    proto = camera(factory)
    for seq in (1, 2, 3):
        send(proto, submit_frame=frame(seq))
    [answer] = received(proto)  # the third one at once
    assert answer.unavailable.retry_after_ms == NO_LEADER_RETRY_MS
    assert proto.waiting_for == {(7, 0, 1), (7, 0, 2)}
    cluster.leader = True
    cluster.new_leader(2)
    assert [decode(d).seq for d in cluster.pending] == [1, 2]


def test_a_held_frame_of_a_camera_that_left_is_dropped_with_its_timer():
    clock, state, cluster, intake, factory = held_setup()
    proto = camera(factory)
    send(proto, submit_frame=frame(1))
    proto.connectionLost(None)
    assert intake.waiting == {} and clock.getDelayedCalls() == []
    cluster.leader = True
    cluster.new_leader(2)
    assert cluster.pending == []


def test_refusals_are_clear_errors_and_store_nothing():
    state, cluster, intake, factory = setup()
    proto = connect(factory)
    send(proto, submit_frame=frame(1))  # before Hello
    send(proto, hello=pb.Hello(camera_id=7, lot="north"))
    send(proto, submit_frame=frame(2, lot="south"))  # not the lot it said
    send(proto, submit_frame=frame(3, camera_id=8))  # another camera's frame
    send(proto, submit_frame=frame(4, payload=b"x" * (2 << 20)))  # over the payload limit
    codes = [e.error.code for e in received(proto)]
    assert codes == [pb.Error.BAD_REQUEST, pb.Error.LOT_MISMATCH, pb.Error.BAD_REQUEST, pb.Error.PAYLOAD_TOO_LARGE]
    assert cluster.pending == [] and not proto.transport.disconnecting


def test_unknown_lot_in_hello_closes_with_error():
    state, cluster, intake, factory = setup()
    proto = connect(factory)
    send(proto, hello=pb.Hello(camera_id=7, lot="west"))
    [error] = received(proto)
    assert error.error.code == pb.Error.UNKNOWN_LOT and proto.transport.disconnecting


def test_camera_changing_lot_is_refused_by_the_state_machine():
    state, cluster, intake, factory = setup()
    proto = connect(factory)
    send(proto, hello=pb.Hello(camera_id=7, lot="north"))
    send(proto, submit_frame=frame(1))
    cluster.commit(state)
    received(proto)
    moved = connect(factory)
    send(moved, hello=pb.Hello(camera_id=7, lot="south"))
    send(moved, submit_frame=frame(2, lot="south"))
    [error] = received(moved)
    assert error.error.code == pb.Error.LOT_MISMATCH and error.error.seq == 2
    assert [f.seq for f in state.frames(7)] == [1]


def test_disconnected_camera_is_forgotten():
    state, cluster, intake, factory = setup()
    proto = connect(factory)
    send(proto, hello=pb.Hello(camera_id=7, lot="north"))
    send(proto, submit_frame=frame(1))
    assert intake.cameras == 1
    proto.connectionLost(None)
    assert intake.waiting == {} and intake.cameras == 0
    cluster.commit(state)  # applied without anyone to tell


def test_applied_cameras_are_read_in_one_query_and_kept_current():
    """After a restart the node knows every applied camera (a retry is answered at
    once) without a query per camera: 10,000 cameras connecting at once made those
    queries stall the reactor past the election timeout."""
    state, cluster, intake, factory = setup()
    for camera_id in (7, 8):
        proto = connect(factory)
        send(proto, hello=pb.Hello(camera_id=camera_id, lot="north"))
        send(proto, submit_frame=frame(1, camera_id=camera_id))
    cluster.commit(state)
    cluster.unsubscribe_all()  # the old intake is gone with its process
    restarted = FrameIntake(cluster, state, HashAnalyzer(), LOTS, Clock())
    queries = []
    state.camera = lambda camera_id: queries.append(camera_id)
    cameras = state.cameras
    state.cameras = lambda: queries.append("all") or cameras()
    factory = ClientPortFactory(Clock(), 4 << 20, restarted)
    protos = {}
    for camera_id in (7, 8, 9):
        protos[camera_id] = proto = connect(factory)
        send(proto, hello=pb.Hello(camera_id=camera_id, lot="north"))
        send(proto, submit_frame=frame(1, camera_id=camera_id))
    assert [e.frame_ack.seq for e in received(protos[7]) + received(protos[8])] == [1, 1]  # retries, answered
    assert received(protos[9]) == [] and len(cluster.pending) == 1  # a new camera's frame is proposed
    cluster.commit(state)
    send(protos[9], submit_frame=frame(1, camera_id=9, payload=b"again"))
    assert [e.frame_ack.seq for e in received(protos[9])] == [1, 1]  # applied() made camera 9 known
    assert cluster.pending == [] and queries == ["all"]


# -- incarnations (CONTRACT §9) -------------------------------------------------------------------

OLD, NEW = 0, 2**64 - 5


def hello(proto, incarnation, camera_id=7):
    send(proto, hello=pb.Hello(camera_id=camera_id, lot="north", incarnation=incarnation))


def test_a_camera_with_a_new_state_dir_is_applied_from_seq_1_and_moves_its_lot():
    """The issue's bug: its seq 1 was acked with the old seq 1's result and its lot never moved."""
    state, cluster, intake, factory = setup()
    old = connect(factory)
    hello(old, OLD)
    for seq in (1, 2, 3):
        send(old, submit_frame=frame(seq, payload=b"old %d" % seq))
    cluster.commit(state)
    old_acks = [e.frame_ack for e in received(old)]
    old.connectionLost(None)
    new = connect(factory)
    hello(new, NEW)
    lookups = []
    lookup = state.lookup
    state.lookup = lambda *key: lookups.append(key) or lookup(*key)
    send(new, submit_frame=frame(1, payload=b"new picture"))
    assert received(new) == []  # not answered from the old incarnation's seq 1
    assert lookups == []  # nor looked up: nothing of this incarnation was applied
    [data] = cluster.pending
    assert decode(data).incarnation == NEW
    cluster.commit(state)
    [ack] = [e.frame_ack for e in received(new)]
    free = HashAnalyzer().free_spaces(b"new picture", 100)
    assert ack == pb.FrameAck(camera_id=7, seq=1, index=4, free=free) != old_acks[0]
    assert (state.camera(7).incarnation, state.camera(7).free) == (NEW, free)
    assert state.lots()[0].free == free


def test_a_retry_is_answered_from_its_own_incarnation():
    state, cluster, intake, factory = setup()
    a, b = connect(factory), connect(factory)
    hello(a, OLD)
    hello(b, NEW)
    send(a, submit_frame=frame(1, payload=b"a"))
    send(b, submit_frame=frame(1, payload=b"b"))
    cluster.commit(state)
    [ack_a], [ack_b] = [e.frame_ack for e in received(a)], [e.frame_ack for e in received(b)]
    assert (ack_a.index, ack_b.index) == (1, 2)  # two frames: one per incarnation
    send(a, submit_frame=frame(1, payload=b"again"))
    send(b, submit_frame=frame(1, payload=b"again"))
    assert [e.frame_ack for e in received(a)] == [ack_a] and [e.frame_ack for e in received(b)] == [ack_b]
    assert cluster.pending == []


def test_waiting_frames_are_keyed_by_incarnation():
    state, cluster, intake, factory = setup()
    a, b = connect(factory), connect(factory)
    hello(a, OLD)
    hello(b, NEW)
    send(a, submit_frame=frame(1))
    send(b, submit_frame=frame(1))
    assert set(intake.waiting) == {(7, OLD, 1), (7, NEW, 1)}
    assert a.waiting_for == {(7, OLD, 1)} and b.waiting_for == {(7, NEW, 1)}
    cluster.commit(state)
    assert [e.frame_ack.index for e in received(a)] == [1] and [e.frame_ack.index for e in received(b)] == [2]


def test_a_hello_without_an_incarnation_is_incarnation_0():
    """A camera of the previous release: its frames dedup against those already in the cluster."""
    state, cluster, intake, factory = setup()
    proto = connect(factory)
    send(proto, hello=pb.Hello(camera_id=7, lot="north"))
    assert proto.incarnation == 0
    send(proto, submit_frame=frame(1))
    assert decode(cluster.pending[0]).incarnation == 0


def test_the_first_frame_of_an_incarnation_is_an_event():
    state, cluster, intake, factory = setup()
    events = []
    intake.log = Logger(observer=events.append)
    proto = connect(factory)
    hello(proto, NEW)
    send(proto, submit_frame=frame(1))
    send(proto, submit_frame=frame(2))
    cluster.commit(state)
    [started] = [e for e in events if e.get("parkd_event") == "incarnation_started"]
    assert (started["camera_id"], started["incarnation"], started["index"]) == (7, NEW, 1)


def test_after_a_restart_the_intake_knows_every_incarnations_frames():
    state, cluster, intake, factory = setup()
    for incarnation in (OLD, NEW):
        proto = connect(factory)
        hello(proto, incarnation)
        send(proto, submit_frame=frame(1))
    cluster.commit(state)
    cluster.unsubscribe_all()
    restarted = FrameIntake(cluster, state, HashAnalyzer(), LOTS, Clock())
    factory = ClientPortFactory(Clock(), 4 << 20, restarted)
    for incarnation, index in ((OLD, 1), (NEW, 2)):
        proto = connect(factory)
        hello(proto, incarnation)
        send(proto, submit_frame=frame(1, payload=b"retry"))
        assert [e.frame_ack.index for e in received(proto)] == [index]
    assert cluster.pending == []
