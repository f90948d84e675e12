"""The JSON API of CONTRACT §6 on a node double: documents, parameters, errors, pagination."""

from __future__ import annotations

import io
import os
import re
from types import SimpleNamespace

import pytest

from parkd import __version__

from parkd.http.api import DEFAULT_LIMIT, MAX_LIMIT, camera_status
from parkd.http.site import web_dir
from parkd.node import driver as events
from parkd.node.cluster_identity import PROTOCOL_VERSION, ClusterIdentity
from parkd.node.identity import DataDirIdentity
from parkd.parking.codec import MemberDataDir, encode_member_data_dir
from parkd.raft import confchange
from parkd.raft.confchange import ConfChange, ConfChangeOp
from parkd.raft.core import Role
from parkd.raft.types import Entry, EntryKind, Membership

from httpnode import CLUSTER_ID, DATA_DIR_ID, INTERVAL, NOW


def local(path: str) -> str:
    return path + ("&" if "?" in path else "?") + "consistency=local"


# ------------------------------------------------------------------ documents


def test_lots_before_any_frame(node):
    r = node.get(local("/api/v1/lots"))
    assert r.status == 200
    assert r.headers["content-type"] == "application/json"
    assert r.json() == {
        "lots": [
            {"id": "north", "capacity": 100, "free": None, "cameras": 0, "updated_at": None},
            {"id": "south", "capacity": 60, "free": None, "cameras": 0, "updated_at": None},
        ]
    }


def test_the_access_log_has_a_line_only_for_failed_requests(node):
    """A line per read cost a tenth of its CPU and floods the log at thousands of reads/s."""
    node.site.logFile = log = io.StringIO()
    assert node.get(local("/api/v1/lots/north")).status == 200
    assert log.getvalue() == ""
    assert node.get(local("/api/v1/lots/west")).status == 404
    assert node.get(local("/api/v1/lots?colour=red")).status == 400
    lines = log.getvalue().splitlines()
    assert len(lines) == 2 and '"GET /api/v1/lots/west' in lines[0] and '" 404 ' in lines[0]


def test_lots_cameras_and_frames_after_frames(node):
    node.apply(7, 1, 40, at=NOW - 5)
    node.apply(7, 2, 41, at=NOW - 4)
    node.apply(8, 1, 12, lot="south", at=NOW - 100)
    lots = node.get(local("/api/v1/lots")).json()["lots"]
    assert lots == [
        {"id": "north", "capacity": 100, "free": 41, "cameras": 1, "updated_at": NOW - 4},
        {"id": "south", "capacity": 60, "free": 12, "cameras": 1, "updated_at": NOW - 100},
    ]
    cameras = node.get(local("/api/v1/cameras")).json()["cameras"]
    assert cameras == [
        {"camera_id": 7, "lot": "north", "free": 41, "last_seq": 2, "last_seen": NOW - 4, "status": "active",
         "incarnation": 0, "enabled": True},
        {"camera_id": 8, "lot": "south", "free": 12, "last_seq": 1, "last_seen": NOW - 100, "status": "stale",
         "incarnation": 0, "enabled": True},
    ]  # fmt: skip
    assert node.get(local("/api/v1/cameras?lot=south")).json()["cameras"] == cameras[1:]
    one = {**cameras[0], "incarnations": [{"incarnation": 0, "last_seq": 2, "superseded_index": None}]}
    assert node.get(local("/api/v1/cameras/7")).json() == one
    assert node.get(local("/api/v1/lots/south")).json() == lots[1]
    frames = node.get(local("/api/v1/cameras/7/frames")).json()
    assert frames == {
        "camera_id": 7,
        "incarnation": 0,
        "frames": [
            {"seq": 1, "incarnation": 0, "free": 40, "captured_at": NOW - 5, "index": 1},
            {"seq": 2, "incarnation": 0, "free": 41, "captured_at": NOW - 4, "index": 2},
        ],
        "next_since": None,
    }
    assert node.get(local("/api/v1/cameras/7/frames?since=1")).json()["frames"] == frames["frames"][1:]
    assert node.get(local("/api/v1/cameras/7/frames?since=2")).json()["frames"] == []


BIG = 2**64 - 1  # an incarnation beyond JavaScript's exact integers and SQLite's signed ones


