"""Fuzzing the Raft core directly: well-typed but adversarial messages.

Node 2 of (1, 2, 3) (``raftkit.Node``: a real RaftCore, its Ready loop and a real
ParkingState) takes honest inputs (ticks, an election won with its peers'
votes, a leader's appends, acks, proposals, reads) mixed with hostile messages
whose every field is drawn near the node's own state or at an extreme, from
any sender to any addressee.  After every input the loop checks what the node
relies on (see raftkit): no exception, storable and sendable output, committed
entries applied once and in order and never rewritten, term and commit never
going back, one vote per term.

Messages the raft port refuses (``parkd.wire.check_raft_message``: node id 0,
integers beyond 2**62, appends that are no piece of a leader's log) reach the
core here all the same: the core must drop them itself and keep every invariant
(the statistics show how many of each kind it took).  Those the core must drop
unread (sent by node 0, a term beyond MAX_TERM, addressed to another node) must
change nothing of it and leave it with nothing to do.  Those it once took are
pinned by test_findings.py (core section) and tests/raft (§5.1, §5.2).
"""

from __future__ import annotations

from hypothesis import event, given, note
from hypothesis import strategies as st

from fuzzkit import fuzz
from parkd.raft import messages as m
from parkd.raft.core import MAX_TERM, Role
from parkd.raft.log import LogConflictBelowCommit
from parkd.wire import BadMessage, check_raft_message
from raftkit import PEERS, ME, Node, elect, frame_data, heartbeat_from, honest, hostile_message

def wire_refuses(message) -> str | None:
    """Why the raft port refuses ``message`` (findings F2-F4), or None if it would pass it."""
    try:
        check_raft_message(message)
    except BadMessage as e:
        reason = str(e)
        for words, finding in REFUSALS:
            if words in reason:
                return f"refused by the wire: {finding}"
        return f"refused by the wire: {reason}"
    return None


SNAPSHOT_KINDS = (m.InstallSnapshot, m.SnapshotResponse)
REFUSALS = [("node ids", "F2 node id 0"), ("exceeds", "F2 integer too large"), ("does not follow", "F3 hole"),
            ("has term", "F3 entry term"), ("CONFIG", "F4 bad CONFIG entry")]  # fmt: skip


def unread_because(message) -> str | None:
    """Why the core must drop ``message`` unread (``RaftCore.step``), or None."""
    if message.src < 1:
        return "sent by node 0"
    if message.term > MAX_TERM:
        return "a term beyond MAX_TERM"
    if message.dst != ME:
        return "addressed to another node"
    return None


def outward_state(core) -> tuple:
    return core.term, core.vote, core.role, core.leader_id, core.last_index, core.commit_index


ACTIONS = ["hostile"] * 6 + ["tick", "tick", "elect", "follow", "ack", "propose", "read"]


@fuzz(400)
@given(st.randoms(use_true_random=False), st.integers(1, 30))
def test_adversarial_messages_never_make_the_core_raise_or_break_its_invariants(rng, steps):
    node = Node(rng.getrandbits(16))
    for _ in range(steps):
        action = rng.choice(ACTIONS)
        core = node.core
        if action == "hostile":
            message = hostile_message(rng, node)
            event(wire_refuses(message) or "passed by the wire")
            note(f"step: {message}")
            if unread_because(message) and not isinstance(message, SNAPSHOT_KINDS):
                event(f"dropped unread by the core: {unread_because(message)}")
                node.process()  # what earlier inputs left to do, so that only the message is judged
                before = outward_state(node.core)
                node.core.step(message)
                assert outward_state(node.core) == before and not node.core.has_ready(), f"the core took {message}"
                continue
            try:
                if isinstance(message, SNAPSHOT_KINDS) and rng.random() < 0.5:
                    # The node routes these to its SnapshotManager; the core must take them all the same.
                    node.core.step(message)
                    node.process()
                else:
                    node.deliver(message)
            except LogConflictBelowCommit:
                # Finding F5: the core raises (by design: "safety is already broken") when a
                # message would overwrite committed entries; the raft port now refuses the
                # sender.  The core changed nothing but its term first; carry on from there.
                event("F5: conflict below the commit index")
                node.process()
            continue
        note(f"step: {action}")
        if action == "tick":
            node.tick(rng.randint(1, 12))
        elif action == "elect":
            event(f"elected: {elect(node)}")
        elif action == "follow" and core.role is not Role.LEADER:
            honest(node, heartbeat_from(node, leader=rng.choice(PEERS), entries=rng.randrange(4)))
        elif action == "ack" and core.role is Role.LEADER:
            honest(node, m.AppendResponse(core.term, rng.choice(PEERS), ME, True, core.last_index))
        elif action == "propose":
            node.propose(frame_data(rng.randint(1, 100)))
        elif action == "read":
            node.read_index(rng.randint(1, 2**40))
    event(f"final role: {node.core.role.value}")
    event(f"applied: {min(len(node.applied), 5)}")
