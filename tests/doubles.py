"""Test doubles for the node's collaborators (imported as ``doubles``).

- :class:`Proposals` stands in for the Raft driver in client-port and registry
  tests: it takes proposals (or raises NotLeader), commits them when the test says
  so by applying them to a real ParkingState, and tells subscribers through the
  same ``EntriesApplied`` events the driver publishes; it shows the driver's role,
  term and last index.
- :class:`InlineThread` stands in for the node's snapshot thread on a fake
  reactor: it runs the work at once.
- :class:`Network` stands in for a camera client's connections: it records each
  dial, refuses the ones to addresses it is told to, connects the rest at once.
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from parkd.node.events import EntriesApplied, LeaderChanged
from parkd.raft.core import Role
from parkd.raft.core import NotLeader
from parkd.raft.types import Entry


class Proposals:
    def __init__(self):
        self.leader = True
        self.pending: list[bytes] = []  # proposed, not yet committed
        self.all: list[bytes] = []
        self.index = 0
        self.node_id = 1
        self.term = 1
        self._observers = []

    # The driver's read-only view, as far as proposing parts ask it.
    @property
    def role(self) -> Role:
        return Role.LEADER if self.leader else Role.FOLLOWER

    @property
    def leader_id(self) -> int | None:
        return self.node_id if self.leader else None

    @property
    def last_index(self) -> int:
        return self.index + len(self.pending)

    def subscribe(self, observer, *kinds):
        self._observers.append((kinds, observer))

    def unsubscribe_all(self):
        """The node these observers belonged to is gone (a restart)."""
        self._observers.clear()

    def propose(self, data: bytes) -> None:
        if not self.leader:
            raise NotLeader(None)
        self.pending.append(data)
        self.all.append(data)

    def new_leader(self, leader_id: int, term: int = 2) -> None:
        """A leader became known (the driver's LeaderChanged)."""
        self._publish(LeaderChanged(Role.FOLLOWER, leader_id, term))

    def _publish(self, event) -> None:
        for kinds, observer in self._observers:
            if isinstance(event, kinds):
                observer(event)

    def commit(self, state) -> None:
        """Commit and apply every pending proposal, as one batch."""
        entries = []
        for data in self.pending:
            self.index += 1
            entries.append(Entry(self.index, self.term, data=data))
        self.pending = []
        self._publish(EntriesApplied(tuple(entries), state.apply(entries), self.index))


class InlineThread:
    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def run(self, function, *args, **kwargs) -> defer.Deferred:
        return defer.maybeDeferred(function, *args, **kwargs)


class Network:
    """Records connection attempts; each succeeds (on a ``transport()``) or is refused on demand."""

    def __init__(self, transport=StringTransport):
        self.attempts = []  # (address, proto)
        self.refuse = set()
        self.transport = transport

    def connect(self, address, proto):
        self.attempts.append((address, proto))
        if address in self.refuse:
            return defer.fail(Failure(ConnectionRefusedError()))
        proto.makeConnection(self.transport())
        return defer.succeed(proto)

    @property
    def proto(self):
        return self.attempts[-1][1]
