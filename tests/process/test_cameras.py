"""Camera incarnations and the camera registry on real processes (CONTRACT §9).

A 3-node TLS cluster with a camera per lot.  A camera whose state dir is lost
starts again at seq 1 as a new incarnation and is applied from its first frame;
a camera an operator disables keeps its frames and sends them, exactly once,
when enabled again.
"""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import time

import pytest

from harness import Cluster
from parkd.chaos import checker
from parkd.launcher import wait_for

pytestmark = [pytest.mark.process]


@pytest.fixture
def cluster(tmp_path, cluster_pki):
    made = Cluster(tmp_path, pki=cluster_pki.dir, interval=0.2)
    try:
        made.start_all()
        made.leader()
        made.wait_acks(6)
        yield made
    finally:
        made.stop_all()


def acks_of(cluster, camera_id) -> list[dict]:
    return checker.read_events(cluster.cameras[camera_id].json_path, "frame_acked")


def outbox_size(cluster, camera_id) -> int:
    path = os.path.join(cluster.workdir, f"camera-{camera_id}", "outbox.db")
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as db:
        return db.execute("SELECT count(*) FROM frames").fetchone()[0]


def change_index(output: str) -> int:
    """The log index parkctl reports for a registry change ("camera 2 disabled (index 57): ...")."""
    return int(re.search(r"\(index (\d+)\)", output).group(1))


def test_a_camera_with_a_fresh_state_dir_is_applied_from_its_first_frame(cluster):
    """A replaced SD card: seq 1 again, a new incarnation, new entries, and the lot moves."""
    camera = cluster.cameras[1]
    cluster.wait(lambda: len(acks_of(cluster, 1)) >= 10, 20, "camera 1 to pass seq 10")
    camera.stop()
    old = acks_of(cluster, 1)
    old_incarnation, old_last_index = old[-1]["incarnation"], max(e["index"] for e in old)
    shutil.rmtree(os.path.join(cluster.workdir, "camera-1"))  # the state dir is lost

    cluster.add_camera(1, "north")

    def new_acks():
        new = [e for e in acks_of(cluster, 1) if e["incarnation"] != old_incarnation]
        return new if len(new) >= 5 else None

    new = cluster.wait(new_acks, 20, "five acks of camera 1's new incarnation")
    camera.stop()
    new = [e for e in acks_of(cluster, 1) if e["incarnation"] != old_incarnation]
    assert [e["seq"] for e in new] == list(range(1, len(new) + 1))
    # Applied as new entries from its first frame, not answered with the old frames' results.
    assert min(e["index"] for e in new) > old_last_index

    leader = cluster.leader()
    state = cluster.get(leader, "/api/v1/cameras/1")
    assert state["incarnation"] == new[-1]["incarnation"] and state["last_seq"] == new[-1]["seq"]
    assert state["free"] == new[-1]["free"]
    north = next(lot for lot in cluster.get(leader, "/api/v1/lots")["lots"] if lot["id"] == "north")
    assert north["free"] == new[-1]["free"]  # camera 1 is the lot's only camera: the lot follows it

    acked, _ = cluster.check_exactly_once()
    assert {incarnation for camera_id, incarnation, _ in acked if camera_id == 1} == {old_incarnation, new[-1]["incarnation"]}


def test_a_disabled_camera_keeps_its_frames_and_sends_them_once_enabled(cluster):
    camera = cluster.cameras[2]
    disabled_at = time.time()
    disabled = change_index(cluster.parkctl("camera", "disable", 2))
    wait_for(lambda: "is refused by the cluster" in camera.log_text(), 10, "camera 2 to log that it is refused")
    listed = cluster.parkctl("camera", "list")
    assert re.search(r"^\s*2\s.*\bdisabled\b", listed, re.M), listed

    # The camera keeps capturing into its outbox; nothing of it is applied meanwhile.
    wait_for(lambda: outbox_size(cluster, 2) >= 10, 20, "camera 2's outbox to hold 10 frames")
    others = len(cluster.acked())
    cluster.wait_acks(5, since=others, timeout=15)  # the other cameras are not disturbed
    enabled_at = time.time()
    enabled = change_index(cluster.parkctl("camera", "enable", 2))

    def drained():
        late = [e for e in acks_of(cluster, 2) if e["captured_at"] > disabled_at + 1 and e["log_time"] > enabled_at]
        return late if len(late) >= 10 and outbox_size(cluster, 2) <= 2 else None

    late = cluster.wait(drained, 30, "camera 2's kept frames to be acked after enabling")
    assert all(e["index"] > enabled for e in late)
    leader = cluster.leader()
    for node_id in cluster.nodes:
        frames = checker.read_frames(cluster.db_path(node_id))
        applied_while_disabled = [k for k, (index, _) in frames.items() if k[0] == 2 and disabled < index < enabled]
        assert applied_while_disabled == [], f"node {node_id}"
    assert cluster.get(leader, "/api/v1/cameras/2")["enabled"] is True
    cluster.check_exactly_once()
