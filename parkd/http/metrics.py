"""Prometheus metrics of one node (``GET /metrics``), on a registry of its own.

Two kinds:

* Gauges read at scrape time (:class:`NodeCollector`): role, term, leader,
  commit / applied / last log index, per-peer match index, replication lag and
  link state, connected cameras, each lot's free spaces; and
  (:class:`DiskCollector`) the database's size, the free disk space, the
  alarms and the frames they refused.
* Counters and histograms fed as things happen (:class:`NodeMetrics`): leader
  changes and SQLite commit durations from the driver's event stream;
  proposals, frames applied per lot and the camera ack latency as the node's
  FrameIntake observer; HTTP reads from the API resource; retention's deleted
  rows and batch durations as the node's housekeeping observer.

All names start with ``parkd_``; the README lists them.
"""

from __future__ import annotations

import collections

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from parkd.http.errors import JsonResource, not_found
from parkd.node.alarms import KNOWN as KNOWN_ALARMS
from parkd.node.events import LeaderChanged, Persisted
from parkd.parking.state import Outcome
from parkd.raft.core import Role
from parkd.raft.progress import ProgressState

# Latencies on loopback are milliseconds; a leader change takes a second or two.
ACK_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
COMMIT_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
READ_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0)
LAG_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
TRIM_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0)
LAG_INTERVAL = 0.05  # seconds between the lag probe's timers
LAG_WINDOW = 10.0  # seconds over which the recent worst lag is kept (for /api/v1/cluster)