def test_a_camera_with_a_new_state_dir_shows_its_new_incarnation_and_pages_each_one(node):
    for seq in (1, 2, 3):
        node.apply(7, seq, 10 + seq, at=NOW - 100 + seq)
    node.apply(7, 1, 50, at=NOW - 5, incarnation=BIG)  # the state dir was replaced: seq 1 again
    node.apply(7, 2, 51, at=NOW - 4, incarnation=BIG)
    camera = node.get(local("/api/v1/cameras/7")).json()
    assert (camera["incarnation"], camera["last_seq"], camera["free"]) == (BIG, 2, 51)
    assert camera["incarnations"] == [
        {"incarnation": 0, "last_seq": 3, "superseded_index": 4},
        {"incarnation": BIG, "last_seq": 2, "superseded_index": None},
    ]
    assert node.get(local("/api/v1/lots/north")).json()["free"] == 51
    current = node.get(local("/api/v1/cameras/7/frames")).json()
    assert current["incarnation"] == BIG and [(f["seq"], f["free"]) for f in current["frames"]] == [(1, 50), (2, 51)]
    assert {f["incarnation"] for f in current["frames"]} == {BIG}
    assert node.get(local(f"/api/v1/cameras/7/frames?incarnation={BIG}")).json() == current  # all 20 digits
    page = node.get(local("/api/v1/cameras/7/frames?incarnation=0&limit=2")).json()
    assert page["incarnation"] == 0 and [f["seq"] for f in page["frames"]] == [1, 2] and page["next_since"] == 2
    page = node.get(local("/api/v1/cameras/7/frames?incarnation=0&limit=2&since=2")).json()
    assert [f["seq"] for f in page["frames"]] == [3] and page["next_since"] is None
    r = node.get(local("/api/v1/cameras/7/frames?incarnation=5"))
    assert r.status == 404
    assert r.json() == {"error": f"camera 7 has no incarnation 5 (its incarnations, oldest first: 0, {BIG})"}


def test_a_disabled_camera_is_shown_as_such(node):
    node.apply(7, 1, 40)
    node.apply(8, 1, 41)
    node.core.role, node.core.leader_id = Role.LEADER, 2
    node.registry.set_enabled(7, False)
    node.commit_proposed()
    cameras = node.get(local("/api/v1/cameras")).json()["cameras"]
    assert [(c["camera_id"], c["enabled"]) for c in cameras] == [(7, False), (8, True)]
    assert node.get(local("/api/v1/cameras/7")).json()["enabled"] is False


def test_camera_status_is_active_for_three_intervals():
    assert camera_status(100.0, 100.0 + 3 * INTERVAL - 0.01, INTERVAL) == "active"
    assert camera_status(100.0, 100.0 + 3 * INTERVAL, INTERVAL) == "stale"


def test_camera_turns_stale_as_the_clock_moves(node):
    node.apply(7, 1, 40, at=NOW)
    assert node.get(local("/api/v1/cameras/7")).json()["status"] == "active"
    node.clock.advance(3 * INTERVAL)
    assert node.get(local("/api/v1/cameras/7")).json()["status"] == "stale"


def test_frames_are_paginated(node):
    for seq in range(1, 8):
        node.apply(7, seq, seq)
    page = node.get(local("/api/v1/cameras/7/frames?limit=3")).json()
    assert [f["seq"] for f in page["frames"]] == [1, 2, 3] and page["next_since"] == 3
    page = node.get(local("/api/v1/cameras/7/frames?limit=3&since=3")).json()
    assert [f["seq"] for f in page["frames"]] == [4, 5, 6] and page["next_since"] == 6
    page = node.get(local("/api/v1/cameras/7/frames?limit=3&since=6")).json()
    assert [f["seq"] for f in page["frames"]] == [7] and page["next_since"] is None


def test_frames_default_limit_is_1000_and_max_10000(node):
    node.apply_batch([(7, seq, seq % 100, "north", None) for seq in range(1, DEFAULT_LIMIT + 3)])
    page = node.get(local("/api/v1/cameras/7/frames")).json()
    assert len(page["frames"]) == DEFAULT_LIMIT and page["next_since"] == DEFAULT_LIMIT
    assert len(node.get(local(f"/api/v1/cameras/7/frames?limit={MAX_LIMIT}")).json()["frames"]) == DEFAULT_LIMIT + 2
    r = node.get(local(f"/api/v1/cameras/7/frames?limit={MAX_LIMIT + 1}"))
    assert r.status == 400 and "limit" in r.json()["error"]


