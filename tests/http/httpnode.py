"""A node double for the HTTP port (imported by tests/http as ``httpnode``).

Real ParkingState on in-memory SQLite, real FrameIntake, MembershipManager,
CameraRegistry, ReadBarrier and metrics, around a scripted driver (the Raft status they read
and the event stream they follow); a ``task.Clock``; requests go through the
real twisted.web Site over a StringTransport (no sockets, no sleeping)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from types import SimpleNamespace

from twisted.internet import task
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport

from parkd.config import CameraSettings, Config, Lot, parse_address, Member
from parkd.db import open_engine
from parkd.http.metrics import NodeMetrics
from parkd.http.health import node_readiness
from parkd.http.site import build_site
from parkd.node import driver as events
from parkd.node.alarms import Alarms
from parkd.node.cluster_identity import ClusterIdentity
from parkd.node.disk import MIB, DiskMonitor
from parkd.node.frames import FrameIntake
from parkd.node.identity import DataDirIdentity
from parkd.node.membership import MembershipManager
from parkd.node.reads import ReadBarrier
from parkd.node.registry import CameraRegistry
from parkd.parking.analyzer import HashAnalyzer
from parkd.parking.codec import FrameResult, encode
from parkd.parking.state import ParkingState
from parkd.raft.core import NotLeader, Role
from parkd.raft.types import Entry, EntryKind, Membership, SnapshotMeta

LOTS = {"north": 100, "south": 60}
INTERVAL = 2.0
NOW = 10_000.0


class FakeDriver:
    """The driver's read-only view, its inputs, and its event stream, scripted by the test."""

    def __init__(self, node_id=2):
        self.node_id = node_id
        self.term = 3
        self.role = Role.FOLLOWER
        self.leader_id: int | None = 1
        self.commit_index = 0
        self.leader_commit = 0  # the highest commit index a leader told this node
        self.applied_index = 0
        self.stalled = False  # a write waits for disk space
        self.failed = False
        self.last_index = 0
        self.match_indexes: dict[int, int] = {}
        self.progress = {}
        self.membership = Membership((1, 2, 3), (), 0)
        self.snapshot = SnapshotMeta()
        self.transferee: int | None = None
        self.asked: list[int] = []  # read index contexts
        self.ready_count = 0  # Readies taken (a test moves it: the requests asked so far have left)
        self.proposed = []
        self._observers = []

    def subscribe(self, observer, *kinds):
        self._observers.append((kinds, observer))

    def publish(self, event):
        for kinds, observer in self._observers:
            if isinstance(event, kinds):
                observer(event)

    def read_index(self, ctx: int) -> None:
        if self.leader_id is None:
            raise NotLeader(None)
        self.asked.append(ctx)

    def propose(self, data):
        if self.leader_id is None:
            raise NotLeader(None)
        self.proposed.append(data)
        self.last_index += 1  # a leader appends at once (FakeNode.commit_proposed commits it)


@dataclass
class Link:
    proto: object = None
    sent: int = 0
    dropped: int = 0


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self):
        return json.loads(self.body)


CLUSTER_ID, DATA_DIR_ID = "c" * 32, "2" * 32


