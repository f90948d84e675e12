"""MembershipManager and PeerService: the node side of membership changes (issue 6).

Real RaftCores and RaftDrivers on one ``task.Clock``, wired through a fake peer
layer that behaves like PeerService (a message goes out only over a link; a
link to a node whose address is known is made on first use, and that first
message is lost).  No sockets, no sleeping.
"""

from __future__ import annotations

import json
import random

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IHostnameResolver, IHostResolution
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from zope.interface import implementer
from twisted.logger import Logger

from parkd.config import Member, parse_address
from parkd.node.driver import RaftDriver
from parkd.node.events import EntriesPersisted
from parkd.node.membership import (
    ChangeLost,
    ChangeRefused,
    ChangeTimeout,
    MembershipManager,
    NotLeader,
)
from parkd.node.addresses import member_context
from parkd.node.peers import PeerService
from parkd.raft import confchange
from parkd.raft.confchange import ConfChange, ConfChangeOp
from parkd.raft.core import CoreConfig, RaftCore, Role
from parkd.raft.messages import AppendEntries
from parkd.raft.storage import MemoryStorage
from parkd.raft.types import Entry, EntryKind

TICK = 0.05
CONFIG = CoreConfig(election_ticks=6, heartbeat_ticks=1, promote_lag=4)


def member(node_id: int, host: str = "127.0.0.1") -> Member:
    return Member(
        node_id,
        parse_address(f"{host}:{7100 + node_id}", "raft"),
        parse_address(f"{host}:{7200 + node_id}", "client"),
        parse_address(f"{host}:{7300 + node_id}", "http"),
    )


class FakePeers:
    """PeerService's interface over an in-memory network."""

    def __init__(self, net: Net, node_id: int):
        self.net, self.node_id = net, node_id
        self.links: dict[int, Member] = {}
        self.resolve = None
        self.removed: list[int] = []

    def add_peer(self, m: Member):
        self.links[m.id] = m

    def remove_peer(self, peer_id: int):
        if self.links.pop(peer_id, None) is not None:
            self.removed.append(peer_id)

    def connected(self, peer_id: int) -> bool:
        return peer_id in self.links and self.net.reachable(self.node_id, peer_id)

    def send(self, message):
        if message.dst not in self.links:
            m = self.resolve(message.dst) if self.resolve else None
            if m is not None:
                self.add_peer(m)  # a link for next time; this message is lost
            return
        if self.net.reachable(self.node_id, message.dst):
            self.net.clock.callLater(0, self.net.deliver, message)


class Node:
    def __init__(self, net: Net, node_id: int, voters: tuple[int, ...], file_members):
        self.id = node_id
        self.storage = MemoryStorage()
        self.core = RaftCore(node_id, voters, self.storage.load(), random.Random(node_id), CONFIG)
        self.peers = FakePeers(net, node_id)
        self.applied: list[Entry] = []
        self.driver = RaftDriver(self.core, self.storage, self.peers.send, self, net.clock, TICK, lambda: None)
        self.events: list[dict] = []
        self.manager = MembershipManager(self.driver, self.peers, file_members, net.clock)
        self.peers.resolve = self.manager.address  # as the node's PeerService is built
        self.manager.log = Logger(namespace="test", observer=self.events.append)
        self.driver.start()

    def apply(self, entries):  # the driver's state machine
        self.applied.extend(entries)
        return [None] * len(entries)

    def named(self, event: str) -> list[dict]:
        return [e for e in self.events if e.get("parkd_event") == event]


