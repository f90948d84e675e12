"""The load generator's bookkeeping: what a benchmark window counts, its direct connect, its reconnects."""

import time

import pytest

from cryptography.x509.oid import NameOID
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure

from parkd.camera.loadgen import AFTER_FREEZE, LoadGenerator, percentile
from parkd.camera.standby import StandbySessions
from parkd.config import Address
from parkd.trust import Identity

NODES = (Address("127.0.0.1", 7201), Address("127.0.0.1", 7202))


def make(cameras=2, interval=10.0, ramp=0.0):
    reactor = MemoryReactorClock()
    return reactor, LoadGenerator(reactor, NODES, cameras, window=4, interval=interval, lots=["north"], ramp=ramp)


def test_counts_frames_captured_in_the_window_however_late_their_ack():
    reactor, gen = make()
    a, b = gen.clients
    gen._capture(a, time.time())  # before the window: backlog, not counted
    gen.window_start = time.time()
    gen._capture(a, time.time())
    gen._capture(b, time.time())
    gen._capture(b, time.time())
    gen.window_end = time.time()
    gen._capture(a, time.time() + 1)  # after the window
    assert gen.captured == 3

    for seq in (1, 2):  # the pre-window frame and the first window frame of camera a
        assert a.outbox.ack(seq)
    assert b.outbox.ack(1)
    assert b.outbox.discard(2)  # refused by a node
    assert (gen.acked, gen.refused, len(gen.latencies)) == (2, 1, 2)
    assert gen.unacked_in_window() == 0
    assert gen.errors() == 1


def test_unacked_frames_of_the_window_are_reported():
    reactor, gen = make()
    gen.window_start = time.time() - 1
    gen._capture(gen.clients[0], time.time())
    gen.window_end = time.time() + 1
    assert (gen.captured, gen.acked, gen.unacked_in_window()) == (1, 0, 1)


def test_backlog_age_is_that_of_the_oldest_waiting_frame():
    reactor, gen = make()
    now = time.time()
    assert gen.oldest_unacked_age(now) == 0
    gen.clients[0].outbox.add(b"x", now - 3)
    gen.clients[1].outbox.add(b"x", now - 1)
    assert gen.oldest_unacked_age(now) == 3


def test_cameras_start_spread_over_the_ramp():
    reactor, gen = make(cameras=50, ramp=5.0)
    gen.start()
    assert not reactor.tcpClients
    reactor.advance(2.5)
    assert 0 < len(reactor.tcpClients) < 50
    reactor.advance(2.5)
    assert len(reactor.tcpClients) == 50
    assert gen.connects == 50


def test_direct_connect_to_an_ip_literal_fires_or_fails_like_an_endpoint():
    reactor, gen = make(cameras=1)
    client = gen.clients[0]
    client.start()
    host, port, factory, timeout, _ = reactor.tcpClients[0]
    assert (host, timeout) == ("127.0.0.1", 5) and port in (7201, 7202)
    assert not factory.noisy
    factory.clientConnectionFailed(None, Failure(ConnectionRefusedError()))
    assert client._reconnect_call is not None  # the client's errback ran: it retries later
    client.stop()


def test_percentile():
    assert percentile([3, 1, 2, 4], 50) == 3
    assert percentile([1] * 99 + [100], 99) == 100


def test_over_tls_each_camera_dials_with_its_own_certificate(cluster_pki):
    reactor = MemoryReactorClock()
    gen = LoadGenerator(reactor, NODES, 2, window=4, interval=10.0, lots=["north"], first_camera=41,
                        pki=cluster_pki.dir)  # fmt: skip
    for client in gen.clients:
        client.start()
    dialed = [factory.factory for _, _, factory, _, _ in reactor.tcpClients]  # dialing._OneConnection -> the TLS factory
    names = [f.credentials[0].to_cryptography().subject.get_attributes_for_oid(NameOID.COMMON_NAME) for f in dialed]
    assert [n[0].value for n in names] == ["camera-41", "camera-42"]
    assert all(f.is_client and f.admission.refuses(Identity("camera", 1)) for f in dialed)  # only a node may answer
    assert dialed[0].gate is dialed[1].gate  # one process: their handshakes take turns together
    assert gen.connects == 2


