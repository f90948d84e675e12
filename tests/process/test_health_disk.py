"""Health and a full disk on real processes (issue 13, process tests 3 and 4; CONTRACT §10).

Each node's data dir is a small tmpfs mounted by the test (tests run as root)
and unmounted in a finally.  A ballast file takes the space away and gives it
back.  Every wait is a bounded condition; at the end every acked frame must be
applied exactly once on every node.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

import disks
from disks import MIB, take_space
from parkd.chaos import checker
from parkd.launcher import http_request, wait_for

pytestmark = [pytest.mark.slow]

DISK_MIB = 32  # each node's tmpfs
MIN_FREE_MIB = 8  # the nodes' --min-free-disk-mb


@pytest.fixture
def small_disks():
    """``mount(path)``: a DISK_MIB tmpfs at ``path``; every one is unmounted afterwards."""
    with disks.small_disks(DISK_MIB) as mount:
        yield mount


def readyz(cluster, node_id):
    """(status, document) of GET /readyz, with no client certificate; (None, None) if no answer."""
    try:
        status, _, body = http_request(cluster.config, node_id, "/readyz", timeout=2.0)
    except OSError:
        return None, None
    return status, json.loads(body)


def refused(cluster, node_id):
    """parkd_frames_refused_total{alarm="nospace"} of a node."""
    status, _, body = http_request(cluster.config, node_id, "/metrics", timeout=2.0)
    assert status == 200
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            if sample.name == "parkd_frames_refused_total" and sample.labels == {"alarm": "nospace"}:
                return sample.value
    raise AssertionError("no parkd_frames_refused_total{alarm=nospace}")


def acks(cluster):
    """Every frame_acked event of every camera."""
    return [e for c in cluster.cameras.values() for e in checker.read_events(c.json_path, "frame_acked")]


def test_3_a_cluster_whose_disks_run_low_refuses_frames_and_drains_the_outboxes_when_space_returns(
    make_cluster, small_disks
):
    cluster = make_cluster(node_args=("--min-free-disk-mb", str(MIN_FREE_MIB)))
    disks = {n: small_disks(os.path.join(cluster.workdir, f"node-{n}")) for n in cluster.nodes}
    try:
        cluster.start_all()
        cluster.leader()
        cluster.wait_acks(20)
        # Ready before the disks run low (a follower may trail the leader's commit for a moment).
        wait_for(lambda: all(readyz(cluster, n)[0] == 200 for n in cluster.nodes), 15, "every node ready")

        # Similar disks run low together: every node raises nospace and refuses new frames.
        ballasts = [take_space(path, leave=MIN_FREE_MIB * MIB // 2) for path in disks.values()]
        for n in cluster.nodes:
            status, doc = cluster.wait(lambda n=n: (lambda r: r if r[0] == 503 else None)(readyz(cluster, n)), 10,
                                       f"/readyz of node {n} to say 503")  # fmt: skip
            assert doc["checks"]["alarms"] == ["nospace"] and doc["failing"] == ["alarms"]
            assert cluster.status(n)["alarms"] == ["nospace"]
        all_raised = time.time()
        cluster.wait(lambda: sum(refused(cluster, n) for n in cluster.nodes) >= 10, 20, "10 frames refused")
        for camera in cluster.cameras.values():
            cluster.wait(lambda c=camera: "nospace alarm on node" in c.log_text(), 20, f"{camera.name} refused")
        assert all(d.alive() for d in cluster.nodes.values())
        for n in cluster.nodes:
            raised = checker.read_events(cluster.nodes[n].json_path, "alarm_raised")
            assert [e["name"] for e in raised] == ["nospace"]

        # Space returns: the alarms clear by themselves and the outboxes drain, in order, once.
        for ballast in ballasts:
            os.unlink(ballast)
        cleared = time.time()
        for n in cluster.nodes:
            cluster.wait(lambda n=n: readyz(cluster, n)[0] == 200, 10, f"/readyz of node {n} to say 200")
            cleared_events = checker.read_events(cluster.nodes[n].json_path, "alarm_cleared")
            assert [e["name"] for e in cleared_events] == ["nospace"]
        during = [e for e in acks(cluster) if all_raised < e["log_time"] < cleared]
        assert all(e["captured_at"] < all_raised for e in during), "a frame was taken while every node refused"
        def acked_since_cleared(camera):
            return any(e["captured_at"] > cleared for e in checker.read_events(camera.json_path, "frame_acked"))

        cluster.wait(lambda: all(acked_since_cleared(c) for c in cluster.cameras.values()), 30,
                     "every camera acked after the space returned")  # fmt: skip
        for camera in cluster.cameras.values():
            camera.stop()
        acked, _ = cluster.check_exactly_once()
        for camera_id in cluster.cameras:
            seqs = sorted(seq for c, _incarnation, seq in acked if c == camera_id)
            assert seqs == list(range(1, seqs[-1] + 1)), f"camera {camera_id}'s outbox did not drain in order"
        held = [e for e in acks(cluster) if all_raised < e["captured_at"] < cleared]
        assert held, "no frame captured while the alarm held was acked afterwards"
        assert all(d.alive() for d in cluster.nodes.values())
    finally:
        cluster.stop_all()


@pytest.mark.parametrize("role", ["follower", "leader"])
def test_3_a_node_whose_disk_fills_up_stalls_loses_nothing_and_catches_up(make_cluster, small_disks, role):
    """The disk fills anyway (SQLITE_FULL in the Raft write): no crash, no loss, a critical line, then resume.

    A stalled leader sends no more heartbeats: the others elect a new one and go on.
    While the disk is still full the victim may resume for a while: once the
    checkpoint thread copied its WAL into node.db, the next write reuses the
    WAL file's blocks, which needs no new space.
    """
    cluster = make_cluster(node_args=("--min-free-disk-mb", str(MIN_FREE_MIB)))
    disks = {n: small_disks(os.path.join(cluster.workdir, f"node-{n}")) for n in cluster.nodes}
    try:
        cluster.start_all()
        leader = cluster.leader()
        cluster.wait_acks(20)
        victim = leader if role == "leader" else next(n for n in cluster.nodes if n != leader)
        ballast = take_space(disks[victim], leave=0)
        node = cluster.nodes[victim]
        cluster.wait(lambda: "disk full: node" in node.log_text(), 20, f"node {victim} to find its disk full")
        assert "could not write the Raft log" in node.log_text() or "could not apply" in node.log_text()
        full = time.time()
        if role == "leader":
            cluster.leader(among=[n for n in cluster.nodes if n != victim])
        cluster.wait(lambda: len([e for e in acks(cluster) if e["captured_at"] > full]) >= 30, 20,
                     "30 acks of frames captured after the disk filled")  # the other two carry on
        status, doc = readyz(cluster, victim)
        assert status == 503 and "nospace" in doc["checks"]["alarms"]
        assert node.alive()
        live = json.loads(http_request(cluster.config, victim, "/livez")[2])
        assert live["ok"] is True  # stalled or not, the process lives and answers

        os.unlink(ballast)
        cluster.wait(lambda: "disk writable again" in node.log_text(), 15, f"node {victim} to resume")
        cluster.wait(lambda: readyz(cluster, victim)[0] == 200, 15, f"node {victim} ready again")
        for camera in cluster.cameras.values():
            camera.stop()
        cluster.check_exactly_once()
        assert node.alive() and "storage failed" not in node.log_text()
        cluster.stop_all()
        with sqlite3.connect(cluster.db_path(victim)) as db:
            assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    finally:
        cluster.stop_all()


def test_4_readyz_is_503_on_a_node_cut_off_from_the_leader_and_200_again_after(make_cluster):
    cluster = make_cluster().start_all()
    leader = cluster.leader()
    cluster.wait_acks(10)
    # Frames may be acked before the new cluster's id is applied (the leader proposes it on
    # its next twice-a-second check): until then a node is not in good standing (CI saw it).
    cluster.wait_ready(timeout=10)
    for n in cluster.nodes:
        status, doc = readyz(cluster, n)
        assert status == 200 and doc["ok"] is True, doc
        assert doc["checks"]["leader"]["leader_id"] == leader
        assert doc["checks"]["applied"]["lag"] <= doc["checks"]["applied"]["ready_lag"]
    alone = next(n for n in cluster.nodes if n != leader)
    others = [n for n in cluster.nodes if n != alone]
    for n in others:
        cluster.nodes[n].signal(signal.SIGSTOP)
    try:
        status, doc = cluster.wait(lambda: (lambda r: r if r[0] == 503 else None)(readyz(cluster, alone)), 10,
                                   f"/readyz of node {alone} to say 503")  # fmt: skip
        assert doc["failing"] == ["leader"] and doc["checks"]["leader"]["leader_id"] is None
        assert http_request(cluster.config, alone, "/livez")[0] == 200  # alive, just not ready
    finally:
        for n in others:
            cluster.nodes[n].signal(signal.SIGCONT)
    cluster.wait(lambda: readyz(cluster, alone)[0] == 200, 15, f"/readyz of node {alone} to say 200 again")
    before = len(cluster.acked())
    cluster.wait_acks(10, since=before)
    for camera in cluster.cameras.values():
        camera.stop()
    cluster.check_exactly_once()
