"""The node daemon's service tree (``twistd parkd node``)."""

from __future__ import annotations

import os
import random

from twisted.application import service
from twisted.internet import defer
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from parkd.config import ConfigError
from parkd.db import StorageError, open_engine
from parkd.events import FRAME_EVENTS
from parkd.daemon import JsonLogService, OrderedServices, fail_on_config_error, listen_now, raise_file_limit
from parkd.node.driver import RaftDriver
from parkd.node.frames import FrameIntake
from parkd.node.http import build_site
from parkd.node.membership import MembershipManager
from parkd.node.peers import PeerService
from parkd.node.ports import ClientPortFactory, RaftPortFactory
from parkd.node.snapshots import CompactionPolicy, SnapshotManager
from parkd.parking.analyzer import HashAnalyzer
from parkd.parking.retention import ensure_retention_index, retention_entry
from parkd.parking.snapshot import read_snapshot_meta
from parkd.parking.codec import CodecError
from parkd.parking.state import Outcome, ParkingState
from parkd.raft.core import CoreConfig, NotLeader, RaftCore, Role
from parkd.raft.messages import InstallSnapshot, Propose, SnapshotResponse
from parkd.raft.storage import SqliteStorage


RETENTION_INTERVAL_S = 600.0  # how often the leader proposes a history trim
SUMMARY_INTERVAL_S = 10.0  # how often the text log sums up the frames applied
HELD_FORWARDS_LIMIT = 10_000  # frame results kept for a leader this node cannot reach yet
FORWARD_BATCH = 1000  # results per Propose when they go out


