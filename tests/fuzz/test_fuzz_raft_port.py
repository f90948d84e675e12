"""Fuzzing the raft port: hostile peers next to honest ones, down to a real RaftCore.

Bytes go through ``RaftPortProtocol`` (framing, port rules, raft_from_envelope)
on a StringTransport to ``raftkit.Node`` (node 2 of 1, 2, 3: a real RaftCore in
the Ready loop of the node, a real ParkingState).  Hostile connections send
random bytes, oversized prefixes, client messages (wrong port), any Envelope
with fields at their extremes, and well-typed raft messages drawn near the
node's state or at extremes (unknown entry kinds, nonsense terms and indexes,
ids outside the cluster).  An honest connection carries an election, a
leader's appends and its acks meanwhile.

Properties: no exception leaves the protocol, nothing at error level is
logged, a bad message closes only its own connection (once), the node's
invariants hold after every input (raftkit), and the honest peer is still
served at the end.
"""

from __future__ import annotations

import random

from hypothesis import event, given, note
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel

from fuzzkit import RAFT_KINDS, captured_logs, envelopes, frame, fuzz, hostile_stream
from parkd.node.ports import RaftPortFactory
from parkd.raft import messages as m
from parkd.raft.core import Role
from parkd.wire import raft_to_envelope
from raftkit import ME, PEERS, Node, frame_data, heartbeat_from, hostile_message

MAX_LENGTH = 64 * 1024
WIRE_LIMIT = 2**62  # the largest term or index the wire accepts (finding F2)

raw_streams = st.one_of(
    hostile_stream(envelopes(RAFT_KINDS, limit=2048), MAX_LENGTH),  # raft messages with any field values
    hostile_stream(envelopes(limit=512), MAX_LENGTH),  # anything, client messages included
)


class Peers:
    def __init__(self, node: Node):
        self.node = node
        self.factory = RaftPortFactory(Clock(), MAX_LENGTH, node.deliver)
        self.honest = self.connect()
        self.hostile = [self.connect() for _ in range(3)]
        self.all_hostile = list(self.hostile)

    def attacker(self, rng: random.Random):
        """One of three hostile connections; one that was closed reconnects."""
        which = rng.randrange(len(self.hostile))
        if self.hostile[which].transport.disconnected:
            self.hostile[which] = self.connect()
            self.all_hostile.append(self.hostile[which])
        return self.hostile[which]

    def connect(self):
        proto = self.factory.buildProtocol(None)
        proto.makeConnection(StringTransport())
        return proto

    def send(self, proto, message) -> None:
        """One message on ``proto``, cut into a few pieces."""
        self.feed(proto, frame(raft_to_envelope(message)))

    def feed(self, proto, data: bytes, rng: random.Random | None = None) -> None:
        if proto.transport.disconnected:
            return  # an aborted connection reads nothing more
        step = rng.randint(1, 64) if rng else len(data) or 1
        for start in range(0, len(data), step):
            proto.dataReceived(data[start : start + step])

    def honestly(self, message) -> bool:
        """Send ``message`` on the honest connection unless the wire cannot carry it any more
        (a hostile peer pushed the term to the wire's limit: the cluster then stalls, by design)."""
        if max(message.term, getattr(message, "prev_log_index", 0)) > WIRE_LIMIT:
            event("term space exhausted by a hostile peer")
            return False
        self.send(self.honest, message)
        return True


def elect(peers: Peers) -> None:
    node, core = peers.node, peers.node.core
    for _ in range(40):
        if core.role is not Role.FOLLOWER:
            break
        node.tick()
    if core.role is Role.PRE_CANDIDATE:
        for peer in PEERS:
            peers.honestly(m.VoteResponse(core.term + 1, peer, ME, True, True))
    if core.role is Role.CANDIDATE:
        for peer in PEERS:
            peers.honestly(m.VoteResponse(core.term, peer, ME, True))


@fuzz(300)
@given(st.randoms(use_true_random=False), st.integers(1, 25), st.data())
def test_hostile_peers_cannot_crash_the_raft_port_or_the_core_nor_silence_an_honest_peer(rng, steps, data):
    node = Node(rng.getrandbits(16))
    peers = Peers(node)
    with captured_logs() as logs:
        for _ in range(steps):
            action = rng.choice(["message"] * 5 + ["raw", "raw", "tick", "elect", "follow", "ack", "propose"])
            core = node.core
            proto = peers.attacker(rng)
            if action == "message":
                message = hostile_message(rng, node)
                envelope = raft_to_envelope(message)
                entries = envelope.append_entries.entries if envelope.HasField("append_entries") else ()
                if entries and rng.random() < 0.1:
                    entries[-1].kind = rng.choice([3, 7, 2**32 - 1])  # unknown kinds
                note(f"hostile: {message}")
                peers.feed(proto, frame(envelope), rng)
            elif action == "raw":
                peers.feed(proto, data.draw(raw_streams), rng)
            elif action == "tick":
                node.tick(rng.randint(1, 12))
            elif action == "elect":
                elect(peers)
            elif action == "follow" and core.role is not Role.LEADER:
                peers.honestly(heartbeat_from(node, leader=rng.choice(PEERS), entries=rng.randrange(3)))
            elif action == "ack" and core.role is Role.LEADER:
                peers.honestly(m.AppendResponse(core.term, rng.choice(PEERS), ME, True, core.last_index))
            elif action == "propose":
                node.propose(frame_data(rng.randint(1, 99)))
        # The honest peer is still heard: a heartbeat from its leader is answered.
        before = len(node.sent)
        if node.core.role is Role.LEADER:
            node.tick(30)  # loses its quorum (only hostile peers spoke): steps down
        if peers.honestly(heartbeat_from(node, leader=1)):
            assert any(isinstance(x, m.AppendResponse) and x.dst == 1 for x in node.sent[before:])
        assert not peers.honest.rejected and not peers.honest.transport.disconnecting

        assert logs.errors() == []
        summary = "closed {count} more raft port connections for bad input in the last {window} s"
        assert logs.formats(LogLevel.warn) <= {"closing {port} connection from {peer}: {reason}", summary}
        rejected = [p for p in peers.all_hostile if p.rejected]
        assert len(logs.closing()) == min(len(rejected), 10)  # one line each, at most 10 per 10 s
        for proto in rejected:
            assert proto.transport.disconnected  # the raft port aborts at once ...
            assert proto.transport.value() == b""  # ... without an Error message
    event(f"rejected connections: {min(len(rejected), 5)}")
    event(f"messages delivered: {min(10, node.delivered) // 5 * 5}+")
    event(f"final role: {node.core.role.value}")