class Net:
    def __init__(self, voters=(1, 2, 3)):
        self.clock = Clock()
        self.file = tuple(member(i) for i in voters)
        self.nodes: dict[int, Node] = {}
        self.down: set[int] = set()
        for i in voters:
            self.nodes[i] = Node(self, i, tuple(voters), self.file)

    def join(self, node_id: int) -> Node:
        """Start ``node_id`` like ``--join``: no configuration, the file's addresses."""
        node = Node(self, node_id, (), (*self.file, member(node_id)))
        self.nodes[node_id] = node
        return node

    def reachable(self, a: int, b: int) -> bool:
        return a not in self.down and b not in self.down and b in self.nodes

    def deliver(self, message):
        if self.reachable(message.src, message.dst):
            self.nodes[message.dst].driver.step(message)

    def run(self, seconds: float) -> None:
        for _ in range(round(seconds / TICK)):
            self.clock.advance(TICK)

    def until(self, predicate, seconds: float = 10.0, what: str = "condition"):
        for _ in range(round(seconds / TICK)):
            result = predicate()
            if result:
                return result
            self.clock.advance(TICK)
        raise AssertionError(f"no {what} within {seconds} s of fake time")

    def leader(self) -> Node:
        def one():
            leaders = [n for i, n in self.nodes.items() if i not in self.down and n.core.role is Role.LEADER]
            return leaders[0] if len(leaders) == 1 else None

        return self.until(one, what="leader")


def result_of(deferred):
    """The result of a fired Deferred (raising its failure), or None while it waits."""
    out = []
    deferred.addBoth(out.append)
    if not out:
        return None
    if hasattr(out[0], "raiseException"):
        out[0].raiseException()
    return out[0]


def failure_of(deferred, kind):
    out = []
    deferred.addBoth(out.append)
    assert out, "still waiting"
    assert hasattr(out[0], "check") and out[0].check(kind), out[0]
    return out[0].value


def settle(net: Net, deferred, seconds: float = 10.0):
    holder = []
    deferred.addBoth(holder.append)
    net.until(lambda: holder, seconds, "outcome")
    if hasattr(holder[0], "raiseException"):
        holder[0].raiseException()
    return holder[0]


def add_voter(net: Net, node_id: int):
    net.join(node_id)
    leader = net.leader()
    return settle(net, leader.manager.add_node(member(node_id), wait_voter=True))


# ------------------------------------------------------------------ address book


def config_entry(index, op, node_id, context=b"", voters=(1, 2, 3), learners=()):
    data = confchange.encode(ConfChange(op, node_id, context, voters, learners))
    return Entry(index, 1, EntryKind.CONFIG, data)


def lone_manager(entries=(), file_members=None):
    net = Net()
    node = net.nodes[1]
    file_members = net.file if file_members is None else file_members
    return MembershipManager(node.driver, FakePeers(net, 1), file_members, net.clock, entries)


def test_the_log_wins_over_the_config_file_whatever_the_order():
    moved = member(3, host="10.0.0.3")
    manager = lone_manager([config_entry(5, ConfChangeOp.ADD_LEARNER, 3, member_context(moved))])
    assert manager.address(3) == moved and manager.address(1) == member(1)
    # an older snapshot's book does not undo it; a newer one does
    manager.restore_members([{**json.loads(member_context(member(3))), "index": 4}])
    assert manager.address(3) == moved
    again = member(3, host="10.0.0.33")
    manager.restore_members([{**json.loads(member_context(again)), "index": 7}])
    assert manager.address(3) == again


def test_persisted_config_entries_teach_addresses_promotions_keep_them():
    manager = lone_manager()
    four = member(4, host="10.0.0.4")
    added = config_entry(6, ConfChangeOp.ADD_LEARNER, 4, member_context(four), learners=(4,))
    manager._entries_persisted(EntriesPersisted((added,)))
    manager._entries_persisted(EntriesPersisted((config_entry(7, ConfChangeOp.PROMOTE, 4, voters=(1, 2, 3, 4)),)))
    assert manager.address(4) == four


def test_the_book_survives_a_snapshot_without_the_log():
    four = member(4, host="10.0.0.4")
    before = lone_manager([config_entry(6, ConfChangeOp.ADD_LEARNER, 4, member_context(four), learners=(4,))])
    saved = json.loads(json.dumps(before.members_for_snapshot()))  # JSON-able
    assert {m["id"]: m["index"] for m in saved} == {1: 0, 2: 0, 3: 0, 4: 6}
    after = lone_manager(file_members=(member(1),))  # restarted with an old file, log compacted away
    assert after.address(4) is None
    after.restore_members(saved)
    assert after.address(4) == four and after.address(2) == member(2)


