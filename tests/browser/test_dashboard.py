"""The dashboard in headless Chromium against a live 3-node cluster with cameras.

Screenshots go to the test's temporary directory, and also to
``$PARKD_SCREENSHOTS`` when set (that is how docs/screenshots/ was made).
"""

from __future__ import annotations

import os
import re
import shutil
import time

import pytest

from parkd.launcher import get_json, node_url

pytestmark = [pytest.mark.process, pytest.mark.slow]

# Everything the page shows, read in one go.
PAGE_STATE = """
const banner = document.getElementById("banner");
const cluster = document.getElementById("cluster");
return {
  state: document.body.dataset.state,
  banner: banner.hidden ? null : banner.textContent,
  leader: cluster.dataset.leader === undefined ? null : cluster.dataset.leader,
  node: cluster.dataset.node || null,
  lag: document.getElementById("cluster-lag").textContent,
  memberLinks: [...document.querySelectorAll("#members a")].map((a) => a.href),
  lots: Object.fromEntries([...document.querySelectorAll("#lots .lot")].map((card) => [
    card.dataset.lot,
    {free: card.querySelector(".free").textContent,
     capacity: card.querySelector(".capacity").textContent.replace("/", "").trim(),
     level: card.dataset.level,
     trend: Number(card.querySelector("svg.trend").dataset.points)},
  ])),
  cameras: Object.fromEntries([...document.querySelectorAll("#cameras tbody tr")].map((row) => [
    row.dataset.camera,
    {lot: row.cells[1].textContent, free: row.cells[2].textContent, last_seq: row.cells[3].textContent,
     status: row.cells[5].textContent},
  ])),
};
"""


def api(cluster, node_id, path):
    return get_json(cluster.config, node_id, path, timeout=5)


def expected_from_api(cluster, node_id):
    """The lot cards and camera rows the page should show, from the API (as text)."""
    lots = api(cluster, node_id, "/api/v1/lots")
    cameras = api(cluster, node_id, "/api/v1/cameras")
    if lots is None or cameras is None:
        return None
    return (
        {lot["id"]: (str(lot["free"]), str(lot["capacity"])) for lot in lots["lots"]},
        {str(c["camera_id"]): (c["lot"], str(c["free"]), str(c["last_seq"]),
                               c["status"] if c["enabled"] else "disabled") for c in cameras["cameras"]},
    )  # fmt: skip



def shown(page):
    return (
        {lot: (v["free"], v["capacity"]) for lot, v in page["lots"].items()},
        {cam: (v["lot"], v["free"], v["last_seq"], v["status"]) for cam, v in page["cameras"].items()},
    )


def screenshot(browser, tmp_path, name):
    path = tmp_path / name
    assert browser.save_screenshot(str(path)), f"could not save {path}"
    extra = os.environ.get("PARKD_SCREENSHOTS")
    if extra:
        os.makedirs(extra, exist_ok=True)
        shutil.copy(path, os.path.join(extra, name))
    return path