class Connection:
    """A camera's connection as the storm sees it (sending nothing: it is being left)."""

    leaving = True

    def __init__(self, resumed):
        self.transport = type("TLS", (), {"resumed": resumed})()


def test_the_storm_times_each_cameras_frame_captured_at_the_kill_until_its_ack():
    reactor, gen = make(cameras=4)
    old = [Connection(False) for _ in gen.clients]
    for client, proto in zip(gen.clients, old):
        client.proto = proto
    storm = gen.begin_storm(100.0)
    marks = [client.outbox.pending()[-1] for client in gen.clients]
    assert [m.captured_at for m in marks] == [100.0] * 4
    a, b, c, d = gen.clients
    b.proto, c.proto = Connection(True), Connection(False)  # b and c lost their node and came back
    storm.acked(a, marks[0], 100.4)
    storm.acked(b, marks[1], 102.5)
    storm.acked(c, marks[2], 102.9)
    storm.acked(a, marks[0], 109.0)  # a second ack of the same frame changes nothing
    assert not storm.done()
    result = storm.result()
    assert (result["recovered"], result["t50_s"], result["t99_s"], result["t100_s"]) == (3, 2.5, None, None)
    assert (result["moved"], result["resumed"], result["by_second"]) == (2, 1, [1, 0, 2])
    storm.acked(d, marks[3], 103.0)
    assert storm.done() and (storm.result()["t99_s"], storm.result()["t100_s"]) == (3.0, 3.0)


def test_after_a_stall_each_camera_keeps_its_own_phase():
    """Ticks that a stall made run together do not stay together (nor capture twice for a missed one)."""
    reactor, gen = make(cameras=20, interval=10.0)
    gen.start()

    def ticks():
        return sorted((call.args[0].camera_id, call.getTime()) for call in reactor.getDelayedCalls() if call.func == gen._tick)

    phases = dict(ticks())
    assert len(phases) == 20 and len({round(t, 6) for t in phases.values()}) == 20
    reactor.advance(23.0)  # one stall of 23 s: every camera's ticks at its phase, +10 and +20 are late
    assert all(len(client.outbox.frames) == 1 for client in gen.clients)  # one capture each, none to catch up
    for camera_id, due in ticks():
        after = [phases[camera_id] + 10 * k for k in range(1, 4) if phases[camera_id] + 10 * k > 23.0]
        assert due == pytest.approx(after[0])  # its own phase, not 23 + 10 for all


def test_the_window_leaves_out_the_burst_of_captures_that_a_stall_before_it_held_up():
    reactor, gen = make(cameras=20, interval=10.0)
    gen.start()
    opened = []

    def stall():  # a stall of the freeze: 12 s pass and no timer runs meanwhile
        reactor.rightNow += 12.0

    gen.open_window(lambda: opened.append(gen.window_start), freeze=stall)
    reactor.advance(0)  # the ticks the stall held up run together
    assert all(len(client.outbox.frames) == 1 for client in gen.clients)
    assert (gen.captured, opened) == (0, [])  # the burst is before the window
    reactor.advance(AFTER_FREEZE)
    assert opened == [gen.window_start] and gen.window_start is not None
    reactor.advance(10.0)  # each camera's next capture, at its own phase, in the window
    assert gen.captured == 20


def test_standby_dials_are_not_reconnects_and_the_window_waits_for_every_cameras_first_round():
    reactor, gen = make(cameras=2)
    a, b = gen.clients
    assert gen.standby_pending() == 0  # plaintext: no standby sessions
    a.standby = StandbySessions(a)
    assert gen.standby_pending() == 1
    a.standby.dials, a.standby.rounds = 4, 2
    assert gen.standby_pending() == 0
    gen.connects = 7  # each camera once, one failover, and camera a's standby dials
    assert gen.camera_connects() == 3