@dataclass
class FakeNode:
    """The attributes of a NodeService that the HTTP port and the metrics read."""

    clock: task.Clock = field(default_factory=task.Clock)

    def __post_init__(self):
        self.clock.advance(NOW)
        self.reactor = self.clock
        self.engine = open_engine("sqlite://")
        self.state = ParkingState(self.engine, LOTS)
        self.driver = self.core = FakeDriver()
        members = tuple(
            Member(i, parse_address(f"127.0.0.1:{7100 + i}", "raft"), parse_address(f"127.0.0.1:{7200 + i}", "c"),
                   parse_address(f"127.0.0.1:{7300 + i}", "http"))
            for i in (1, 2, 3)
        )  # fmt: skip
        config = Config(
            camera=CameraSettings(interval=INTERVAL),
            members=members,
            lots=tuple(Lot(k, v) for k, v in LOTS.items()),
        )
        self.settings = SimpleNamespace(config=config, node_id=2)
        self.peers = SimpleNamespace(links={1: Link(proto=object(), sent=10, dropped=1), 3: Link(sent=4, dropped=7)})
        self.registry = CameraRegistry(self.driver, self.state, self.clock)
        self.intake = FrameIntake(self.driver, self.state, HashAnalyzer(), LOTS, self.clock, self.registry)
        self.membership = MembershipManager(self.driver, None, members, self.clock)
        self.reads = ReadBarrier(self.driver, self.clock)
        self.metrics = NodeMetrics(self.driver, self.state, self.peers, self.intake, list(LOTS), clock=self.clock)
        self.alarms = Alarms(node_id=2)
        self.free_disk = 10_000 * MIB  # what the disk monitor's free-space function answers
        self.disk = DiskMonitor("/nonexistent", "/nonexistent/node.db", self.alarms, 256 * MIB, self.driver,
                                free=lambda _path: self.free_disk)  # fmt: skip
        self.disk.check()
        self.metrics.watch_disk(self.disk, self.alarms)
        self.state.replace_cluster_identity(CLUSTER_ID)  # a member in good standing (tests change that)
        self.identity = ClusterIdentity(2, DataDirIdentity(DATA_DIR_ID, created=False), self.state, self.driver,
                                        self.clock)  # fmt: skip
        self.metrics.watch_reads(self.reads)
        self.build_site()
        self.index = 0

    def build_site(self, **options):
        """The HTTP port over this node's parts (again, after a test replaced one; ``options``: e.g. access)."""
        self.site = build_site(
            clock=self.clock, state=self.state, driver=self.driver, membership=self.membership, reads=self.reads,
            metrics=self.metrics, lot_ids=list(LOTS), camera_interval=INTERVAL, registry=self.registry,
            alarms=self.alarms, identity=self.identity, **options,
            readiness=node_readiness(self.driver, self.alarms, self.standing, self.settings.config.cluster.ready_lag),
        )  # fmt: skip

    def standing(self):
        return self.identity.standing()

    # -- the replicated state

    def apply(self, camera_id, seq, free, lot="north", at=None, incarnation=0):
        """Commit and apply one frame entry (as the driver would), telling the listeners."""
        return self.apply_batch([(camera_id, seq, free, lot, at, incarnation)])

    def apply_batch(self, frames):
        """Commit and apply (camera_id, seq, free, lot, at[, incarnation]) frames in one batch."""
        datas = []
        for camera_id, seq, free, lot, at, *incarnation in frames:
            captured = NOW - 1.0 if at is None else at
            datas.append(encode(FrameResult(camera_id, lot, seq, captured, free, *incarnation)))
        return self.apply_datas(datas)

    def commit_proposed(self):
        """Commit and apply what was proposed through the driver (a leader's entries)."""
        datas, self.driver.proposed = self.driver.proposed, []
        return self.apply_datas(datas)

    def apply_datas(self, datas):
        """Commit and apply NORMAL entries with these data in one batch."""
        entries = []
        for data in datas:
            self.index += 1
            entries.append(Entry(self.index, self.core.term, EntryKind.NORMAL, data))
        results = self.state.apply(entries)
        driver = self.driver
        driver.commit_index = max(driver.commit_index, self.index)
        driver.last_index = max(driver.last_index, self.index)
        driver.applied_index = self.index
        driver.publish(events.EntriesApplied(tuple(entries), results, self.index))
        return results

    def read_state(self, ctx, index):
        from parkd.raft.core import ReadState

        self.driver.publish(events.ReadIndexReady(ReadState(ctx, index)))

    # -- HTTP

    def request(self, path: str, method: str = "GET") -> Request:
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
        protocol = self.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        protocol.makeConnection(transport)
        protocol.dataReceived(f"{method} {path} HTTP/1.0\r\nHost: test\r\n\r\n".encode())
        return Request(protocol, transport)

    def post(self, path: str, body=None, content_type: str = "application/json", raw: bytes | None = None) -> Request:
        """POST a JSON body (or ``raw`` bytes); the exchange, answered at once or later."""
        data = raw if raw is not None else (b"" if body is None else json.dumps(body).encode())
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
        protocol = self.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        protocol.makeConnection(transport)
        head = f"POST {path} HTTP/1.0\r\nHost: test\r\nContent-Length: {len(data)}\r\n"
        if content_type:
            head += f"Content-Type: {content_type}\r\n"
        protocol.dataReceived(head.encode() + b"\r\n" + data)
        return Request(protocol, transport)

    def get(self, path: str, method: str = "GET") -> Response:
        request = self.request(path, method)
        response = request.response()
        assert response is not None, f"{path} did not answer at once"
        return response


class Request:
    """An HTTP/1.0 exchange in progress: the response is complete once the server closed."""

    def __init__(self, protocol, transport):
        self.protocol = protocol
        self.transport = transport

    def response(self) -> Response | None:
        if not self.transport.disconnecting:
            return None
        head, _, body = self.transport.value().partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        return Response(status, headers, body)

    def disconnect(self):
        from twisted.python.failure import Failure
        from twisted.internet.error import ConnectionLost

        self.protocol.connectionLost(Failure(ConnectionLost("client went away")))