def test_unusable_contexts_and_snapshot_members_are_skipped():
    manager = lone_manager([
        config_entry(5, ConfChangeOp.ADD_LEARNER, 4, b"not json", learners=(4,)),
        config_entry(6, ConfChangeOp.ADD_LEARNER, 5, member_context(member(6)), learners=(5,)),
    ])  # fmt: skip
    manager.restore_members([{"id": "x"}, "nonsense", {"id": 7, "raft": "nohost", "client": "a:1", "http": "a:2"}])
    assert manager.address(4) is None and manager.address(5) is None and manager.address(7) is None


# ------------------------------------------------------------------ adding


def test_a_joining_node_is_added_catches_up_and_is_promoted():
    net = Net()
    leader = net.leader()
    for i in range(20):
        leader.driver.propose(b"frame %d" % i)
    net.run(0.5)
    joiner = net.join(4)
    assert joiner.core.membership.voters == () and joiner.peers.links == {}
    added = leader.manager.add_node(member(4), wait_voter=True)
    membership = settle(net, added)
    assert 4 in membership.voters and membership.learners == ()
    assert 4 in joiner.core.voters  # it learned the configuration from the leader's log
    net.until(lambda: [e.data for e in joiner.applied if e.kind is EntryKind.NORMAL][-1:] == [b"frame 19"])
    for node in net.nodes.values():
        assert set(node.peers.links) == {1, 2, 3, 4} - {node.id}
        net.until(lambda: node.named("member_promoted"), what=f"node {node.id} to apply the promotion")
        (added_event,) = node.named("member_added")
        assert added_event["member_id"] == 4 and added_event["raft"] == "127.0.0.1:7104"
        assert added_event["role"] == "learner" and added_event["learners"] == [4]
        assert node.named("member_promoted")[0]["voters"] == [1, 2, 3, 4]
    view = {m["id"]: m for m in leader.manager.members()}
    assert view[4]["membership"] == "voter" and view[4]["http"] == "127.0.0.1:7304"
    assert view[4]["match_index"] == leader.core.last_index


def test_without_waiting_for_promotion_it_fires_once_the_learner_is_added():
    net = Net()
    leader = net.leader()
    membership = settle(net, leader.manager.add_node(member(4)))  # node 4 is not even running
    assert membership.learners == (4,) and 4 not in membership.voters
    assert leader.manager.members()[-1]["membership"] == "learner"


def test_waiting_for_a_learner_that_never_catches_up_times_out_with_a_clear_reason():
    net = Net()
    leader = net.leader()
    waiting = leader.manager.add_node(member(4), wait_voter=True, timeout=3.0)
    net.run(3.1)
    error = failure_of(waiting, ChangeTimeout)
    assert "added as a learner but has not caught up" in str(error) and "--join" in str(error)


def test_a_second_change_is_refused_while_one_is_pending():
    net = Net()
    leader = net.leader()
    net.run(0.2)
    first = leader.manager.add_node(member(4))
    second = leader.manager.add_node(member(5))
    assert "is not committed yet" in failure_of(second, ChangeRefused).reason
    settle(net, first)


@pytest.mark.parametrize(
    "new, reason",
    [
        (member(2), "node 2 is already a member"),
        (Member(4, member(1).raft, member(4).client, member(4).http), "raft address 127.0.0.1:7101 is node 1's"),
        (Member(4, member(4).raft, member(4).client, member(3).http), "http address 127.0.0.1:7303 is node 3's"),
    ],
)
def test_adding_a_member_or_a_used_address_is_refused(new, reason):
    net = Net()
    leader = net.leader()
    net.run(0.2)
    assert failure_of(leader.manager.add_node(new), ChangeRefused).reason == reason


