"""A follower holds its applies while nothing on it waits for them (parkd/node/driver.py).

On real processes: with one camera on the leader sending frame after frame, each
follower applies them in batches (one batch's ``frame_applied`` events share one
write, so one ``log_time``), while the leader applies each frame as it commits;
a camera on a follower is still acked without waiting for the hold, and a
linearizable read on a follower does not wait for it either.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time

import pytest

from parkd.node.service import FOLLOWER_APPLY_HOLD_S

pytestmark = [pytest.mark.process]


def load(cluster, node_id, first_camera, seconds=2.0) -> dict:
    """One camera, one frame in flight, talking to ``node_id`` only: the load generator's figures."""
    address = str(next(m.client for m in cluster.config.members if m.id == node_id))
    command = [sys.executable, "-m", "parkd.camera.loadgen", "--cluster", address, "--cameras", "1",
               "--first-camera", str(first_camera), "--window", "1", "--duration", str(seconds),
               "--warmup", "0.5", "--settle", "0.5", "--drain", "10"]  # fmt: skip
    out = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def applied_batches(cluster, node_id, camera_id) -> tuple[int, int]:
    """(frames of ``camera_id`` the node applied, distinct write times of their events)."""
    events = [e for e in cluster.events(cluster.nodes[node_id], "frame_applied") if e["camera_id"] == camera_id]
    return len(events), len({e["log_time"] for e in events})


def test_followers_apply_in_batches_and_nothing_waiting_waits_for_the_hold(make_cluster):
    cluster = make_cluster(tls=False)
    cluster.start_nodes()
    leader = cluster.leader()
    cluster.wait_ready()
    follower = next(n for n in cluster.initial if n != leader)

    on_leader = load(cluster, leader, first_camera=500)
    assert on_leader["acked"] > 100 and on_leader["errors"] == 0
    frames, writes = applied_batches(cluster, leader, 500)
    assert frames >= on_leader["acked"] and writes > frames * 0.8  # the leader: a frame per apply

    def follower_applied_all():
        return applied_batches(cluster, follower, 500)[0] == frames

    cluster.wait(follower_applied_all, 10, "the follower applied every frame")
    _, follower_writes = applied_batches(cluster, follower, 500)
    assert follower_writes < frames / 3, (frames, follower_writes)  # batches of several frames

    on_follower = load(cluster, follower, first_camera=501)
    assert on_follower["acked"] > 50 and on_follower["errors"] == 0
    assert on_follower["p50_ms"] < FOLLOWER_APPLY_HOLD_S * 1000 * 0.75, on_follower  # not held for the hold

    took = []
    for _ in range(15):
        started = time.perf_counter()
        assert cluster.get(follower, "/api/v1/lots") is not None
        took.append(time.perf_counter() - started)
    assert statistics.median(took) < FOLLOWER_APPLY_HOLD_S * 0.75, took