def test_dashboard_shows_the_api_values_and_recovers_from_a_leader_kill(browser, cluster, tmp_path):
    cluster.start_nodes()
    for camera_id, lot in enumerate(("north", "south", "east"), start=1):
        cluster.add_camera(camera_id, lot)
    leader = cluster.leader()
    cluster.wait_acks(15)
    follower = next(i for i in cluster.nodes if i != leader)
    browser.get(node_url(cluster.config, follower, "/"))
    page = lambda: browser.execute_script(PAGE_STATE)  # noqa: E731

    # A healthy cluster: every lot has a card with a value, a trend and a colour; no banner.
    def healthy():
        p = page()
        ready = p["state"] == "ok" and len(p["lots"]) == 3 and len(p["cameras"]) == 3
        ready = ready and all(v["free"] != "–" and v["trend"] > 0 for v in p["lots"].values())
        return p if ready else None

    p = cluster.wait(healthy, 20, "the dashboard to show three lots and cameras")
    assert p["banner"] is None and p["leader"] == str(leader) and p["node"] == str(follower)
    assert {v["level"] for v in p["lots"].values()} <= {"ok", "low", "full"}
    assert {v["status"] for v in p["cameras"].values()} == {"active"}
    assert re.fullmatch(r"\d+(\.\d)? ms", p["lag"]), p["lag"]  # the node's reactor lag
    scheme = node_url(cluster.config, follower, "/").split(":")[0]
    assert len(p["memberLinks"]) == 3 and all(link.startswith(scheme + "://") for link in p["memberLinks"])
    screenshot(browser, tmp_path, "dashboard.png")

    # Freeze the values (stop the cameras): the page must show exactly what the API gives.
    for camera in cluster.cameras.values():
        camera.stop()

    # A camera is stale once its last frame is 3 × 0.2 s old (CONTRACT §5).  The last
    # camera stopped may have captured a frame well under 0.6 s before the page and the
    # API first agree (a quick stop, a page refresh just then), so wait for staleness
    # too rather than assume that much time has passed.
    def matches_api_all_stale():
        want = expected_from_api(cluster, follower)
        if want is None or shown(page()) != want:
            return None
        return want if {status for _, _, _, status in want[1].values()} == {"stale"} else None

    lots, cameras = cluster.wait(matches_api_all_stale, 15, "the page to show the API's values, every camera stale")
    assert set(lots) == {"north", "south", "east"} and set(cameras) == {"1", "2", "3"}

    # An operator disables camera 2 (CONTRACT §9): the page says so, then enabled again.
    assert "disabled" in cluster.parkctl("camera", "disable", 2)

    def shows_disabled():
        want = expected_from_api(cluster, follower)
        return want if want is not None and shown(page()) == want and want[1]["2"][3] == "disabled" else None

    cluster.wait(shows_disabled, 15, "the page to show camera 2 disabled")
    screenshot(browser, tmp_path, "dashboard-camera-disabled.png")
    assert "enabled" in cluster.parkctl("camera", "enable", 2)

    # Cameras again, then kill the leader: the page must follow the new leader and new values.
    for camera_id, lot in enumerate(("north", "south", "east"), start=1):
        cluster.add_camera(camera_id, lot)
    before = {cam: int(v["last_seq"]) for cam, v in page()["cameras"].items()}
    cluster.nodes[leader].kill()
    killed_at = time.monotonic()
    caught = None

    def recovered():
        nonlocal caught
        p = page()
        if p["state"] == "no-leader" and caught is None:
            caught = screenshot(browser, tmp_path, "dashboard-leader-change.png")
        new_leader = p["leader"] not in (None, "", str(leader))
        fresh = all(int(v["last_seq"]) > before[cam] for cam, v in p["cameras"].items())
        return p if p["state"] == "ok" and new_leader and fresh and p["banner"] is None else None

    p = cluster.wait(recovered, 30, "the dashboard to recover after the leader was killed")
    new_leader = int(p["leader"])
    print(f"dashboard recovered {time.monotonic() - killed_at:.1f} s after the leader kill; "
          f"banner seen meanwhile: {caught is not None}")  # fmt: skip
    assert shown(p)[0].keys() == {"north", "south", "east"}
    screenshot(browser, tmp_path, "dashboard-after-failover.png")

    # Leave the page's node without a majority: the banner must say there is no leader.
    other = next(i for i in cluster.nodes if i not in (leader, follower))
    cluster.nodes[other].kill()

    def banner():
        p = page()
        return p if p["state"] == "no-leader" and p["banner"] else None

    p = cluster.wait(banner, 20, "the no-leader banner")
    assert "leader" in p["banner"].lower() and "stale" in p["banner"]
    assert all(v["free"] != "–" for v in p["lots"].values())  # last known values stay visible
    no_leader = screenshot(browser, tmp_path, "dashboard-no-leader.png")
    if caught is None and os.environ.get("PARKD_SCREENSHOTS"):
        shutil.copy(no_leader, os.path.join(os.environ["PARKD_SCREENSHOTS"], "dashboard-leader-change.png"))
    assert new_leader in cluster.nodes


ALARMS = """
const alarms = document.getElementById("alarms");
return {hidden: alarms.hidden, names: alarms.dataset.alarms || "", text: alarms.textContent};
"""


def test_dashboard_shows_a_nodes_nospace_alarm_until_it_clears(browser, tmp_path, cluster_pki):
    """CONTRACT §10: the dashboard of a node low on disk says so in a banner, which goes once space returns."""
    from harness import Cluster

    from disks import MIB, small_disks, take_space

    (tmp_path / "cluster").mkdir()
    cluster = Cluster(tmp_path / "cluster", interval=0.2, pki=cluster_pki.dir, node_args=("--min-free-disk-mb", "8"))
    with small_disks(32) as mount:
        disk = mount(os.path.join(cluster.workdir, "node-1"))
        try:
            cluster.start_all()
            cluster.leader()
            cluster.wait_acks(5)
            browser.get(node_url(cluster.config, 1, "/"))
            alarms = lambda: browser.execute_script(ALARMS)  # noqa: E731
            cluster.wait(lambda: browser.execute_script(PAGE_STATE)["state"] == "ok", 20, "the page to load")
            assert alarms()["hidden"] is True
            ballast = take_space(disk, leave=4 * MIB)
            shown = cluster.wait(lambda: (lambda a: a if not a["hidden"] else None)(alarms()), 15, "the alarm banner")
            assert shown["names"] == "nospace" and "node 1" in shown["text"] and "disk" in shown["text"]
            screenshot(browser, tmp_path, "dashboard-nospace.png")
            os.unlink(ballast)
            cluster.wait(lambda: alarms()["hidden"], 15, "the alarm banner to go")
        finally:
            cluster.stop_all()
