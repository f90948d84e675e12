"""Fuzzing a whole node in-process: the real NodeService on a MemoryReactorClock.

Everything ``twistd parkd node`` runs except the sockets and the threads' work:
the raft and client port factories it listens with, NodeService._deliver (snapshot
chunks and answers to the SnapshotManager, the rest to the driver), the RaftDriver
on SQLite storage (a file on tmpfs), the MembershipManager, the ParkingState and
the FrameIntake.  Hostile peers and cameras send what the other fuzzers send while
honest peers elect the node and acknowledge its appends and an honest camera
sends frames; the clock moves in between.

Properties: nothing raises, nothing is logged at error level, the Ready loop never
stops (no storage failure, no Ready left outstanding), every applied frame is one
the state machine accepts, and at the end the honest camera's new frame is
acknowledged once the honest peers have it (unless a hostile peer used up the
term space the wire allows: the cluster then stalls, by design).
"""

from __future__ import annotations

import math
import os
import random
import shutil
import tempfile

from hypothesis import event, given, note
from hypothesis import strategies as st
from twisted.internet.testing import MemoryReactorClock, StringTransport

from fuzzkit import CLIENT_KINDS, RAFT_KINDS, captured_logs, envelopes, envelopes_in, frame, fuzz, hostile_stream
from parkd.config import load_config
from parkd.launcher import write_config
from doubles import InlineThread
from parkd.node.service import NodeService
from parkd.proto import parkd_pb2 as pb
from parkd.raft import messages as m
from parkd.raft.core import Role
from parkd.tap import NodeSettings
from parkd.wire import MAX_WIRE_INT, PROTOCOL_VERSION, raft_to_envelope
from raftkit import hostile_message

LOTS = {"north": 100, "south": 60}
ME, PEERS, CAMERA = 2, (1, 3), 7
TMP = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None

raft_streams = st.one_of(
    hostile_stream(envelopes(RAFT_KINDS, limit=2048), 64 * 1024), hostile_stream(envelopes(limit=512), 64 * 1024)
)
client_streams = hostile_stream(envelopes(CLIENT_KINDS, lots=tuple(LOTS), limit=4096), 64 * 1024)


