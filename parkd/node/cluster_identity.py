"""Who may speak on the raft port, and the cluster's identity entries (CONTRACT §10).

A raft connection opens with a ``PeerHello`` from the dialing side: protocol version,
node id, cluster id (empty while unknown) and the data-dir id of the sender
(``parkd/node/identity.py``).  :meth:`ClusterIdentity.check_hello` refuses, with one
line naming both values:

- a protocol version this node cannot speak (:func:`compatible`);
- a cluster id other than this node's (both known): a node of another cluster;
- a data-dir id other than the one the cluster recorded for that node: the member
  lost its data dir and came back empty (it has none of what it acknowledged, so it
  must not count as that member: remove it, wipe, ``--join``, add it again);
- the data dir of a node that a configuration left out (removed, or left out by
  ``--force-new-cluster``): it is not a member.

The leader proposes the identity entries (``parkd/parking/codec.py``): a cluster id
when the applied state has none (a new cluster, or the first start after the
upgrade), and a member's data-dir id the first time a member presents one that is
not recorded (every node's own, and a node's once it is added).

:meth:`ClusterIdentity.standing` is the node's own view: a node whose data dir is new
and that has not applied a cluster id from a leader is not a member in good
standing (no ``consistency=local`` reads, ``/readyz`` 503).
"""

from __future__ import annotations

import uuid

from twisted.logger import Logger

from parkd import __version__
from parkd.parking.codec import ClusterIdCommand, MemberDataDir, encode_cluster_id, encode_member_data_dir, is_id
from parkd.proto import parkd_pb2 as pb
from parkd.raft.core import NotLeader, Role
from parkd.wire import PROTOCOL_VERSION

PROPOSE_AGAIN_S = 5.0  # an identity entry proposed but not applied after this is proposed again


def compatible(version: int) -> bool:
    """Whether a peer speaking ``version`` can talk to this node (the same major version)."""
    return version // 100 == PROTOCOL_VERSION // 100


def procedure(node_id: int) -> str:
    """What an operator does with a member whose data dir was lost (README "Disaster recovery")."""
    return (f"remove it (parkctl remove-node {node_id}), wipe its data dir, start it with --join "
            f"and add it again (parkctl add-node {node_id} ...)")  # fmt: skip