class ReactorLag:
    """How late a frequent timer fires: every stall of the reactor thread shows here.

    A timer is asked for every ``interval`` seconds; the time it fires past that
    is one observation of ``parkd_reactor_lag_seconds``.  :meth:`recent_max`
    is the worst of the last ``window`` seconds (the dashboard's cluster strip).
    """

    def __init__(self, clock, histogram: Histogram, interval: float = LAG_INTERVAL, window: float = LAG_WINDOW):
        self.clock = clock
        self.histogram = histogram
        self.interval = interval
        self.window = window
        self._recent: list[tuple[float, float]] = []  # (when, lag), newest last
        self._call = None
        self._due = 0.0

    def start(self) -> None:
        self._schedule()

    def stop(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def _schedule(self) -> None:
        self._due = self.clock.seconds() + self.interval
        self._call = self.clock.callLater(self.interval, self._fired)

    def _fired(self) -> None:
        now = self.clock.seconds()
        lag = max(0.0, now - self._due)
        self.histogram.observe(lag)
        self._recent.append((now, lag))
        while self._recent and self._recent[0][0] < now - self.window:
            self._recent.pop(0)
        self._schedule()

    def recent_max(self) -> float:
        """The worst lag (seconds) seen in the last ``window`` seconds."""
        now = self.clock.seconds()
        return max((lag for when, lag in self._recent if when >= now - self.window), default=0.0)


class NodeMetrics:
    """The metrics of one node: ``driver`` (Raft status and events), ``state``
    (ParkingState), ``peers`` (the PeerService's links), ``intake`` (FrameIntake,
    which this observes), ``lot_ids``."""

    def __init__(self, driver, state, peers, intake, lot_ids, registry: CollectorRegistry | None = None, clock=None):
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=False)
        r = self.registry
        self.leader_changes = Counter(
            "parkd_leader_changes", "Times this node saw a new leader (a new leader id or term)", registry=r
        )
        self.proposals = Counter(
            "parkd_proposals",
            "Frame results this node proposed or forwarded to the leader, by outcome",
            ["outcome"],
            registry=r,
        )
        self.frames_applied = Counter(
            "parkd_frames_applied", "Frames applied to this node's state machine, by lot", ["lot"], registry=r
        )
        self.frames_duplicate = Counter(
            "parkd_frames_duplicate", "Committed frames that were already applied (retries)", ["lot"], registry=r
        )
        self.frames_rejected = Counter(
            "parkd_frames_rejected", "Committed frames the state machine refused, by reason", ["reason"], registry=r
        )
        self.ack_latency = Histogram(
            "parkd_ack_latency_seconds",
            "From receiving a camera's frame to acknowledging it (committed and applied here)",
            buckets=ACK_BUCKETS,
            registry=r,
        )
        self.commit_duration = Histogram(
            "parkd_sqlite_commit_seconds",
            "Duration of one Raft storage transaction (entries and hard state, fsynced)",
            buckets=COMMIT_BUCKETS,
            registry=r,
        )
        self.reads = Counter(
            "parkd_http_reads", "HTTP API reads by consistency and outcome", ["consistency", "outcome"], registry=r
        )
        self.read_duration = Histogram(
            "parkd_http_read_index_seconds",
            "Time a linearizable HTTP read waited for its read index and the local apply",
            buckets=READ_BUCKETS,
            registry=r,
        )
        self.reactor_lag = ReactorLag(
            clock if clock is not None else _reactor(),
            Histogram("parkd_reactor_lag_seconds", "How late a 50 ms timer fired: stalls of the reactor thread",
                      buckets=LAG_BUCKETS, registry=r),
        )  # fmt: skip
        self.retention_rows = Counter(
            "parkd_retention_rows_trimmed", "Rows (frames and trend buckets) retention deleted", registry=r
        )
        self.retention_seconds = Histogram(
            "parkd_retention_seconds", "Duration of one retention batch (a bounded delete on the reactor thread)",
            buckets=TRIM_BUCKETS, registry=r,
        )  # fmt: skip
        # {accepted: its child}, looked up once: proposed() runs per frame
        self._proposal_outcomes = {accepted: self.proposals.labels("accepted" if accepted else "no_leader")
                                   for accepted in (True, False)}  # fmt: skip
        for lot in lot_ids:
            self.frames_applied.labels(lot)
        self._last_leader: tuple[int | None, int] | None = None
        r.register(NodeCollector(driver, state, peers, intake))
        driver.subscribe(self._leader_changed, LeaderChanged)
        driver.subscribe(self._persisted, Persisted)
        intake.observe(self)

    def watch_disk(self, disk, alarms) -> None:
        """Also show ``disk`` (the node's DiskMonitor) and ``alarms`` (its Alarms)."""
        self.registry.register(DiskCollector(disk, alarms))

    def watch_reads(self, reads) -> None:
        """Also show how many read index requests ``reads`` (the node's ReadBarrier) made."""
        self.registry.register(ReadsCollector(reads))

    # -- driver events

    def _leader_changed(self, event: LeaderChanged) -> None:
        if event.leader_id is None:
            return
        seen = (event.leader_id, event.term)
        if seen != self._last_leader:
            self._last_leader = seen
            self.leader_changes.inc()

    def _persisted(self, event: Persisted) -> None:
        self.commit_duration.observe(event.seconds)

    # -- the FrameIntake's observer

    def proposed(self, accepted: bool) -> None:
        self._proposal_outcomes[accepted].inc()

    def acked(self, seconds: float) -> None:
        self.ack_latency.observe(seconds)

    def applied(self, results) -> None:
        """Count a batch's frames: one increment per counter and label, not per frame."""
        counts = collections.Counter()
        for r in results:
            if r.outcome is Outcome.APPLIED:
                counts[self.frames_applied, r.lot] += 1
            elif r.outcome is Outcome.DUPLICATE:
                counts[self.frames_duplicate, r.lot] += 1
            else:
                counts[self.frames_rejected, r.rejection.value if r.rejection else "undecodable"] += 1
        for (counter, label), n in counts.items():
            counter.labels(label).inc(n)

    # -- the housekeeping's observer

    def trim_step(self, step) -> None:
        self.retention_rows.inc(step.deleted)
        self.retention_seconds.observe(step.seconds)

    # -- the API's reads

    def read(self, consistency: str, outcome: str, seconds: float) -> None:
        self.reads.labels(consistency, outcome).inc()
        if consistency == "linearizable" and outcome == "ok":
            self.read_duration.observe(seconds)


def _reactor():
    from twisted.internet import reactor

    return reactor


class MetricsResource(JsonResource):
    """``/metrics``: the node's registry in Prometheus text format, rendered in the reactor thread."""

    def __init__(self, metrics: NodeMetrics):
        super().__init__()
        self.metrics = metrics

    def render_GET(self, request):
        from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

        if request.postpath not in ([], [b""]):
            return not_found(request)
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode())
        request.setHeader(b"cache-control", b"no-store")
        return generate_latest(self.metrics.registry)


class DiskCollector:
    """The data dir's disk as the DiskMonitor last measured it, and the node's alarms (CONTRACT §10)."""

    def __init__(self, disk, alarms):
        self.disk = disk
        self.alarms = alarms

    def collect(self):
        disk, alarms = self.disk, self.alarms
        yield GaugeMetricFamily("parkd_db_bytes", "Size of this node's database: node.db and its WAL", disk.db_bytes)
        free = float("nan") if disk.free_bytes is None else disk.free_bytes
        yield GaugeMetricFamily("parkd_disk_free_bytes", "Free bytes on the data dir's filesystem", value=free)
        raised = GaugeMetricFamily("parkd_alarm", "1 while the alarm is raised on this node", labels=["name"])
        refused = CounterMetricFamily(
            "parkd_frames_refused", "New frames answered Unavailable because of an alarm", labels=["alarm"]
        )
        for name in sorted(set(KNOWN_ALARMS) | set(alarms.active())):
            raised.add_metric([name], int(alarms.is_raised(name)))
        for name, count in sorted(alarms.refused.items()):
            refused.add_metric([name], count)
        yield raised
        yield refused