class Node:
    """Node 2 of a 3-node config, started on a MemoryReactorClock."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="parkd-fuzz-", dir=TMP)
        path = write_config(os.path.join(self.dir, "parkd.toml"), nodes=3, lots=LOTS, election_timeout_ms=500,
                            heartbeat_ms=50)  # fmt: skip
        config = load_config(path)
        me = config.member(ME)
        listen = {f"listen_{kind}": f"tcp:{getattr(me, kind).port}:interface=127.0.0.1"
                  for kind in ("raft", "client", "http")}  # fmt: skip
        self.reactor = MemoryReactorClock()
        settings = NodeSettings(ME, config, os.path.join(self.dir, "node-2"), **listen)
        # A fixed seed for the core's election timeouts: hypothesis replays a case only if the
        # node draws the same timeouts again (the messages it makes depend on the node's term and log).
        self.service = NodeService(settings, self.reactor, snapshot_thread=InlineThread(), rng=random.Random(0))
        self.service.startService()
        self.raft_port, self.client_port = (server[1] for server in self.reactor.tcpServers)
        self.honest_peers = {}  # one connection per honest peer, opened with its PeerHello (CONTRACT §10)
        for peer in PEERS:
            self.honest_peers[peer] = self.connect(self.raft_port)
            hello = pb.PeerHello(protocol_version=PROTOCOL_VERSION, node_id=peer, data_dir_id=f"{peer:032x}")
            self.honest_peers[peer].dataReceived(frame(pb.Envelope(peer_hello=hello)))
        self.honest_peer = self.honest_peers[1]
        self.camera = self.connect(self.client_port)
        self.camera.dataReceived(frame(pb.Envelope(hello=pb.Hello(camera_id=CAMERA, lot="north"))))
        self.seq = 0
        self.hostile = []

    @property
    def core(self):
        return self.service.driver._core  # the core itself: the fuzzer checks its invariants

    def connect(self, factory):
        proto = factory.buildProtocol(None)
        proto.makeConnection(StringTransport())
        return proto

    def attacker(self, factory, rng):
        """A fresh connection now and then (a closed one always)."""
        mine = [p for p in self.hostile if p.factory is factory and not p.transport.disconnecting]
        if not mine or rng.random() < 0.2:
            mine.append(self.connect(factory))
            self.hostile.append(mine[-1])
        return rng.choice(mine)

    def run(self, seconds: float = 0.0) -> None:
        self.reactor.advance(0)
        for _ in range(int(seconds / 0.05)):
            self.reactor.advance(0.05)

    def honestly(self, message) -> bool:
        if message.term > MAX_WIRE_INT:
            return False
        self.honest_peers[message.src].dataReceived(frame(raft_to_envelope(message)))
        self.run()
        return True

    def elect(self) -> bool:
        core = self.core
        for _ in range(60):
            if core.role is not Role.FOLLOWER:
                break
            self.run(0.05)
        if core.role is Role.PRE_CANDIDATE:
            for peer in PEERS:
                self.honestly(m.VoteResponse(core.term + 1, peer, ME, True, True))
        if core.role is Role.CANDIDATE:
            for peer in PEERS:
                self.honestly(m.VoteResponse(core.term, peer, ME, True))
        return core.role is Role.LEADER

    def acknowledge(self) -> None:
        """The honest peers hold everything the leader has."""
        if self.core.role is Role.LEADER:
            for peer in PEERS:
                self.honestly(m.AppendResponse(self.core.term, peer, ME, True, self.core.last_index))

    def send_frame(self) -> int:
        self.seq += 1
        submit = pb.SubmitFrame(camera_id=CAMERA, lot="north", seq=self.seq, captured_at=1.7e9 + self.seq,
                                payload=b"%d" % self.seq)  # fmt: skip
        self.camera.dataReceived(frame(pb.Envelope(submit_frame=submit)))
        self.run()
        return self.seq

    def stop(self) -> None:
        done = []
        self.service.stopService().addBoth(done.append)
        for _ in range(200):
            if done:
                break
            self.reactor.advance(0.1)
        shutil.rmtree(self.dir, ignore_errors=True)
        assert done == [None], done


ACTIONS = ["raft"] * 5 + ["raft-raw", "client", "client", "tick", "tick", "elect", "ack", "frame"]


@fuzz(60)
@given(st.randoms(use_true_random=False), st.integers(5, 40), st.data())
def test_a_whole_node_survives_hostile_peers_and_cameras_and_serves_the_honest_ones(rng, steps, data):
    node = Node()
    try:
        with captured_logs() as logs:
            for _ in range(steps):
                action = rng.choice(ACTIONS)
                if action == "raft":
                    message = hostile_message(rng, node)
                    note(f"hostile: {message}")
                    node.attacker(node.raft_port, rng).dataReceived(frame(raft_to_envelope(message)))
                elif action == "raft-raw":
                    node.attacker(node.raft_port, rng).dataReceived(data.draw(raft_streams))
                elif action == "client":
                    node.attacker(node.client_port, rng).dataReceived(data.draw(client_streams))
                elif action == "tick":
                    node.run(rng.choice([0.05, 0.3, 1.0]))
                elif action == "elect":
                    node.elect()
                elif action == "ack":
                    node.acknowledge()
                else:
                    node.send_frame()
                node.run()
                assert not node.service.driver._failed and node.core._outstanding is None
            # The honest camera is still served once the node leads and its peers have the entries.
            node.camera.transport.clear()
            if node.elect():
                node.acknowledge()  # the new leader's no-op
                seq = node.send_frame()
                node.acknowledge()
                acks = [e.frame_ack for e in envelopes_in(node.camera.transport.value()) if e.HasField("frame_ack")]
                assert [a.seq for a in acks if a.seq == seq] == [seq], envelopes_in(node.camera.transport.value())
                event("honest camera acked")
            else:
                event("term space used up by a hostile peer" if node.core.term >= MAX_WIRE_INT else "not elected")
            assert not node.camera.rejected and not any(p.rejected for p in node.honest_peers.values())
            assert logs.errors() == []
        for camera in node.service.store.state.cameras():
            assert camera.lot in LOTS and 0 <= camera.free <= LOTS[camera.lot] and math.isfinite(camera.last_seen)
    finally:
        node.stop()


def test_the_harness_runs_a_node_that_acks_frames():
    node = Node()
    try:
        assert node.elect()
        node.acknowledge()
        seq = node.send_frame()
        node.acknowledge()
        [ack] = envelopes_in(node.camera.transport.value())
        assert ack.frame_ack.seq == seq and ack.frame_ack.index == 2
    finally:
        node.stop()


