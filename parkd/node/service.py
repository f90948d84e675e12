"""The node daemon's service (``twistd parkd node``): builds a node from small parts.

:class:`NodeService` opens the data dir's database (:func:`open_store`), then
builds, each with only what it needs:

- the **driver** (``driver.py``), the only door into the Raft core;
- the **cluster identity** (``cluster_identity.py``): this data dir's id
  (``identity.py``), the PeerHello each raft connection opens with and the raft
  port's checks of it, the leader's identity proposals, the node's standing;
- the **peer links** (``peers.py``) and the node's routing of Raft messages:
  snapshot transfers to the snapshot manager, everything else to the driver;
- **membership** (``membership.py``): address book, links, admin operations;
- the **frame intake** (``frames.py``) behind the client port (``ports.py``),
  and the **camera registry** (``registry.py``) it asks about disabled cameras;
- **snapshots** (``snapshots.py``): taking, sending, receiving, installing;
- **linearizable reads** (``reads.py``);
- **backups** (``backup.py``): taken on the leader, streamed by the HTTP port;
- three timers: the leader's retention proposal, the text log's frame summary,
  and the **disk monitor** (``disk.py``), which raises the node's ``nospace``
  alarm (``alarms.py``): new frames wait while the disk is low;
- the **housekeeping** (``housekeeping.py``) that deletes what retention cut;
- with a ``[tls]`` table, its TLS (``parkd/trust``): mutual TLS on both ports and
  every peer link, identities checked by the ports (CONTRACT §9).

It owns start and stop order: SIGTERM makes a leader hand over first, points
the cameras at the new leader, then closes the listeners and the database.  The
HTTP port is wired from these parts by the process layer (``parkd/http/site.py``).
"""

from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass

import sqlalchemy as sa
from twisted.application import service
from twisted.internet import defer
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from parkd import __version__
from parkd.config import ConfigError
from parkd.startup import fail_on_config_error, listen_now, raise_file_limit
from parkd.db import StorageError, convert_to_incremental_vacuum, frees_incrementally, open_engine
from parkd.events import FRAME_EVENTS
from parkd.node.alarms import Alarms
from parkd.node.backup import BackupTaker
from parkd.node.checkpoints import Checkpointer
from parkd.node.cluster_identity import PROTOCOL_VERSION, ClusterIdentity
from parkd.node.disk import CHECK_INTERVAL_S, MIB, DiskMonitor, database_bytes, free_bytes
from parkd.node.driver import RaftDriver
from parkd.node.frames import FrameIntake
from parkd.node.housekeeping import Housekeeping
from parkd.node.identity import DataDirIdentity
from parkd.node.membership import MembershipManager
from parkd.node.peers import PeerService
from parkd.node.ports import ClientPortFactory, RaftPortFactory
from parkd.node.reads import ReadBarrier
from parkd.node.registry import CameraRegistry
from parkd.node.snapshots import CompactionPolicy, SnapshotManager
from parkd.node.worker import WorkerThread
from parkd.parking.analyzer import HashAnalyzer
from parkd.parking.codec import CodecError
from parkd.parking.retention import ensure_retention_index, retention_entry
from parkd.parking.state import ParkingState
from parkd.raft.core import CoreConfig, NotLeader, RaftCore, Role
from parkd.raft.messages import InstallSnapshot, SnapshotResponse
from parkd.raft.storage import SqliteStorage
from parkd.raft.types import PersistedState, SnapshotMeta
from parkd.trust import Identity, Trust, TrustError, TrustFiles

IDENTITY_INTERVAL_S = 0.5  # how often the leader checks for identity entries to propose
SUMMARY_INTERVAL_S = 10.0  # how often the text log sums up the frames applied
# A follower applies within this long in one batch while nothing on it waits for the
# entries (parkd/node/driver.py); it keeps its CPU off the leader's critical path.
FOLLOWER_APPLY_HOLD_S = 0.02


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