def test_lot_history_reports_the_newest_frame_per_step(node):
    # Two cameras judge "north"; the step's value is the frame with the highest log index.
    node.apply(8, 1, 20, at=NOW - 3550)  # the first 60-s step ...
    node.apply(7, 1, 10, at=NOW - 3590)  # ... in which this frame came later in the log
    node.apply(7, 2, 30, at=NOW - 30)
    node.apply(7, 3, 99, at=NOW - 7200)  # outside the window
    node.apply(9, 1, 5, lot="south", at=NOW - 30)  # another lot
    history = node.get(local("/api/v1/lots/north/history")).json()
    assert history == {
        "lot": "north",
        "window": 3600,
        "start": NOW - 3590,  # the first frame in the window: the steps divide [start, end]
        "end": NOW,
        "points": [{"at": NOW - 3590, "free": 10}, {"at": NOW - 30, "free": 30}],
    }
    short = node.get(local("/api/v1/lots/north/history?window=60&points=2")).json()
    assert short["points"] == [{"at": NOW - 30, "free": 30}] and short["start"] == NOW - 30
    fine = node.get(local("/api/v1/lots/north/history?window=3600&points=1000")).json()
    assert [p["free"] for p in fine["points"]] == [10, 20, 30]  # steps of 3.59 s: every frame apart
    empty = node.get(local("/api/v1/lots/south/history?window=10")).json()
    assert empty == {"lot": "south", "window": 10, "start": None, "end": NOW, "points": []}


def test_cluster_describes_this_nodes_view(node):
    node.apply(7, 1, 40)
    doc = node.get("/api/v1/cluster").json()
    assert doc == {
        "node_id": 2,
        "role": "follower",
        "term": 3,
        "leader_id": 1,
        "commit_index": 1,
        "last_applied": 1,
        "last_index": 1,
        "members": [
            {"id": i, "raft": f"127.0.0.1:{7100 + i}", "client": f"127.0.0.1:{7200 + i}",
             "http": f"127.0.0.1:{7300 + i}", "match_index": None, "membership": "voter", "data_dir": "unknown"}
            for i in (1, 2, 3)
        ],
        "reactor_lag_ms": 0.0,
        "alarms": [],
        "cluster_id": CLUSTER_ID,
        "version": __version__,
        "protocol": PROTOCOL_VERSION,
        "data_dir_id": DATA_DIR_ID,
        "standing": None,
    }  # fmt: skip
    node.core.role, node.core.leader_id = Role.LEADER, 2
    node.core.match_indexes = {1: 1, 2: 1, 3: 0}
    doc = node.get("/api/v1/cluster").json()
    assert [m["match_index"] for m in doc["members"]] == [1, 1, 0]
    assert doc["role"] == "leader" and doc["leader_id"] == 2


def test_cluster_lists_the_cores_members_with_addresses_from_the_log(node):
    """Members are the core's configuration, not the config file; a learner says so."""
    node.core.membership = Membership((1, 2), (4,), 9)
    doc = node.get("/api/v1/cluster").json()
    assert [(m["id"], m["membership"]) for m in doc["members"]] == [(1, "voter"), (2, "voter"), (4, "learner")]
    assert doc["members"][2]["raft"] is None  # no CONFIG entry told this node node 4's addresses
    context = b'{"id":4,"raft":"10.0.0.4:1","client":"10.0.0.4:2","http":"10.0.0.4:3"}'
    data = confchange.encode(ConfChange(ConfChangeOp.ADD_LEARNER, 4, context, (1, 2), (4,)))
    node.driver.publish(events.EntriesPersisted((Entry(9, 3, EntryKind.CONFIG, data),)))
    member = node.get("/api/v1/cluster").json()["members"][2]
    assert (member["raft"], member["client"], member["http"]) == ("10.0.0.4:1", "10.0.0.4:2", "10.0.0.4:3")


def test_cluster_shows_whether_each_members_data_dir_is_the_one_recorded(node):
    """CONTRACT §10: "ok" recorded, "changed" came back with a new data dir, "unknown" not recorded yet."""
    record = encode_member_data_dir(MemberDataDir(1, "1" * 32))
    node.state.apply([Entry(1, 3, EntryKind.NORMAL, record)])
    node.identity.changed[3] = ("3" * 32, "4" * 32)
    doc = node.get("/api/v1/cluster").json()
    assert [m["data_dir"] for m in doc["members"]] == ["ok", "unknown", "changed"]


