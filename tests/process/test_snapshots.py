"""Snapshots, compaction and planned restarts on real processes (issue 6).

Small thresholds (a snapshot every 60 entries, 10 kept below it) make a
follower that was down for a few seconds too far behind for the log, so it
must come back through InstallSnapshot.
"""

import signal
import time

from prometheus_client.parser import text_string_to_metric_families

from parkd.launcher import http_request

SNAPSHOT_ENTRIES = 60
SMALL_SNAPSHOTS = ("--snapshot-entries", str(SNAPSHOT_ENTRIES), "--snapshot-margin", "10")


def start(make_cluster, **kwargs):
    return make_cluster(**kwargs).start_all()


def test_follower_behind_the_compacted_log_catches_up_by_snapshot(make_cluster):
    cluster = start(make_cluster, node_args=SMALL_SNAPSHOTS)
    leader = cluster.leader()
    follower = next(n for n in cluster.nodes if n != leader)
    cluster.wait_acks(10)
    cluster.nodes[follower].kill()
    killed_at = len(cluster.acked())
    # Wait until the leader has compacted past what the follower holds.
    cluster.wait(lambda: len(cluster.events(cluster.nodes[leader], "snapshot_taken")) >= 2, 60, "two snapshots")
    cluster.wait_acks(20, since=killed_at)
    cluster.restart_node(follower)
    cluster.wait(lambda: "installed snapshot" in cluster.nodes[follower].log_text(), 30, "the snapshot to be installed")
    before = len(cluster.acked())
    cluster.wait_acks(20, since=before)
    for camera in cluster.cameras.values():
        camera.stop()
    acked, frames = cluster.check_converged(follower, leader)
    assert frames[follower] == frames[leader]


def latest_snapshot(cluster, node_id):
    """The index of the last snapshot ``node_id`` took (0: none)."""
    return max((e["index"] for e in cluster.events(cluster.nodes[node_id], "snapshot_taken")), default=0)


def commit_a_log_tail(cluster, frames=10, slack=10, rounds=3):
    """With the cameras stopped: camera 1 sends ``frames`` frames that every node
    commits and applies above its latest snapshot, without taking another.

    A node snapshots once its log holds more than SNAPSHOT_ENTRIES beyond its last
    snapshot; when a node is too close to that, camera 1 first runs until every
    node took one more snapshot.
    """
    for _ in range(rounds):
        cluster.check_exactly_once()  # every acked frame applied everywhere
        snapshots = {n: latest_snapshot(cluster, n) for n in cluster.nodes}
        behind = max(cluster.status(n)["last_applied"] - snapshots[n] for n in cluster.nodes)
        camera = cluster.cameras[1]
        since = len(cluster.acked())
        camera.start()
        if behind + frames + slack <= SNAPSHOT_ENTRIES:
            cluster.wait_acks(frames, since=since)
            camera.stop()
            return snapshots
        cluster.wait(lambda: all(latest_snapshot(cluster, n) > snapshots[n] for n in cluster.nodes), 60,
                     "one more snapshot on every node")  # fmt: skip
        camera.stop()
    raise AssertionError(f"no room for {frames} entries above the snapshots in {rounds} rounds")


def test_restart_from_snapshot_plus_log_recovers_exactly(make_cluster):
    """A restart recovers the snapshot and the committed log after it: the log tail
    is still there (last and commit index), its frames too, and the cluster goes on."""
    cluster = start(make_cluster, node_args=SMALL_SNAPSHOTS)
    cluster.leader()
    cluster.wait(lambda: all(cluster.events(n, "snapshot_taken") for n in cluster.nodes.values()), 60,
                 "a snapshot on every node")  # fmt: skip
    for camera in cluster.cameras.values():
        camera.stop()
    snapshots = commit_a_log_tail(cluster, frames=10)
    before, frames_before = cluster.check_exactly_once()
    status_before = {n: cluster.status(n) for n in cluster.nodes}
    for node_id, snapshot in snapshots.items():
        latest = latest_snapshot(cluster, node_id)
        assert latest == snapshot, f"node {node_id} took a snapshot at {latest} above {snapshot}: no log tail"
        tail = [key for key, (index, _) in frames_before[node_id].items() if index > snapshot]
        assert len(tail) >= 10, f"node {node_id}: {len(tail)} frames above its snapshot at {snapshot}"
    codes = cluster.stop_all()
    assert set(codes.values()) == {-signal.SIGTERM}
    cluster.start_nodes()
    cluster.leader()
    for node_id, old in status_before.items():
        new = cluster.status(node_id)
        assert new["last_index"] >= old["last_index"] and new["commit_index"] >= old["commit_index"], (old, new)
        assert new["last_applied"] >= old["last_applied"], (old, new)
    after, frames_after = cluster.check_exactly_once()
    for node_id in cluster.nodes:
        assert frames_after[node_id] == frames_before[node_id]
    # New frames are committed after the recovered log, and applied once everywhere.
    since = len(after)
    cluster.cameras[2].start()
    cluster.wait_acks(5, since=since)
    cluster.cameras[2].stop()
    acked, _ = cluster.check_exactly_once()
    assert len(acked) >= since + 5


def peer_links(cluster, node_id):
    """{peer: connected} from a node's parkd_peer_connected metric, or None if it does not answer."""
    try:
        _, _, body = http_request(cluster.config, node_id, "/metrics")
    except OSError:
        return None
    text = body.decode()
    return {
        int(s.labels["peer"]): s.value == 1
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "parkd_peer_connected"
    }


def settle(cluster):
    """One agreed leader, and every node connected to every other (what a rolling restart waits for).

    A node restarted a moment ago agrees on the leader at once, but the other nodes'
    links to it come back only when their reconnect backoff (ClientService: up to
    1 s plus up to 1 s of jitter) next fires.  A leader stopped before that may hand
    over to a node that cannot reach the restarted one yet: without a majority it
    steps down and an election follows (1.5-2 s without acks on a loaded machine).
    That is a restart not yet finished, not the handover this test measures.
    """
    cluster.leader()

    def connected():
        for node_id in cluster.nodes:
            links = peer_links(cluster, node_id)
            if links is None or not all(links.get(peer) for peer in cluster.nodes if peer != node_id):
                return False
        return True

    cluster.wait(connected, 20, "every node connected to every other")
    return cluster.leader()


def test_rolling_restart_with_sigterm_loses_nothing_and_measures_the_gap(make_cluster):
    cluster = start(make_cluster, interval=0.05)
    cluster.leader()
    cluster.wait_acks(20)
    started = time.time()
    for node_id in list(cluster.nodes):
        settle(cluster)  # a settled cluster before each planned stop
        was_leader = cluster.status(node_id)["role"] == "leader"
        cluster.nodes[node_id].signal(signal.SIGTERM)
        assert cluster.nodes[node_id].wait(30) == -signal.SIGTERM
        if was_leader:
            assert cluster.events(cluster.nodes[node_id], "leadership_transferred"), "the leader stopped without handing over"
        before = len(cluster.acked())
        cluster.wait_acks(10, since=before)
        cluster.restart_node(node_id)
    cluster.wait_acks(10, since=len(cluster.acked()))
    for camera in cluster.cameras.values():
        camera.stop()
    acked, _ = cluster.check_exactly_once()
    times = sorted(e["log_time"] for c in cluster.cameras.values() for e in cluster.events(c, "frame_acked")
                   if e["log_time"] > started)  # fmt: skip
    gap = max(b - a for a, b in zip(times, times[1:]))
    print(f"\nrolling restart with SIGTERM: longest gap between acks {gap * 1000:.0f} ms")
    assert gap < 2.0