@dataclass
class Store:
    """A data dir's database: the Raft storage and the parking state share one file."""

    db_path: str
    engine: sa.Engine
    storage: SqliteStorage
    state: ParkingState
    persisted: PersistedState
    applied: int
    data_dir: DataDirIdentity

    def close(self) -> None:
        self.engine.dispose()


def open_store(data_dir: str, lots: dict[str, int], disk_free=free_bytes) -> Store:
    """Open (or create) ``data_dir/node.db``; ConfigError naming the file if it cannot be used."""
    path = os.path.join(open_data_dir(data_dir), "node.db")
    engine = None
    try:
        _switch_to_incremental_vacuum(path, disk_free)
        engine = open_engine(path)
        storage = SqliteStorage(engine)
        state = ParkingState(engine, lots)
        ensure_retention_index(engine)
        data_dir = DataDirIdentity.load_or_create(engine)
        return Store(path, engine, storage, state, storage.load(), state.last_applied(), data_dir)
    except StorageError as e:
        if engine is not None:
            engine.dispose()
        raise ConfigError(f"--data-dir: cannot open database {path!r}: {e}") from None


_log = Logger(namespace="parkd.node.service")


def _switch_to_incremental_vacuum(path: str, disk_free) -> None:
    """A node.db made before ``auto_vacuum = INCREMENTAL`` is rewritten with it once, at start.

    Until then the space of trimmed frames is reused but never given back.  The
    node is not serving yet; without room for the rewrite it starts as it is and says so.
    """
    if not os.path.exists(path) or os.path.getsize(path) == 0 or frees_incrementally(path):
        return
    size = database_bytes(path)
    needed, free = 2 * size, disk_free(os.path.dirname(path))
    if free < needed:
        _log.warn("{path} keeps the space of trimmed frames (made by an older parkd): converting it needs "
                  "{needed_mb:.0f} MB free, {free_mb:.0f} MB are; free some space and restart the node",
                  path=path, needed_mb=needed / MIB, free_mb=free / MIB)  # fmt: skip
        return
    _log.info("{path} was made by an older parkd: rewriting it once ({size_mb:.0f} MB, a few seconds per 100 MB) "
              "so that the space of trimmed frames goes back to the filesystem …",
              path=path, size_mb=size / MIB)  # fmt: skip
    started = time.monotonic()
    convert_to_incremental_vacuum(path)
    _log.info("{path} rewritten in {seconds:.1f} s: {before_mb:.0f} MB -> {after_mb:.0f} MB",
              path=path, seconds=time.monotonic() - started, before_mb=size / MIB,
              after_mb=database_bytes(path) / MIB)  # fmt: skip


class _StateMachine:
    """The driver's state machine: the parking state applies, the snapshot manager installs."""

    def __init__(self, state: ParkingState, install):
        self.state = state
        self._install = install

    def apply(self, entries):
        try:
            return self.state.apply(entries)
        except CodecError as e:  # a committed entry no node can read: never skip it silently
            raise StorageError(f"committed entry cannot be decoded: {e}") from e

    def install(self, meta: SnapshotMeta) -> defer.Deferred:
        return self._install(meta)


