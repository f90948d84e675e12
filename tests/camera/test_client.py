"""The camera client with an injected clock and in-memory connections."""

import random

from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.logger import Logger
from twisted.python.failure import Failure

from doubles import Network
from parkd.camera.client import CameraClient
from parkd.camera.outbox import Outbox
from parkd.config import Address
from parkd.events import FrameEvents, list_sink
from parkd.proto import parkd_pb2 as pb
from parkd.wire import frame_envelope, split_envelopes

NODES = (Address("127.0.0.1", 1), Address("127.0.0.1", 2), Address("127.0.0.1", 3))


def sent(proto):
    return split_envelopes(proto.transport.value())


def reply(proto, **body):
    proto.dataReceived(frame_envelope(pb.Envelope(**body)))


def make(tmp_path, frames=3):
    clock, net, events = Clock(), Network(), []
    box = Outbox(str(tmp_path / "o.db"), limit=100)
    for i in range(frames):
        box.add(b"payload%d" % i, float(i))
    frame_events = FrameEvents()
    frame_events.sink = list_sink(events)
    client = CameraClient(7, "north", box, NODES, clock, ack_timeout=2.0, max_message_bytes=1 << 20,
                          window=2, rng=random.Random(1), connect=net.connect, events=frame_events)  # fmt: skip
    client.log = Logger(observer=events.append)
    return client, clock, net, box, events


def test_hello_then_frames_in_order_within_the_window(tmp_path):
    client, clock, net, box, _ = make(tmp_path)
    client.start()
    envelopes = sent(net.proto)
    assert envelopes[0].hello == pb.Hello(camera_id=7, lot="north", incarnation=box.incarnation)
    assert box.incarnation != 0  # a new state dir: a new incarnation (CONTRACT §9)
    assert [e.submit_frame.seq for e in envelopes[1:]] == [1, 2]  # window of 2
    assert envelopes[1].submit_frame.payload == b"payload0"


def test_over_tls_hello_and_frames_wait_for_the_handshake_and_so_does_the_ack_timeout(tmp_path):
    client, clock, net, box, _ = make(tmp_path)
    client.trust = object()  # TLS (the connection here is a double: the handshake is announced by hand)
    client.start()
    assert sent(net.proto) == []
    clock.advance(8.0)  # a slow handshake, past ack_timeout: nothing was sent, so nothing timed out
    assert not net.proto.transport.disconnected and len(net.attempts) == 1
    net.proto.handshakeCompleted()
    envelopes = sent(net.proto)
    assert envelopes[0].hello == pb.Hello(camera_id=7, lot="north", incarnation=box.incarnation)
    assert [e.submit_frame.seq for e in envelopes[1:]] == [1, 2]
    clock.advance(2.6)  # from now on the ack timeout counts
    assert net.proto.transport.disconnected


def test_ack_removes_from_outbox_logs_and_sends_more(tmp_path):
    client, clock, net, box, events = make(tmp_path)
    client.start()
    reply(net.proto, frame_ack=pb.FrameAck(camera_id=7, seq=1, index=10, free=42))
    assert [f.seq for f in box.pending()] == [2, 3]
    assert [e.submit_frame.seq for e in sent(net.proto)[1:]] == [1, 2, 3]
    [acked] = [e for e in events if e.get("parkd_event") == "frame_acked"]
    assert (acked["camera_id"], acked["seq"], acked["index"], acked["free"]) == (7, 1, 10, 42)


def test_no_ack_in_time_fails_over_and_resends_unacked_in_order(tmp_path):
    client, clock, net, box, _ = make(tmp_path)
    client.start()
    first = net.proto
    clock.advance(2.6)  # past ack_timeout
    assert first.transport.disconnected
    first.connectionLost(Failure(ConnectionRefusedError()))
    clock.advance(10)  # any backoff
    assert len(net.attempts) == 2 and net.attempts[1][0] != net.attempts[0][0]
    assert [e.submit_frame.seq for e in sent(net.proto)[1:]] == [1, 2]


def test_the_ack_timeout_runs_a_timer_only_while_frames_are_in_flight(tmp_path):
    client, clock, net, box, _ = make(tmp_path, frames=1)
    client.start()
    assert len(clock.getDelayedCalls()) == 1  # frame 1 is in flight: its watch
    reply(net.proto, frame_ack=pb.FrameAck(camera_id=7, seq=1, index=10, free=42))
    clock.advance(0.5)  # the next check finds nothing in flight and arms no other
    assert clock.getDelayedCalls() == []
    clock.advance(60)  # idle: nothing runs, nothing times out
    assert not net.proto.transport.disconnected
    box.add(b"later", 61.0)
    client.frame_added()
    assert len(clock.getDelayedCalls()) == 1
    for _ in range(4):  # a check every 0.5 s, each arming the next while the frame waits
        clock.advance(0.5)
        assert not net.proto.transport.disconnected
    clock.advance(0.6)  # past ack_timeout (2 s) for the new frame
    assert net.proto.transport.disconnected
    client.stop()
    assert clock.getDelayedCalls() == []