def test_a_node_not_in_good_standing_refuses_local_reads_but_shows_its_view(node):
    """A brand-new data dir no leader has given the cluster's state (a member that lost its
    data dir) must not answer local reads as a member (issue 13); /readyz says why."""
    nothing = SimpleNamespace(cluster_id=lambda: None, member_data_dirs=lambda retired=False: {})
    node.identity = ClusterIdentity(2, DataDirIdentity("9" * 32, created=True), nothing, node.driver, node.clock)
    node.build_site()
    r = node.get(local("/api/v1/lots"))
    assert r.status == 503 and "not a member in good standing" in r.json()["error"]
    doc = node.get("/api/v1/cluster").json()
    assert doc["cluster_id"] is None and "data dir is new" in doc["standing"]
    ready = node.get("/readyz")
    assert ready.status == 503 and "standing" in ready.json()["failing"]


def test_cluster_answers_without_a_leader(node):
    node.core.leader_id, node.core.role = None, Role.CANDIDATE
    r = node.get("/api/v1/cluster")
    assert r.status == 200 and r.json()["leader_id"] is None and r.json()["role"] == "candidate"
    assert node.core.asked == []  # no read index needed for the node's own view


def test_trailing_slash_and_head(node):
    assert node.get(local("/api/v1/lots/")).status == 200
    r = node.get(local("/api/v1/lots"), method="HEAD")
    assert r.status == 200 and r.body == b""


# ------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    "path, status, message",
    [
        ("/api/v1/cameras/abc/frames", 400, "camera id must be a whole number"),
        ("/api/v1/cameras/-3/frames", 400, "camera id must be a whole number"),
        ("/api/v1/cameras/0", 400, "camera id must be a whole number"),
        ("/api/v1/cameras/4294967296", 400, "camera id must be a whole number"),
        ("/api/v1/cameras/1.5", 400, "camera id must be a whole number"),
        ("/api/v1/cameras/7/frames?since=-1", 400, "since must be a whole number in 0.."),
        ("/api/v1/cameras/7/frames?since=x", 400, "since must be a whole number"),
        ("/api/v1/cameras/7/frames?since=99999999999999999999", 400, "since must be a whole number"),
        ("/api/v1/cameras/7/frames?limit=0", 400, "limit must be a whole number in 1..10000"),
        ("/api/v1/cameras/7/frames?since=1&since=2", 400, "parameter 'since' given 2 times"),
        ("/api/v1/cameras/7/frames?sinse=1", 400, "unknown parameter 'sinse'"),
        ("/api/v1/cameras/7/frames?incarnation=18446744073709551616", 400,
         "incarnation must be a whole number in 0..18446744073709551615"),
        ("/api/v1/cameras/7/frames?incarnation=-1", 400, "incarnation must be a whole number"),
        ("/api/v1/cameras/7/frames?incarnation=0x5", 400, "incarnation must be a whole number"),
        ("/api/v1/lots?consistency=strong", 400, "consistency must be 'linearizable' or 'local', got 'strong'"),
        ("/api/v1/cluster?consistency=", 400, "consistency must be"),
        ("/api/v1/lots/north/history?window=0", 400, "window must be"),
        ("/api/v1/cameras/99?consistency=local", 404, "unknown camera 99"),
        ("/api/v1/cameras/99/frames?consistency=local", 404, "unknown camera 99"),
        ("/api/v1/lots/west?consistency=local", 404, "unknown lot 'west' (lots: north, south)"),
        ("/api/v1/lots/west/history?consistency=local", 404, "unknown lot 'west'"),
        ("/api/v1/cameras?lot=west&consistency=local", 404, "unknown lot 'west'"),
        ("/api/v1/nothing", 404, "no such resource: /api/v1/nothing"),
        ("/api/v2/lots", 404, "no such resource"),
        ("/nothing", 404, "no such resource: /nothing"),
        ("/metrics/x", 404, "no such resource"),
        ("/static/nothing.js", 404, "no such resource"),
        ("/static/", 404, "no such resource"),
    ],
)
def test_errors_are_json_with_a_fitting_status(node, path, status, message):
    node.apply(7, 1, 40)
    r = node.get(path)
    assert r.status == status, r.body
    assert r.headers["content-type"] == "application/json"
    assert message in r.json()["error"]
    assert node.core.asked == []  # refused before any read index is spent