def test_a_follower_names_the_leader():
    net = Net()
    leader = net.leader()
    net.run(0.2)
    follower = next(n for n in net.nodes.values() if n is not leader)
    for deferred in (follower.manager.add_node(member(4)), follower.manager.remove_node(leader.id),
                     follower.manager.transfer_leader()):  # fmt: skip
        assert failure_of(deferred, NotLeader).leader_id == leader.id


# ------------------------------------------------------------------ removing


def test_removing_a_follower_closes_the_links_once_committed():
    net = Net()
    leader = net.leader()
    net.run(0.2)
    victim = next(n for n in net.nodes.values() if n is not leader)
    membership = settle(net, leader.manager.remove_node(victim.id))
    assert victim.id not in membership.voters
    net.run(0.5)
    for node in net.nodes.values():
        if node is not victim:
            assert victim.id not in node.peers.links and victim.id in node.peers.removed
            assert node.named("member_removed")[0]["member_id"] == victim.id
    # the removed node learned of its removal (the leader told it the commit)
    assert victim.id not in victim.core.membership
    assert victim.named("member_removed")


def test_removing_the_leader_makes_it_step_down_after_the_commit():
    net = Net()
    leader = net.leader()
    net.run(0.2)
    removing = leader.manager.remove_node(leader.id)
    assert leader.core.role is Role.LEADER  # still leads until the change commits (§4.2.2)
    membership = settle(net, removing)
    assert leader.id not in membership.voters and len(membership.voters) == 2
    net.down.add(leader.id)  # the operator stops it
    new = net.leader()
    assert new is not leader and leader.core.role is not Role.LEADER
    assert settle(net, new.manager.add_node(member(4))).learners == (4,)  # the cluster goes on


@pytest.mark.parametrize(
    "victim, reason",
    [
        (9, "node 9 is not a member (members: 1, 2, 3)"),
    ],
)
def test_removing_an_unknown_node_is_refused(victim, reason):
    net = Net()
    leader = net.leader()
    net.run(0.2)
    assert failure_of(leader.manager.remove_node(victim), ChangeRefused).reason == reason


def test_removing_the_last_voter_is_refused():
    net = Net(voters=(1,))
    leader = net.leader()
    net.run(0.2)
    reason = failure_of(leader.manager.remove_node(1), ChangeRefused).reason
    assert reason == "node 1 is the last voter; removing it would leave no cluster"


def test_removing_a_voter_that_would_leave_no_reachable_majority_is_refused():
    net = Net()
    leader = net.leader()
    net.run(0.2)
    a, b = (n.id for n in net.nodes.values() if n is not leader)
    net.down.add(b)
    reason = failure_of(leader.manager.remove_node(a), ChangeRefused).reason
    assert reason == (f"removing node {a} would leave voters {', '.join(map(str, sorted([leader.id, b])))} of which "
                      f"only {leader.id} are reachable from the leader; 2 are needed for a majority")  # fmt: skip
    # removing the node that is down is fine: 2 voters, both reachable
    assert leader.id in settle(net, leader.manager.remove_node(b)).voters


def test_a_change_that_does_not_commit_in_time_says_so():
    net = Net()
    leader = net.leader()
    net.run(0.2)
    net.down.update(n for n in net.nodes if n != leader.id)
    waiting = leader.manager.add_node(member(4), timeout=0.2)
    net.run(0.25)
    assert "did not commit within 0.2 s; it may still commit" in str(failure_of(waiting, ChangeTimeout))


def test_a_change_overwritten_by_a_new_leader_is_reported_lost():
    net = Net()
    old = net.leader()
    net.run(0.2)
    net.down.add(old.id)  # cut off: its entry never leaves
    waiting = old.manager.add_node(member(4), timeout=30)
    new = net.leader()
    assert new is not old
    net.run(0.5)  # the new leader's no-op goes where the change was
    net.down.discard(old.id)
    error = settle_failure(net, waiting, ChangeLost)
    assert "leadership changed before the change" in str(error) and "try again" in str(error)