class ReadsCollector:
    """The read barrier's requests: with ``parkd_http_reads_total``, how many reads one request served."""

    def __init__(self, reads):
        self.reads = reads

    def collect(self):
        yield CounterMetricFamily("parkd_read_index_requests", "Read index requests this node made (one per batch of "
                                  "linearizable reads, dissertation §6.4)", value=self.reads.requests)  # fmt: skip


class NodeCollector:
    """Gauges computed from the node's current state at every scrape."""

    def __init__(self, driver, state, peers, intake):
        self.driver = driver
        self.state = state
        self.peers = peers
        self.intake = intake

    def collect(self):
        core = self.driver
        yield GaugeMetricFamily("parkd_node_id", "This node's id", value=core.node_id)
        role = GaugeMetricFamily("parkd_role", "1 for this node's current Raft role", labels=["role"])
        for r in Role:
            role.add_metric([r.value], 1 if core.role is r else 0)
        yield role
        is_leader = int(core.role is Role.LEADER)
        yield GaugeMetricFamily("parkd_is_leader", "1 while this node is the leader", value=is_leader)
        yield GaugeMetricFamily("parkd_term", "Current Raft term", value=core.term)
        yield GaugeMetricFamily(
            "parkd_leader_id", "The leader this node knows of (0: none)", value=core.leader_id or 0
        )
        yield GaugeMetricFamily("parkd_commit_index", "Highest log index known committed", value=core.commit_index)
        yield GaugeMetricFamily(
            "parkd_applied_index", "Highest log index applied to the parking state", value=self.state.last_applied()
        )
        yield GaugeMetricFamily(
            "parkd_last_log_index", "Index of the last entry in this node's log", value=core.last_index
        )
        yield from self._peers(core)
        cameras = self.intake.cameras
        yield GaugeMetricFamily("parkd_connected_cameras", "Cameras connected to this node's client port", cameras)
        free = GaugeMetricFamily("parkd_lot_free", "Free spaces per lot (NaN until a camera reported)", labels=["lot"])
        capacity = GaugeMetricFamily("parkd_lot_capacity", "Spaces per lot", labels=["lot"])
        for lot in self.state.lots():
            free.add_metric([lot.id], float("nan") if lot.free is None else lot.free)
            capacity.add_metric([lot.id], lot.capacity)
        yield free
        yield capacity

    def _peers(self, core):
        match = GaugeMetricFamily(
            "parkd_peer_match_index", "Leader only: highest log index known replicated on each member", labels=["peer"]
        )
        lag = GaugeMetricFamily(
            "parkd_peer_replication_lag", "Leader only: entries each member is behind the leader's log", labels=["peer"]
        )
        for peer, index in sorted(core.match_indexes.items()):
            match.add_metric([str(peer)], index)
            lag.add_metric([str(peer)], max(0, core.last_index - index))
        yield match
        yield lag
        # Replication progress: the core's own bookkeeping (leader only).
        progress = core.progress
        next_index = GaugeMetricFamily(
            "parkd_peer_next_index", "Leader only: next log index to send to each peer", labels=["peer"]
        )
        inflight = GaugeMetricFamily(
            "parkd_peer_inflight_messages", "Leader only: unacknowledged AppendEntries per peer", labels=["peer"]
        )
        state = GaugeMetricFamily(
            "parkd_peer_progress_state",
            "Leader only: 1 for each peer's replication state (probe, replicate, snapshot)",
            labels=["peer", "state"],
        )
        for peer, pr in sorted(progress.items()):
            next_index.add_metric([str(peer)], pr.next)
            inflight.add_metric([str(peer)], len(pr.inflight))
            for option in ProgressState:
                state.add_metric([str(peer), str(option.value)], int(option is pr.state))
        yield next_index
        yield inflight
        yield state
        links = self.peers.links
        connected = GaugeMetricFamily("parkd_peer_connected", "1 while the connection to a peer is up", labels=["peer"])
        sent = CounterMetricFamily("parkd_peer_messages_sent", "Raft messages sent to each peer", labels=["peer"])
        dropped = CounterMetricFamily(
            "parkd_peer_messages_dropped",
            "Raft messages dropped because the peer was down or its socket buffer full",
            labels=["peer"],
        )
        for peer, link in sorted(links.items()):
            connected.add_metric([str(peer)], int(link.proto is not None))
            sent.add_metric([str(peer)], link.sent)
            dropped.add_metric([str(peer)], link.dropped)
        yield connected
        yield sent
        yield dropped