def open_data_dir(path: str) -> str:
    """Create the data directory if needed and check it is writable."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"--data-dir: cannot create {path!r}: {e.strerror}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(f"--data-dir: {path!r} is not writable")
    return path


def core_config(cluster) -> CoreConfig:
    """One tick per heartbeat; the election timeout in whole heartbeats."""
    return CoreConfig(
        election_ticks=max(2, cluster.election_timeout_ms // cluster.heartbeat_ms),
        heartbeat_ticks=1,
        max_bytes_per_msg=min(1 << 20, cluster.max_message_bytes // 2),
    )


class NodeService(service.Service):
    """Opens the database, the Raft core and the three listeners; closes them on stop."""

    log = Logger()

    def __init__(self, settings, reactor):
        self.settings = settings
        self.reactor = reactor
        self.ports = []
        self.engine = None
        self.peers = None
        self.driver = None
        self.retention = None
        self.summary = None
        self.snapshots = None
        self._handed_over_to = None  # the voter a stopping leader handed over to
        self.forwards = None
        self._held_for: int | None = None  # the leader the held frame results are for
        self._held: list[bytes] = []

    @fail_on_config_error
    def startService(self) -> None:
        s = self.settings
        config = s.config
        raise_file_limit()
        path = self.db_path = os.path.join(open_data_dir(s.data_dir), "node.db")
        try:
            self.engine = open_engine(path)
            self.storage = SqliteStorage(self.engine)
            self.state = ParkingState(self.engine, {lot.id: lot.capacity for lot in config.lots})
            ensure_retention_index(self.engine)
            persisted = self.storage.load()
            applied = self.state.last_applied()
        except StorageError as e:
            raise ConfigError(f"--data-dir: cannot open database {path!r}: {e}") from None
        voters = () if s.join else tuple(m.id for m in config.members)  # --join: wait to be added
        self.core = RaftCore(s.node_id, voters, persisted, random.Random(), core_config(config.cluster), applied=applied)
        size = config.cluster.max_message_bytes
        self.peers = PeerService(s.node_id, (), self.reactor, size)  # links: MembershipManager
        self.driver = RaftDriver(
            self.core,
            self.storage,
            self._send,
            self._apply,
            self.reactor,
            config.cluster.heartbeat_ms / 1000.0,
            on_fatal=self._fatal,
        )
        self.peers.lost_listeners.append(self.driver.peer_unreachable)
        self.membership = MembershipManager(
            s.node_id, self.core, self.driver, self.peers, config.members, self.reactor, persisted.entries
        )
        self.intake = FrameIntake(self.driver.propose, self.state, HashAnalyzer(), {l.id: l.capacity for l in config.lots})
        self.driver.soft_state_listeners.append(self.intake.leader_changed)
        policy = CompactionPolicy(max_entries=config.cluster.snapshot_entries, margin=config.cluster.snapshot_margin)
        self.snapshots = SnapshotManager(self, policy, os.path.join(s.data_dir, "snapshots"))
        self.driver.applied_listeners.append(self.snapshots.applied)
        if self.snapshots.latest is not None:  # members added through a log compacted since
            self.membership.restore_members(read_snapshot_meta(self.snapshots.latest.path).members)
        self.retention = LoopingCall(self._propose_retention)
        self.retention.clock = self.reactor
        self._summarised = FRAME_EVENTS.emitted
        self.summary = LoopingCall(self._summary)
        self.summary.clock = self.reactor
        self.forwards = LoopingCall(self._send_held_forwards)
        self.forwards.clock = self.reactor
        self.client_port = ClientPortFactory(self.reactor, size, self.intake)
        self.ports = [
            listen_now(self.reactor, s.listen_raft, RaftPortFactory(self.reactor, size, self._deliver), "raft port"),
            listen_now(self.reactor, s.listen_client, self.client_port, "client port"),
            listen_now(self.reactor, s.listen_http, build_site(self), "http port"),
        ]
        service.Service.startService(self)
        self.snapshots.start()
        self.peers.startService()
        self.driver.start()
        self.retention.start(RETENTION_INTERVAL_S, now=False)
        self.summary.start(SUMMARY_INTERVAL_S, now=False)
        self.forwards.start(config.cluster.heartbeat_ms / 1000.0, now=False)
        self.log.info(
            "node {node_id} started: raft={raft} client={client} http={http} data={data_dir}; "
            "term {term}, {entries} log entries, applied {applied}",
            node_id=s.node_id, raft=s.listen_raft, client=s.listen_client, http=s.listen_http,
            data_dir=s.data_dir, term=persisted.hard_state.term, entries=len(persisted.entries), applied=applied,
        )  # fmt: skip

    def _send(self, message) -> None:
        if self.snapshots.intercept(message):
            return
        if type(message) is Propose:
            self._forward(message)
        else:
            self.peers.send(message)

    def _forward(self, message: Propose) -> None:
        """Frame results for the leader, held while this node has no connection to it.

        The link would drop them and nothing proposes them again while the leader
        stays the same (FrameIntake does on a leader change): the camera would wait
        out its ack timeout while its later frames, forwarded once the link is up,
        overtook them.  That happens whenever a node starts before the leader
        listens, or its link to the leader is reconnecting.
        """
        if self._held_for != message.dst:
            self._held, self._held_for = [], message.dst  # the old leader's: see FrameIntake.leader_changed
        if not self._held and self.peers.connected(message.dst):
            self.peers.send(message)
            return
        self._held.extend(message.data)  # behind the held ones, in order
        del self._held[:-HELD_FORWARDS_LIMIT]  # the oldest: their cameras time out and re-send
        self._send_held_forwards()

    def _send_held_forwards(self) -> None:
        """The held results go out once the link to their leader is up (checked every heartbeat)."""
        if not self._held:
            return
        if self.core.leader_id != self._held_for:
            self._held = []  # another leader: FrameIntake.leader_changed proposed them again
            return
        if not self.peers.connected(self._held_for):
            return
        held, self._held = self._held, []
        for start in range(0, len(held), FORWARD_BATCH):
            batch = tuple(held[start : start + FORWARD_BATCH])
            self.peers.send(Propose(self.core.term, self.core.id, self._held_for, batch))

    def _deliver(self, message) -> None:
        """Raft port input: snapshot chunks and their answers are the node's business."""
        if isinstance(message, SnapshotResponse):
            self.snapshots.on_response(message)
        elif isinstance(message, InstallSnapshot):
            self.snapshots.on_chunk(message)
        else:
            self.driver.step(message)

    def _summary(self) -> None:
        """The text log's view of the per-frame events (which go to the JSON log only)."""
        applied = FRAME_EVENTS.emitted - self._summarised
        if applied:
            self._summarised = FRAME_EVENTS.emitted
            self.log.info("applied {count} frames in the last {seconds:.0f}s; last applied index {index}",
                          count=applied, seconds=SUMMARY_INTERVAL_S, index=self.core.applied_index)  # fmt: skip

    def _propose_retention(self) -> None:
        """Leader: trim frame history older than the window, at one log position on every node."""
        if self.core.role is Role.LEADER:
            cutoff = self.reactor.seconds() - self.settings.config.cluster.history_hours * 3600
            try:
                self.driver.propose(retention_entry(cutoff))
            except NotLeader:
                pass

    def _apply(self, entries) -> None:
        try:
            results = self.state.apply(entries)
        except (StorageError, CodecError) as e:
            self.driver._fatal(e)
            return
        for r in results:
            if r.outcome is Outcome.APPLIED:
                FRAME_EVENTS.emit(
                    "parkd.node", "applied frame {seq} of camera {camera_id} at {index}: {free} free",
                    parkd_event="frame_applied",
                    camera_id=r.camera_id, seq=r.seq, index=r.index, free=r.free, lot=r.lot,
                )  # fmt: skip
        self.intake.applied(results)
        self.membership.committed(entries)

    def _fatal(self) -> None:
        self.reactor.addSystemEventTrigger("after", "shutdown", os._exit, 70)
        self.reactor.stop()

    def stopService(self):
        """SIGTERM: a leader first hands leadership to an up-to-date voter (CONTRACT §2)."""
        service.Service.stopService(self)
        handover = self._hand_over() if self.driver is not None else defer.succeed(None)
        return handover.addBoth(lambda _: self._close())

    def _hand_over(self) -> defer.Deferred:
        if self.core.role is not Role.LEADER or len(self.core.voters) < 2:
            return defer.succeed(None)
        done = defer.Deferred()

        def finish(result=None):
            if result is not None and result.succeeded:
                self._handed_over_to = result.target
            if not done.called:
                done.callback(None)

        self.driver.transfer_listeners.append(finish)
        try:
            target = self.driver.transfer_leadership()
        except (NotLeader, ValueError):
            return defer.succeed(None)
        self.log.info("stopping: handing leadership to node {target}", target=target)
        timeout = self.reactor.callLater(2 * self.settings.config.cluster.election_timeout_ms / 1000, finish)
        return done.addBoth(lambda r: timeout.cancel() if timeout.active() else None)

    def _redirect_cameras(self) -> None:
        """Point connected cameras at the leader before closing, so they need not search.

        A leader that handed over learns that it did from the target's election:
        it knows the new term but no leader of it yet, so it names the target.
        """
        leader = self.core.leader_id
        if leader is None:
            leader = self._handed_over_to
        book = getattr(self, "membership", None)
        member = book.address(leader) if book and leader is not None and leader != self.core.id else None
        if member is not None:
            self.client_port.redirect_all(leader, str(member.client))

    def _close(self):
        if self.driver is not None:
            self._redirect_cameras()
        for loop in (self.retention, self.summary, self.forwards):
            if loop is not None and loop.running:
                loop.stop()
        if self.snapshots is not None:
            self.snapshots.stop()
        if self.driver is not None:
            self.driver.stop()
        stopping = [defer.maybeDeferred(port.stopListening) for port in self.ports]
        if self.peers is not None:
            stopping.append(defer.maybeDeferred(self.peers.stopService))
        self.ports = []

        def closed(_):
            if self.engine is not None:
                self.engine.dispose()
                self.engine = None
            self.log.info("node {node_id} stopped: listeners and database closed", node_id=self.settings.node_id)

        return defer.gatherResults(stopping).addCallback(closed)


def build_node_service(settings, reactor) -> service.MultiService:
    top = OrderedServices()
    if settings.log_json:
        JsonLogService(settings.log_json).setServiceParent(top)
    NodeService(settings, reactor).setServiceParent(top)
    return top