class ClusterIdentity:
    """This node's identity checks on the raft port and the leader's identity proposals.

    ``data_dir``: this data dir's :class:`~parkd.node.identity.DataDirIdentity`;
    ``state``: the ParkingState (the replicated records); ``driver``: the Raft driver
    (role, membership, proposals); ``clock``: for re-proposing.
    """

    log = Logger()

    def __init__(self, node_id: int, data_dir, state, driver, clock):
        self.node_id = node_id
        self.data_dir = data_dir
        self.state = state
        self.driver = driver
        self.clock = clock
        self.seen: dict[int, str] = {node_id: data_dir.data_dir_id}  # data-dir ids accepted in hellos
        self.changed: dict[int, tuple[str, str]] = {}  # node -> (recorded, presented): it lost its data dir
        self._proposed: dict[tuple, float] = {}  # what this leader proposed, and when
        self._recorded: set[tuple[int, str]] = set()  # (node, data-dir id) this leader found recorded
        self._cluster_id: str | None = None  # cached once known: it never changes

    # -- what this node says and knows

    def cluster_id(self) -> str | None:
        if self._cluster_id is None:
            self._cluster_id = self.state.cluster_id()
        return self._cluster_id

    def hello(self) -> pb.PeerHello:
        """The PeerHello this node opens its raft connections with."""
        return pb.PeerHello(protocol_version=PROTOCOL_VERSION, node_id=self.node_id,
                            cluster_id=self.cluster_id() or "", data_dir_id=self.data_dir.data_dir_id)  # fmt: skip

    def standing(self) -> str | None:
        """Why this node is not a member in good standing (None: it is).

        A brand-new data dir that has applied no cluster id from a leader holds
        nothing the cluster agreed on: either the cluster is just starting, or this
        member lost its data dir (and the others refuse it).
        """
        if self.cluster_id() is not None:
            return None
        if self.data_dir.created or self.driver.applied_index == 0:
            return ("this node's data dir is new and it has not received the cluster's state from a leader: "
                    "it is not a member in good standing (a member that lost its data dir must be removed and "
                    "added again: README \"Disaster recovery\")")  # fmt: skip
        return None

    def data_dir_status(self, node_id: int) -> str:
        """"ok" (recorded, and not refused since), "changed" (came back with a new data dir) or "unknown"."""
        if node_id in self.changed:
            return "changed"
        return "ok" if node_id in self.state.member_data_dirs() else "unknown"

    def describe(self) -> dict:
        """The fields ``/api/v1/cluster`` shows."""
        return {"cluster_id": self.cluster_id(), "version": __version__, "protocol": PROTOCOL_VERSION,
                "data_dir_id": self.data_dir.data_dir_id}  # fmt: skip

    # -- the raft port

    def check_hello(self, hello: pb.PeerHello) -> str | None:
        """Why the raft port refuses the connection ``hello`` opened (None: it may go on)."""
        node, theirs = hello.node_id, hello.data_dir_id
        if not compatible(hello.protocol_version):
            return (f"node {node} speaks raft protocol {hello.protocol_version}, this node speaks "
                    f"{PROTOCOL_VERSION} (parkd {__version__}): run the same major version on every node")  # fmt: skip
        ours = self.cluster_id()
        if ours is not None and hello.cluster_id and hello.cluster_id != ours:
            return (f"node {node} belongs to cluster {hello.cluster_id}, this node to cluster {ours}: "
                    f"a node of another cluster (check its --config and data dir)")  # fmt: skip
        if not is_id(theirs) or (hello.cluster_id and not is_id(hello.cluster_id)):
            return f"node {node} sent a malformed PeerHello (data-dir id {theirs!r}, cluster id {hello.cluster_id!r})"
        recorded = self.state.member_data_dirs().get(node)
        if recorded is not None and recorded != theirs:
            self._lost_data_dir(node, recorded, theirs)
            return f"node {node} came back with a new data dir (was {recorded}, now {theirs}): {procedure(node)}"
        if self.state.member_data_dirs(retired=True).get(node) == theirs:
            return (f"node {node} runs on data dir {theirs}, which a configuration left out (removed, or left out "
                    f"by --force-new-cluster): it is not a member; wipe its data dir, start it with --join and add "
                    f"it (parkctl add-node {node} ...)")  # fmt: skip
        self.seen[node] = theirs
        self.changed.pop(node, None)
        return None

    def _lost_data_dir(self, node: int, recorded: str, presented: str) -> None:
        if self.changed.get(node) == (recorded, presented):
            return  # logged once per change; the refusals themselves are rate-limited
        self.changed[node] = (recorded, presented)
        self.log.critical("node {node_id} came back with a new data dir (was {was}, now {now}): {what}",
                          parkd_event="data_dir_changed", node_id=node, was=recorded, now=presented,
                          what=procedure(node))  # fmt: skip

    # -- the leader's proposals

    def propose_missing(self) -> None:
        """Leader: propose the cluster id if the state has none, and the data-dir id of every
        member that presented one not recorded yet.

        The node calls it twice a second (``parkd/node/service.py``); the two queries
        it needs held the leader's reactor for about 1 ms each time (an eighth of an
        idle leader's CPU), so it makes them only while some member's data dir is not
        known recorded.  A record found stays one: it is retired only when its node leaves
        the configuration, and a node added again presents its data dir anew.
        """
        if self.driver.role is not Role.LEADER:
            self._proposed.clear()
            self._recorded.clear()
            return
        if self.cluster_id() is None:
            self._propose(("cluster",), lambda: encode_cluster_id(ClusterIdCommand(uuid.uuid4().hex)))
        membership = self.driver.membership
        members = (*membership.voters, *membership.learners)
        presented = [(node, self.seen[node]) for node in members if node in self.seen]
        unknown = [pair for pair in presented if pair not in self._recorded]
        if not unknown:
            return
        recorded, retired = self.state.member_data_dirs(), self.state.member_data_dirs(retired=True)
        for node, presented in unknown:
            if recorded.get(node) == presented:
                self._recorded.add((node, presented))
            # A node added again under its id: only a data dir it presented since counts
            # (the one seen before its removal is retired; its new hello replaces it).
            elif node not in recorded and retired.get(node) != presented:
                self._propose(("dir", node, presented),
                              lambda n=node, d=presented: encode_member_data_dir(MemberDataDir(n, d)))  # fmt: skip

    def _propose(self, key: tuple, data) -> None:
        now = self.clock.seconds()
        if now - self._proposed.get(key, -PROPOSE_AGAIN_S) < PROPOSE_AGAIN_S:
            return
        try:
            self.driver.propose(data())
        except NotLeader:
            return
        self._proposed[key] = now