def test_refused_connections_rotate_and_never_give_up(tmp_path):
    client, clock, net, box, _ = make(tmp_path)
    net.refuse = set(NODES)
    client.start()
    for _ in range(30):
        clock.advance(5.0)
    assert len(net.attempts) >= 30
    assert {a for a, _ in net.attempts} == set(NODES)
    net.refuse = set()
    clock.advance(5.0)
    assert client.proto is not None


def test_a_camera_leaving_a_node_tries_another_at_random_so_a_dead_nodes_cameras_spread(tmp_path):
    chosen = set()
    for seed in range(40):
        client, clock, net, box, _ = make(tmp_path / str(seed))
        client.rng.seed(seed)
        client.next_node = 0
        client.start()  # connects to NODES[0]
        net.proto.connectionLost(Failure(ConnectionRefusedError()))  # the node died
        clock.advance(10)
        first, second = net.attempts[0][0], net.attempts[1][0]
        assert first == NODES[0] and second != first
        chosen.add(second)
        box.close()
    assert chosen == {NODES[1], NODES[2]}


def test_backoff_grows_with_jitter_and_resets_after_an_ack(tmp_path):
    client, *_ = make(tmp_path)
    delays = [client.backoff.next() for _ in range(8)]
    assert delays[0] < 0.06 and delays[-1] > 1.0 and max(delays) <= 5.0
    client.backoff.reset()
    assert client.backoff.next() < 0.06


def test_redirect_goes_to_the_named_node(tmp_path):
    client, clock, net, box, _ = make(tmp_path)
    client.start()
    reply(net.proto, redirect=pb.Redirect(leader_id=3, address="127.0.0.1:3"))
    net.proto.connectionLost(Failure(ConnectionRefusedError()))
    clock.advance(10)
    assert net.attempts[-1][0] == Address("127.0.0.1", 3)


def test_unavailable_waits_at_least_the_hint(tmp_path):
    client, clock, net, box, _ = make(tmp_path)
    client.start()
    reply(net.proto, unavailable=pb.Unavailable(retry_after_ms=3000, reason="no leader"))
    net.proto.connectionLost(Failure(ConnectionRefusedError()))
    clock.advance(2.9)
    assert len(net.attempts) == 1
    clock.advance(0.2)
    assert len(net.attempts) == 2


def test_refused_frame_is_dropped_and_others_continue(tmp_path):
    client, clock, net, box, _ = make(tmp_path)
    client.start()
    reply(net.proto, error=pb.Error(code=pb.Error.PAYLOAD_TOO_LARGE, message="too big", seq=1))
    assert [f.seq for f in box.pending()] == [2, 3]
    assert [e.submit_frame.seq for e in sent(net.proto)[1:]] == [1, 2, 3]
    assert box.counter("dropped") == 1


def unavailable_burst(count):
    """What a node without a leader sends for ``count`` frames in flight: one read, one Unavailable each."""
    one = frame_envelope(pb.Envelope(unavailable=pb.Unavailable(retry_after_ms=300, reason="no leader known")))
    return one * count


def leaving_logged(events):
    return [e for e in events if "leaving node" in (e.get("log_format") or "")]


def test_a_burst_of_unavailable_is_one_failed_attempt(tmp_path):
    # A rolling restart on a loaded machine left every camera silent for 5 s: each
    # Unavailable of the burst took a backoff step, so the next refused connection
    # waited at the 5 s cap.
    client, clock, net, box, events = make(tmp_path)
    client.start()
    net.proto.dataReceived(unavailable_burst(30))
    assert len(leaving_logged(events)) == 1
    assert client.backoff.attempt == 1
    net.proto.connectionLost(Failure(ConnectionRefusedError()))
    net.refuse = set(NODES)
    clock.advance(0.3)  # the node's hint
    assert len(net.attempts) == 2
    net.refuse = set()
    clock.advance(0.1)  # the second backoff step is at most 0.1 s
    assert len(net.attempts) == 3 and client.proto is net.proto
    assert [e.submit_frame.seq for e in sent(net.proto)[1:]] == [1, 2]