def settle_failure(net, deferred, kind):
    holder = []
    deferred.addBoth(holder.append)
    net.until(lambda: holder, 10, "outcome")
    assert hasattr(holder[0], "check") and holder[0].check(kind), holder[0]
    return holder[0].value


# ------------------------------------------------------------------ transfer


def test_transfer_to_a_named_voter_fires_once_it_leads():
    net = Net()
    leader = net.leader()
    net.run(0.2)
    target = max(i for i in net.nodes if i != leader.id)
    assert settle(net, leader.manager.transfer_leader(target)) == target
    assert net.nodes[target].core.role is Role.LEADER and leader.core.leader_id == target


def test_transfer_without_a_target_picks_a_voter():
    net = Net()
    leader = net.leader()
    net.run(0.2)
    new = settle(net, leader.manager.transfer_leader())
    assert new != leader.id and net.leader().id == new


def test_transfer_to_itself_is_done_and_to_a_non_voter_refused():
    net = Net()
    leader = net.leader()
    net.run(0.2)
    assert result_of(leader.manager.transfer_leader(leader.id)) == leader.id
    assert failure_of(leader.manager.transfer_leader(9), ChangeRefused).reason == (
        "node 9 is not a member; leadership can only go to a voter")
    settle(net, leader.manager.add_node(member(4)))
    assert failure_of(leader.manager.transfer_leader(4), ChangeRefused).reason == (
        "node 4 is a learner; leadership can only go to a voter")


def test_transfer_to_a_node_that_is_down_is_abandoned():
    net = Net()
    leader = net.leader()
    net.run(0.2)
    target = next(i for i in net.nodes if i != leader.id)
    net.down.add(target)
    leader.driver.propose(b"x")  # so the target is behind and never gets TimeoutNow
    error = settle_failure(net, leader.manager.transfer_leader(target), ChangeRefused)
    assert f"leadership transfer to node {target} was abandoned" in error.reason
    assert leader.core.role is Role.LEADER


def test_3_10_the_leaders_own_id_cancels_a_pending_transfer():
    net = Net()
    leader = net.leader()
    net.run(0.2)
    target = next(i for i in net.nodes if i != leader.id)
    net.down.add(target)
    leader.driver.propose(b"x")  # the target is behind: the transfer stays pending
    pending = leader.manager.transfer_leader(target)
    net.run(0.1)
    assert leader.driver.transferee == target
    assert result_of(leader.manager.transfer_leader(leader.id)) == leader.id  # the leader stays
    net.run(0.1)
    error = failure_of(pending, ChangeRefused)
    assert error.reason == f"leadership transfer to node {target} was cancelled"
    assert leader.driver.transferee is None and leader.core.role is Role.LEADER
    leader.driver.propose(b"accepted again")  # no NotLeader(target): writes are taken again


def test_single_voter_cannot_transfer():
    net = Net(voters=(1,))
    leader = net.leader()
    assert "no other voter" in failure_of(leader.manager.transfer_leader(), ChangeRefused).reason


# ------------------------------------------------------------------ rolling replacement, in memory


def test_rolling_replacement_keeps_every_entry():
    net = Net()
    for i in range(5):
        net.leader().driver.propose(b"before %d" % i)
    for new, old in ((4, 1), (5, 2), (6, 3)):
        add_voter(net, new)
        net.run(0.2)
        settle(net, net.leader().manager.remove_node(old))
        net.down.add(old)
        net.leader().driver.propose(b"after %d" % old)
        net.run(0.5)
    survivors = [net.nodes[i] for i in (4, 5, 6)]
    assert set(net.leader().core.voters) == {4, 5, 6}
    datas = [[e.data for e in n.applied if e.kind is EntryKind.NORMAL] for n in survivors]
    assert datas[0] == datas[1] == datas[2]
    assert [d for d in datas[0] if d.startswith(b"before")] == [b"before %d" % i for i in range(5)]
    assert [d for d in datas[0] if d.startswith(b"after")] == [b"after 1", b"after 2", b"after 3"]


