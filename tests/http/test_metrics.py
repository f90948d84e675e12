"""``/metrics``: Prometheus text format, names and values, on a node double."""

from __future__ import annotations

import math

from prometheus_client.parser import text_string_to_metric_families

from parkd.http.metrics import NodeMetrics
from parkd.proto import parkd_pb2 as pb
from parkd.node import driver as events
from parkd.node.frames import MAX_HOLD_S
from parkd.raft.core import Role


def scrape(node) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} of one scrape."""
    r = node.get("/metrics")
    assert r.status == 200
    assert r.headers["content-type"].startswith("text/plain; version=")
    samples = {}
    for family in text_string_to_metric_families(r.body.decode()):
        for s in family.samples:
            samples[s.name, tuple(sorted(s.labels.items()))] = s.value
    return samples


def value(samples, name, **labels):
    return samples[name, tuple(sorted(labels.items()))]


class Conn:
    """The camera side of a client-port connection, as FrameIntake sees it."""

    def __init__(self, camera_id, lot):
        self.camera_id, self.lot = camera_id, lot
        self.incarnation = 0
        self.waiting_for = set()
        self.acks, self.errors, self.envelopes = [], [], []

    def cork(self):  # the real connection holds a batch's acks for one write
        pass

    def uncork(self):
        pass

    def send_ack(self, *args):
        self.acks.append(args)

    def send_error(self, *args, **kwargs):
        self.errors.append(args)

    def send_envelope(self, envelope):
        self.envelopes.append(envelope)


def submit(node, conn, seq, lot="north"):
    frame = pb.SubmitFrame(camera_id=conn.camera_id, lot=lot, seq=seq, captured_at=node.clock.seconds(), payload=b"x")
    node.intake.submit(conn, frame)


def test_raft_state_gauges(node):
    node.apply(7, 1, 40)
    s = scrape(node)
    assert value(s, "parkd_node_id") == 2
    assert value(s, "parkd_term") == 3
    assert value(s, "parkd_role", role="follower") == 1
    assert value(s, "parkd_role", role="leader") == 0
    assert value(s, "parkd_is_leader") == 0
    assert value(s, "parkd_leader_id") == 1
    assert value(s, "parkd_commit_index") == 1
    assert value(s, "parkd_applied_index") == 1
    assert value(s, "parkd_last_log_index") == 1
    assert value(s, "parkd_lot_free", lot="north") == 40
    assert math.isnan(value(s, "parkd_lot_free", lot="south"))
    assert value(s, "parkd_lot_capacity", lot="south") == 60
    assert ("parkd_peer_match_index", (("peer", "1"),)) not in s  # followers know no match index


def test_leader_match_index_and_replication_lag(node):
    node.core.role, node.core.leader_id = Role.LEADER, 2
    node.core.last_index = 10
    node.core.match_indexes = {1: 10, 2: 10, 3: 4}
    s = scrape(node)
    assert value(s, "parkd_is_leader") == 1
    assert value(s, "parkd_peer_match_index", peer="3") == 4
    assert value(s, "parkd_peer_replication_lag", peer="3") == 6
    assert value(s, "parkd_peer_replication_lag", peer="1") == 0


def test_leader_replication_progress(node):
    from parkd.raft.progress import Progress, ProgressState

    node.core.role, node.core.leader_id = Role.LEADER, 2
    probing, streaming = Progress(5, 64), Progress(9, 64)
    streaming.state = ProgressState.REPLICATE
    streaming.inflight.extend([7, 8])
    node.core.progress = {1: streaming, 3: probing}
    s = scrape(node)
    assert value(s, "parkd_peer_next_index", peer="1") == 9
    assert value(s, "parkd_peer_inflight_messages", peer="1") == 2
    assert value(s, "parkd_peer_progress_state", peer="1", state="replicate") == 1
    assert value(s, "parkd_peer_progress_state", peer="3", state="probe") == 1
    assert value(s, "parkd_peer_progress_state", peer="3", state="replicate") == 0


def test_peer_links(node):
    s = scrape(node)
    assert value(s, "parkd_peer_connected", peer="1") == 1
    assert value(s, "parkd_peer_connected", peer="3") == 0
    assert value(s, "parkd_peer_messages_sent_total", peer="1") == 10
    assert value(s, "parkd_peer_messages_dropped_total", peer="3") == 7


def test_leader_changes_count_new_leaders_and_terms(node):
    for role, leader, term in [
        (Role.FOLLOWER, 1, 3),
        (Role.FOLLOWER, None, 3),
        (Role.PRE_CANDIDATE, None, 3),
        (Role.FOLLOWER, 3, 4),
        (Role.FOLLOWER, 3, 4),  # the same leader in the same term again
    ]:
        node.driver.publish(events.LeaderChanged(role, leader, term))
    assert value(scrape(node), "parkd_leader_changes_total") == 2


def test_proposals_frames_applied_and_ack_latency(node):
    conn = Conn(7, "north")
    submit(node, conn, 1)
    submit(node, conn, 2)
    assert len(node.driver.proposed) == 2
    node.clock.advance(0.02)
    node.apply(7, 1, 40)
    node.clock.advance(0.2)
    node.apply(7, 2, 41)
    node.apply(7, 2, 41)  # a duplicate entry (a retry that was committed twice)
    node.core.leader_id = None
    submit(node, Conn(8, "south"), 1, lot="south")  # no leader: held, then refused, never proposed
    assert value(scrape(node), "parkd_proposals_total", outcome="no_leader") == 0  # held
    node.clock.advance(MAX_HOLD_S)
    assert len(conn.acks) == 2
    s = scrape(node)
    assert value(s, "parkd_proposals_total", outcome="accepted") == 2
    assert value(s, "parkd_proposals_total", outcome="no_leader") == 1
    assert value(s, "parkd_frames_applied_total", lot="north") == 2
    assert value(s, "parkd_frames_applied_total", lot="south") == 0
    assert value(s, "parkd_frames_duplicate_total", lot="north") == 1
    assert value(s, "parkd_ack_latency_seconds_count") == 2
    assert abs(value(s, "parkd_ack_latency_seconds_sum") - 0.24) < 1e-9
    assert value(s, "parkd_ack_latency_seconds_bucket", le="0.025") == 1
    assert value(s, "parkd_ack_latency_seconds_bucket", le="0.25") == 2


def test_a_batch_counts_each_frame_by_lot_and_outcome(node):
    node.apply_batch([(7, 1, 40, "north", None), (7, 2, 41, "north", None), (8, 1, 9, "south", None),
                      (7, 2, 41, "north", None), (9, 1, 999, "south", None)])  # a duplicate, then free > capacity
    s = scrape(node)
    assert value(s, "parkd_frames_applied_total", lot="north") == 2
    assert value(s, "parkd_frames_applied_total", lot="south") == 1
    assert value(s, "parkd_frames_duplicate_total", lot="north") == 1
    assert value(s, "parkd_frames_rejected_total", reason="bad_request") == 1


def test_a_frame_answered_at_once_is_not_timed(node):
    conn = Conn(7, "north")
    submit(node, conn, 1)
    node.apply(7, 1, 40)
    submit(node, conn, 1)  # a re-sent frame: acked from the history at once
    assert len(conn.acks) == 2
    assert value(scrape(node), "parkd_ack_latency_seconds_count") == 1


def test_sqlite_commit_durations_and_connected_cameras(node):
    node.driver.publish(events.Persisted(0.0004))
    node.driver.publish(events.Persisted(0.002))
    node.intake.cameras = 3
    s = scrape(node)
    assert value(s, "parkd_sqlite_commit_seconds_count") == 2
    assert value(s, "parkd_sqlite_commit_seconds_bucket", le="0.0005") == 1
    assert value(s, "parkd_connected_cameras") == 3


def test_http_reads_by_consistency(node):
    node.apply(7, 1, 40)
    node.get("/api/v1/lots?consistency=local")
    request = node.request("/api/v1/lots")
    node.clock.advance(0.003)
    node.read_state(node.core.asked[0], 1)
    assert request.response().status == 200
    node.core.leader_id = None
    node.get("/api/v1/lots")
    s = scrape(node)
    assert value(s, "parkd_http_reads_total", consistency="local", outcome="ok") == 1
    assert value(s, "parkd_http_reads_total", consistency="linearizable", outcome="ok") == 1
    assert value(s, "parkd_http_reads_total", consistency="linearizable", outcome="no_leader") == 1
    assert value(s, "parkd_http_read_index_seconds_count") == 1
    assert value(s, "parkd_http_read_index_seconds_bucket", le="0.0025") == 0


def test_each_node_has_its_own_registry(node):
    other = NodeMetrics(node.driver, node.state, node.peers, node.intake, ["north"])
    assert other.registry is not node.metrics.registry
    from prometheus_client import REGISTRY

    assert REGISTRY.get_sample_value("parkd_term") is None


def test_reactor_lag_is_how_late_a_frequent_timer_fires(node):
    """A stall of the reactor thread shows in the histogram and in /api/v1/cluster."""
    lag = node.metrics.reactor_lag
    lag.start()
    try:
        for _ in range(20):
            node.clock.advance(lag.interval)  # on time
        node.clock.advance(lag.interval + 0.75)  # the reactor was busy for 0.75 s
        s = scrape(node)
        assert value(s, "parkd_reactor_lag_seconds_count") == 21
        assert value(s, "parkd_reactor_lag_seconds_bucket", le="0.001") == 20
        assert value(s, "parkd_reactor_lag_seconds_bucket", le="0.5") == 20
        assert value(s, "parkd_reactor_lag_seconds_bucket", le="1.0") == 21
        assert node.get("/api/v1/cluster").json()["reactor_lag_ms"] == 750.0
        for _ in range(round(lag.window / lag.interval) + 1):  # on time again, until the stall leaves the window
            node.clock.advance(lag.interval)
        assert lag.recent_max() == 0.0
    finally:
        lag.stop()


def test_retention_batches_count_rows_and_time(node):
    from parkd.parking.retention import TrimStep

    node.metrics.trim_step(TrimStep(visited=2000, deleted=1500, seconds=0.012))
    node.metrics.trim_step(TrimStep(visited=40, deleted=30, seconds=0.0004, pending=False))
    s = scrape(node)
    assert value(s, "parkd_retention_rows_trimmed_total") == 1530
    assert value(s, "parkd_retention_seconds_count") == 2
    assert value(s, "parkd_retention_seconds_bucket", le="0.001") == 1
    assert value(s, "parkd_retention_seconds_bucket", le="0.02") == 2