class NodeService(service.Service):
    """Opens the database and the node's parts and its raft and client ports; closes them on stop."""

    log = Logger()

    def __init__(self, settings, reactor, snapshot_thread=None, disk_free=free_bytes, rng=None):
        self.settings = settings
        self.reactor = reactor
        self._rng = rng or random.Random()  # the core's election timeouts (a test may fix the seed)
        self._snapshot_thread = snapshot_thread  # tests on a fake reactor run snapshot work inline
        self._disk_free = disk_free  # the data dir's free space (tests give a fake disk)
        self.store: Store | None = None
        self.driver: RaftDriver | None = None
        self.ports = []
        self._loops: list[LoopingCall] = []
        self._handed_over_to: int | None = None  # the voter a stopping leader handed over to
        self.trust: Trust | None = None

    @fail_on_config_error
    def startService(self) -> None:
        s = self.settings
        config = s.config
        raise_file_limit()
        lots = {lot.id: lot.capacity for lot in config.lots}
        self.trust = self._build_trust()
        self.store = store = open_store(s.data_dir, lots, self._disk_free)
        self.driver = self._build_driver(store)
        self.identity = ClusterIdentity(s.node_id, store.data_dir, store.state, self.driver, self.reactor)
        self.peers = PeerService(
            s.node_id, (), self.reactor, config.cluster.max_message_bytes,
            resolve=lambda node_id: self.membership.address(node_id), on_lost=self.driver.peer_unreachable,
            trust=self.trust, hello=self.identity.hello,
        )  # fmt: skip
        self.membership = self._build_membership(store)
        self.snapshots = self._build_snapshots(store)
        self.registry = CameraRegistry(self.driver, store.state, self.reactor)
        self.intake = FrameIntake(self.driver, store.state, HashAnalyzer(), lots, self.reactor, self.registry)
        self.reads = ReadBarrier(self.driver, self.reactor)
        self.driver.wait_for_applies(self.intake.awaits_applies)
        self.driver.wait_for_applies(self.reads.awaits_applies)
        self.alarms, self.disk = self._build_disk(store)
        self.backups = self._build_backups(store)
        self.intake.admission = self.alarms.frame_refusal
        self.checkpoints = Checkpointer(
            store.db_path, self.reactor, self._snapshot_thread or WorkerThread(self.reactor, name="parkd-checkpoint")
        )
        self.housekeeping = Housekeeping(store.state, store.engine, self.reactor)
        self._loops = [
            self._every(config.cluster.retention_interval, self._propose_retention),
            self._every(SUMMARY_INTERVAL_S, self._summary),
            self._every(CHECK_INTERVAL_S, self.disk.check),
            self._every(IDENTITY_INTERVAL_S, self.identity.propose_missing),
        ]
        size, tls = config.cluster.max_message_bytes, self.trust is not None
        raft_port = RaftPortFactory(self.reactor, size, self._deliver, authenticate=tls,
                                    check_hello=self.identity.check_hello)  # fmt: skip
        self.client_port = ClientPortFactory(self.reactor, size, self.intake, authenticate=tls)
        self.registry.when_disabled(self.client_port.close_disabled)
        self.ports = [
            listen_now(self.reactor, s.listen_raft, self._secured(raft_port, "raft port", allow=("node",)), "raft port"),
            listen_now(self.reactor, s.listen_client, self._secured(self.client_port, "client port"), "client port"),
        ]
        service.Service.startService(self)
        self.snapshots.start()
        self.backups.start()
        self.peers.startService()
        self.driver.start()
        if s.force_new_cluster:
            self._force_new_cluster()
        for loop, interval in self._loops:
            loop.start(interval, now=False)
        self.housekeeping.start()
        self.checkpoints.start()
        self._summarised = FRAME_EVENTS.emitted
        persisted = store.persisted
        self.log.info(
            "node {node_id} started: parkd {version} (raft protocol {protocol}), cluster {cluster_id}, "
            "data dir {data_dir_id}{new}; raft={raft} client={client} data={data_dir}; "
            "term {term}, {entries} log entries, applied {applied}",
            node_id=s.node_id, raft=s.listen_raft, client=s.listen_client, data_dir=s.data_dir,
            term=persisted.hard_state.term, entries=len(persisted.entries), applied=store.applied,
            version=__version__, protocol=PROTOCOL_VERSION, cluster_id=self.identity.cluster_id() or "(not known yet)",
            data_dir_id=store.data_dir.data_dir_id, new=" (new)" if store.data_dir.created else "",
        )  # fmt: skip

    def _force_new_cluster(self) -> None:
        """``--force-new-cluster``: this node becomes the only voter of its cluster (CONTRACT §10)."""
        index = self.driver.force_new_configuration()
        self.log.critical(
            "--force-new-cluster: node {node_id} is now the only voter of cluster {cluster_id} (configuration "
            "entry {index}), from its own data dir; every other member is out. Add fresh nodes with "
            "parkctl add-node; see README \"Disaster recovery\"",
            parkd_event="cluster_forced", node_id=self.settings.node_id, index=index,
            cluster_id=self.identity.cluster_id() or "(not known yet)",
        )  # fmt: skip

    def standing(self) -> str | None:
        """Why this node is not a member in good standing, or None (``/readyz``, local reads)."""
        return self.identity.standing() if self.driver is not None else "the node has not started"

    # ------------------------------------------------------------ building

    def _build_trust(self) -> Trust | None:
        """The node's TLS material from ``[tls]``, or None (plaintext, allowed by ``insecure``)."""
        tls = self.settings.config.tls
        if tls is None:
            self.log.warn("insecure = true: every port of node {node_id} speaks plaintext and checks no identity; "
                          "see README \"Securing a cluster\"", node_id=self.settings.node_id)  # fmt: skip
            return None
        files = tls.for_node(self.settings.node_id)
        try:
            return Trust(TrustFiles(files.ca, files.cert, files.key, files.crl), expect=Identity("node", self.settings.node_id),
                         handshake_timeout=tls.handshake_timeout, clock=self.reactor)  # fmt: skip
        except TrustError as e:
            raise ConfigError(f"[tls]: {e}") from None

    def _secured(self, factory, name: str, **kwargs):
        """``factory`` behind TLS when the node has a ``[tls]`` table (its endpoint string unchanged)."""
        return factory if self.trust is None else self.trust.server(factory, name, **kwargs)

    def reload_tls(self) -> None:
        """SIGHUP: new connections use the files as they are now; open ones keep theirs."""
        if self.trust is not None:
            self.trust.reload()

    def _build_driver(self, store: Store) -> RaftDriver:
        s = self.settings
        voters = () if s.join else tuple(m.id for m in s.config.members)  # --join: wait to be added
        core = RaftCore(
            s.node_id, voters, store.persisted, self._rng, core_config(s.config.cluster), applied=store.applied
        )
        state_machine = _StateMachine(store.state, lambda meta: self.snapshots.install(meta))
        # The Raft log's fsync runs here, off the reactor (parkd/node/driver.py).
        self._fsync_thread = self._snapshot_thread or WorkerThread(self.reactor, name="parkd-fsync")
        self._fsync_thread.start()
        return RaftDriver(
            core, store.storage, self._send, state_machine, self.reactor,
            s.config.cluster.heartbeat_ms / 1000.0, on_fatal=self._fatal, syncer=self._fsync_thread.run,
            apply_hold_s=FOLLOWER_APPLY_HOLD_S,
        )  # fmt: skip

    def _build_membership(self, store: Store) -> MembershipManager:
        return MembershipManager(
            self.driver, self.peers, self.settings.config.members, self.reactor, store.persisted.entries
        )

    def _build_snapshots(self, store: Store) -> SnapshotManager:
        cluster = self.settings.config.cluster
        return SnapshotManager(
            self.driver,
            store,
            self.membership,
            self.peers.send,
            self.reactor,
            CompactionPolicy(max_entries=cluster.snapshot_entries, margin=cluster.snapshot_margin),
            os.path.join(self.settings.data_dir, "snapshots"),
            thread=self._snapshot_thread,
        )

    def _build_backups(self, store: Store) -> BackupTaker:
        directory = os.path.join(self.settings.data_dir, "backups")
        return BackupTaker(self.driver, store, self.membership, self.reads, self.reactor, directory,
                           thread=self._snapshot_thread, alarms=self.alarms)  # fmt: skip

    def _build_disk(self, store: Store) -> tuple[Alarms, DiskMonitor]:
        """The node's alarms and the disk monitor that raises ``nospace``, checked once now."""
        alarms = Alarms(self.settings.node_id)
        minimum = self.settings.config.cluster.min_free_disk_mb * MIB
        disk = DiskMonitor(self.settings.data_dir, store.db_path, alarms, minimum, self.driver, self._disk_free)
        disk.check()
        return alarms, disk

    def _every(self, interval: float, function) -> tuple[LoopingCall, float]:
        loop = LoopingCall(function)
        loop.clock = self.reactor
        return loop, interval

    # ------------------------------------------------------------ routing Raft messages

    def _send(self, message) -> None:
        """The driver's messages: a snapshot request is for the snapshot sender, the rest go out."""
        if type(message) is InstallSnapshot:
            self.snapshots.send(message)
        else:
            self.peers.send(message)

    def _deliver(self, message) -> None:
        """Raft port input: snapshot chunks and their answers are the snapshot transport's."""
        kind = type(message)
        if kind is InstallSnapshot:
            self.snapshots.on_chunk(message)
        elif kind is SnapshotResponse:
            self.snapshots.on_response(message)
        else:
            self.driver.step(message)

    # ------------------------------------------------------------ timers

    def _summary(self) -> None:
        """The text log's view of the per-frame events (which go to the JSON log only)."""
        applied = FRAME_EVENTS.emitted - self._summarised
        if applied:
            self._summarised = FRAME_EVENTS.emitted
            self.log.info("applied {count} frames in the last {seconds:.0f}s; last applied index {index}",
                          count=applied, seconds=SUMMARY_INTERVAL_S, index=self.driver.applied_index)  # fmt: skip

    def _propose_retention(self) -> None:
        """Leader: trim frame history older than the window, at one log position on every node."""
        if self.driver.role is Role.LEADER:
            cutoff = self.reactor.seconds() - self.settings.config.cluster.history_hours * 3600
            try:
                self.driver.propose(retention_entry(cutoff))
            except NotLeader:
                pass

    def _fatal(self) -> None:
        self.reactor.addSystemEventTrigger("after", "shutdown", os._exit, 70)
        self.reactor.stop()

    # ------------------------------------------------------------ stopping

    def stopService(self):
        """SIGTERM: a leader first hands leadership to an up-to-date voter (CONTRACT §2)."""
        service.Service.stopService(self)
        handover = self._hand_over() if self.driver is not None else defer.succeed(None)
        return handover.addBoth(lambda _: self._close())

    def _hand_over(self) -> defer.Deferred:
        driver = self.driver
        if driver.role is not Role.LEADER or len(driver.membership.voters) < 2:
            return defer.succeed(None)
        self.log.info("stopping: handing leadership to the most up-to-date voter")
        timeout = 2 * self.settings.config.cluster.election_timeout_ms / 1000
        handover = self.membership.transfer_leader(None, timeout=timeout, wait_for_leader=False)

        def done(target):
            self._handed_over_to = target

        def failed(failure):
            self.log.warn("stopping without handing over: {reason}", reason=failure.getErrorMessage())

        return handover.addCallbacks(done, failed)

    def _redirect_cameras(self) -> None:
        """Point connected cameras at the leader before closing, so they need not search."""
        leader = self.driver.leader_id
        if leader is None:
            leader = self._handed_over_to
        member = self.membership.address(leader) if leader is not None and leader != self.driver.node_id else None
        if member is not None:
            self.client_port.redirect_all(leader, str(member.client))

    def _close(self):
        if self.driver is not None:
            self._redirect_cameras()
        for loop, _ in self._loops:
            if loop.running:
                loop.stop()
        if self.driver is not None:
            self.housekeeping.stop()
            self.snapshots.stop()
            self.backups.stop()
            self.driver.stop()
            self._fsync_thread.stop()  # waits for an fsync under way
        if self.trust is not None:
            self.trust.refusals.stop()
        stopping = [defer.maybeDeferred(port.stopListening) for port in self.ports]
        if self.driver is not None:
            stopping.append(defer.maybeDeferred(self.peers.stopService))
            stopping.append(self.checkpoints.stop())
        self.ports = []

        def closed(_):
            if self.store is not None:
                self.store.close()
                self.store = None
            self.log.info("node {node_id} stopped: listeners and database closed", node_id=self.settings.node_id)

        return defer.gatherResults(stopping).addCallback(closed)