def test_after_a_redirect_what_else_the_node_sent_is_not_acted_on(tmp_path):
    client, clock, net, box, events = make(tmp_path)
    client.start()
    first = net.proto
    first.dataReceived(
        frame_envelope(pb.Envelope(redirect=pb.Redirect(leader_id=3, address="127.0.0.1:3")))
        + unavailable_burst(2)
        + frame_envelope(pb.Envelope(frame_ack=pb.FrameAck(camera_id=7, seq=1, index=5, free=9)))
    )
    assert [f.seq for f in box.pending()] == [2, 3]  # the ack still counts
    assert [e.submit_frame.seq for e in sent(first)[1:]] == [1, 2]  # nothing more sent on the old connection
    assert len(leaving_logged(events)) == 1 and client.backoff.attempt == 0
    first.connectionLost(Failure(ConnectionRefusedError()))
    clock.advance(0)  # straight to the named node, without the Unavailable's 0.3 s
    assert net.attempts[-1][0] == Address("127.0.0.1", 3)
    assert [e.submit_frame.seq for e in sent(net.proto)[1:]] == [2, 3]


# -- a disabled camera (CONTRACT §9 "Camera registry") ---------------------------------------------


def denied(seq=0):
    return pb.Error(code=pb.Error.PERMISSION_DENIED, message="camera 7 is disabled by an operator", seq=seq)


def test_a_refused_frame_of_a_disabled_camera_stays_and_the_camera_retries_with_backoff(tmp_path):
    client, clock, net, box, events = make(tmp_path)
    client.start()
    first = net.proto
    reply(first, error=denied(seq=1))  # committed after the disable entry: rejected at apply
    assert [f.seq for f in box.pending()] == [1, 2, 3] and box.counter("dropped") == 0
    assert first.transport.disconnected and client.paused
    first.connectionLost(Failure(ConnectionRefusedError()))
    delays = []
    for _ in range(6):  # each Hello refused while it stays disabled
        before, attempts = clock.seconds(), len(net.attempts)
        while len(net.attempts) == attempts:
            clock.advance(0.01)
        delays.append(clock.seconds() - before)
        assert sent(net.proto)[0].hello.camera_id == 7
        reply(net.proto, error=denied())
        net.proto.connectionLost(Failure(ConnectionRefusedError()))
    assert delays[-1] > 4 * delays[0]  # backing off, not hammering the cluster
    assert [f.seq for f in box.pending()] == [1, 2, 3]
    warnings = [e for e in events if "refused by the cluster" in (e.get("log_format") or "")]
    assert len(warnings) == 1  # one line for the pause, not one per attempt


def test_once_enabled_the_outbox_drains_in_order_exactly_once(tmp_path):
    client, clock, net, box, events = make(tmp_path)
    client.start()
    reply(net.proto, error=denied(seq=1))
    net.proto.connectionLost(Failure(ConnectionRefusedError()))
    clock.advance(10)  # enabled meanwhile: this node takes the Hello
    node = net.proto
    assert [e.submit_frame.seq for e in sent(node)[1:]] == [1, 2]  # from the first kept frame, in order
    for seq in (1, 2, 3):
        reply(node, frame_ack=pb.FrameAck(camera_id=7, seq=seq, index=10 + seq, free=seq))
    assert [e.submit_frame.seq for e in sent(node)[1:]] == [1, 2, 3]
    assert box.pending() == [] and not client.paused
    acked = [e["seq"] for e in events if e.get("parkd_event") == "frame_acked"]
    assert acked == [1, 2, 3]
    assert {e["incarnation"] for e in events if e.get("parkd_event") == "frame_acked"} == {box.incarnation}


def test_the_frames_that_the_acks_of_one_read_let_out_go_in_one_write(tmp_path):
    client, clock, net, box, _ = make(tmp_path, frames=5)
    client.start()
    writes = []
    write = net.proto.transport.write
    net.proto.transport.write = lambda data: (writes.append(data), write(data))
    acks = [frame_envelope(pb.Envelope(frame_ack=pb.FrameAck(camera_id=7, seq=seq, index=seq, free=1))) for seq in (1, 2)]
    net.proto.dataReceived(b"".join(acks))  # one read holding two acks: frames 3 and 4 may go
    assert [[e.submit_frame.seq for e in split_envelopes(data)] for data in writes] == [[3, 4]]
    net.proto.dataReceived(acks[0][:3])  # a read without a whole message writes nothing
    assert len(writes) == 1