def test_other_methods_are_refused(node):
    r = node.get("/api/v1/lots", method="POST")
    assert r.status == 405 and r.headers["allow"] == "GET, HEAD"
    assert "POST" in r.json()["error"]


def test_unknown_camera_is_404_after_a_linearizable_read(node):
    request = node.request("/api/v1/cameras/99")
    assert request.response() is None
    node.read_state(node.core.asked[0], 1)
    node.apply(7, 1, 40)
    r = request.response()
    assert r.status == 404 and r.json() == {"error": "unknown camera 99"}


# ------------------------------------------------------------------ dashboard files


def test_dashboard_page_and_assets(node):
    page = node.get("/")
    assert page.status == 200 and page.headers["content-type"].startswith("text/html")
    assert b"/static/dashboard.js" in page.body and b"/static/dashboard.css" in page.body
    js = node.get("/static/dashboard.js")
    assert js.status == 200 and js.headers["content-type"].startswith("text/javascript")
    assert b"/api/v1/lots" in js.body
    css = node.get("/static/dashboard.css")
    assert css.status == 200 and css.headers["content-type"].startswith("text/css")


# Where a page names something to load or to link to: an HTML attribute or a JS
# property/assignment (src, href, ...), setAttribute, CSS url(), fetch(), import
# (static, dynamic, CSS @import), a WebSocket/EventSource/Worker ...
_WHERE = (
    r"\b(?:src|srcset|href|action|formaction|poster)\s*[=:]\s*[\"'`]?"
    r"|\bsetAttribute\(\s*[\"'](?:src|srcset|href|action|formaction|poster)[\"']\s*,\s*[\"'`]"
    r"|\burl\(\s*[\"']?|\bfetch\(\s*[\"'`]|\bimport\s*\(\s*[\"'`]|\bimport\s+[\"'`]|\bfrom\s+[\"'`]"
    r"|\bnew\s+(?:WebSocket|EventSource|Worker)\(\s*[\"'`]"
)
# ... an absolute URL (any scheme but data:) or a protocol-relative one (//host).
_ABSOLUTE = r"\s*(?:(?!data:)[a-z][a-z0-9+.-]*:|//)"
NETWORK_REFERENCE = re.compile(rf"(?:{_WHERE}){_ABSOLUTE}[^\s\"'`)]*", re.IGNORECASE)
# (A member's own dashboard is linked as `${location.protocol}//${m.http}/`: an address
# from the cluster API, on the page's own scheme, which this pattern does not match.)


def test_the_dashboard_loads_nothing_from_elsewhere(node):
    """No file of parkd/web/ (all served under /static/) names an absolute or
    protocol-relative URL to load or link: the dashboard works without Internet."""
    names = sorted(os.listdir(web_dir()))
    assert {"index.html", "dashboard.js", "dashboard.css"} <= set(names)
    found = set()
    for name in names:
        response = node.get(f"/static/{name}")
        assert response.status == 200, name
        found |= {(name, m.group(0)) for m in NETWORK_REFERENCE.finditer(response.body.decode("utf-8"))}
    assert sorted(found) == []


@pytest.mark.parametrize(
    "text",
    [
        '<link rel="stylesheet" href="https://cdn.example.com/x.css">',
        "<script src='//cdn.example.com/x.js'></script>",
        "<img src=http://example.com/a.png>",
        '@import url("https://fonts.example.com/f.css");',
        "@import 'https://fonts.example.com/f.css';",
        "body { background: url(//cdn.example.com/bg.png) }",
        'const r = await fetch("https://api.example.com/lots");',
        "const m = await import(`https://esm.example.com/chart.js`);",
        'import { chart } from "https://esm.example.com/chart.js";',
        'el.src = "wss://example.com/feed";',
        'a.setAttribute("href", "ftp://example.com/");',
        'new WebSocket("ws://example.com/feed")',
    ],
)
def test_the_no_network_check_catches_every_kind_of_reference(text):
    assert NETWORK_REFERENCE.search(text), text


@pytest.mark.parametrize(
    "text",
    ['<script src="/static/dashboard.js">', '<a href="/metrics">', "fetch(path, {", 'url("data:image/png;base64,AA")',
     'document.createElementNS("http://www.w3.org/2000/svg", "svg")', "// see https://example.com in a comment"],
)  # fmt: skip
def test_the_no_network_check_lets_local_references_and_other_text_pass(text):
    assert not NETWORK_REFERENCE.search(text), text