# ------------------------------------------------------------------ PeerService at runtime


def make_peers(members=(), resolve=None):
    reactor = MemoryReactorClock()
    peers = PeerService(1, tuple(members), reactor, 1 << 20, resolve=resolve)
    peers.startService()
    return peers, reactor


def test_peer_service_adds_and_removes_links_at_runtime():
    peers, reactor = make_peers([member(1), member(2), member(3)])
    assert set(peers.links) == {2, 3} and all(s.running for s in peers)
    peers.add_peer(member(4))
    assert set(peers.links) == {2, 3, 4}
    four = peers.getServiceNamed("peer-4")
    assert four.running  # started at once: the parent runs
    done = peers.remove_peer(2)
    assert done.called and set(peers.links) == {3, 4}
    assert [s.name for s in peers] == ["peer-3", "peer-4"]
    peers.set_peers([member(1), member(4)])
    assert set(peers.links) == {4} and not peers.connected(4)


@implementer(IHostResolution)
class _Resolution:
    def __init__(self, name):
        self.name = name

    def cancel(self):
        pass


@implementer(IHostnameResolver)
class LiteralResolver:
    """Resolves an IPv4 literal to itself (MemoryReactor's resolver answers 127.0.0.1 to all)."""

    def resolveHostName(self, receiver, hostName, portNumber=0, addressTypes=None, transportSemantics="TCP"):
        resolution = _Resolution(hostName)
        receiver.resolutionBegan(resolution)
        receiver.addressResolved(IPv4Address("TCP", hostName, portNumber))
        receiver.resolutionComplete()
        return resolution


def dials(reactor) -> list[tuple[str, int]]:
    """Every connection attempt so far, as (host, port)."""
    return [(host, port) for host, port, *_ in reactor.tcpClients]


def answer_dial(reactor, n: int) -> StringTransport:
    """Complete the ``n``-th connection attempt; its transport (``.protocol``: ours)."""
    host, port, factory, *_ = reactor.tcpClients[n]
    transport = StringTransport()
    transport.protocol = factory.buildProtocol(IPv4Address("TCP", host, port))
    transport.protocol.makeConnection(transport)
    return transport


def test_a_member_that_moved_is_reconnected_at_its_new_address():
    reactor = MemoryReactorClock()
    reactor.installNameResolver(LiteralResolver())
    lost = []
    peers = PeerService(1, (member(2),), reactor, 1 << 20, on_lost=lost.append)
    peers.startService()
    old = answer_dial(reactor, 0)
    assert dials(reactor) == [("127.0.0.1", 7102)] and peers.connected(2)
    peers.add_peer(member(2, host="10.0.0.2"))
    assert old.disconnecting  # the link to the old address is closed ...
    assert dials(reactor) == [("127.0.0.1", 7102), ("10.0.0.2", 7102)]  # ... and the new one dialled
    assert not peers.connected(2)
    new = answer_dial(reactor, 1)
    assert peers.connected(2) and peers.links[2].proto.transport is new
    old.protocol.connectionLost(Failure(ConnectionDone()))  # the old socket closes: not a lost peer
    assert peers.connected(2) and lost == []
    peers.add_peer(member(2, host="10.0.0.2"))  # the same again: no reconnect
    reactor.advance(5)
    assert len(dials(reactor)) == 2 and not new.disconnecting and peers.links[2].proto.transport is new


def test_a_message_for_an_unknown_node_makes_a_link_if_its_address_is_known():
    known = {5: member(5)}
    peers, _ = make_peers([member(2)], resolve=known.get)
    message = AppendEntries(1, 1, 5, 0, 0, (), 0)
    peers.send(message)
    assert 5 in peers.links and peers.links[5].dropped == 1  # not connected yet: the core re-sends
    peers.send(AppendEntries(1, 1, 9, 0, 0, (), 0))
    assert 9 not in peers.links and peers.unroutable == 1
