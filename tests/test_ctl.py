"""parkctl (CONTRACT §7): tables, --json, finding the cluster, following the leader, exit codes.

The nodes are small in-process HTTP servers answering canned documents; one
test runs the installed ``parkctl`` script.  (tests/http/test_live.py runs
parkctl against a real cluster.)
"""

from __future__ import annotations

import io
import json
import os
import re
import socket
import subprocess
import sys

import pytest

from parkd import ctl, ctl_client
from parkd.launcher import write_config

from httpfake import JSONHandler, LocalHTTPServer


class FakeNode(LocalHTTPServer):
    """An HTTP server answering {path: (status, document)}; records the paths asked."""

    def __init__(self, routes=None):
        self.routes = dict(routes or {})
        self.asked: list[str] = []
        self.posted: list[tuple[str, str, dict]] = []  # (path, content type, body)
        node = self

        class Handler(JSONHandler):
            def do_POST(self):
                length = int(self.headers.get("content-length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                node.posted.append((self.path, self.headers.get("content-type"), body))
                self.do_GET()

            def do_GET(self):
                node.asked.append(self.path)
                answer = node.routes.get(self.path, (404, {"error": f"no such resource: {self.path}"}))
                self.send_json(*(answer() if callable(answer) else answer))

        super().__init__(Handler)


@pytest.fixture
def nodes():
    made = []

    def make(n):
        made.extend(FakeNode() for _ in range(n))
        return made[-n:]

    yield make
    for node in made:
        node.close()


def closed_port() -> str:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"127.0.0.1:{port}"


def view(node_id, role, leader_id, members, term=4, commit=50, applied=50, matches=None, last_index=50):
    return {
        "node_id": node_id,
        "role": role,
        "term": term,
        "leader_id": leader_id,
        "commit_index": commit,
        "last_applied": applied,
        "last_index": last_index,
        "members": [
            {"id": i, "raft": "r", "client": "c", "http": http, "match_index": (matches or {}).get(i)}
            for i, http in members.items()
        ],
    }


LOTS = {"lots": [
    {"id": "north", "capacity": 100, "free": 41, "cameras": 2, "updated_at": 1_700_000_000.0},
    {"id": "south", "capacity": 60, "free": None, "cameras": 0, "updated_at": None},
]}  # fmt: skip
CAMERAS = {"cameras": [
    {"camera_id": 7, "lot": "north", "free": 41, "last_seq": 12, "last_seen": 1_700_000_000.0, "status": "stale"},
]}  # fmt: skip
NO_LEADER = (503, {"error": "no leader known; try again shortly"})


def run(*argv, environ=None):
    out, err = io.StringIO(), io.StringIO()
    code = ctl.main(list(argv), out=out, err=err, environ=environ or {})
    return code, out.getvalue(), err.getvalue()


# ------------------------------------------------------------------ reads


def test_lots_table(nodes):
    (a,) = nodes(1)
    a.routes["/api/v1/lots"] = (200, LOTS)
    code, out, err = run("--cluster", a.address, "lots")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].split() == ["LOT", "FREE", "CAPACITY", "CAMERAS", "UPDATED"]
    assert lines[1].split()[:4] == ["north", "41", "100", "2"]
    assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \(\d+h ago\)", lines[1])
    assert lines[2].split() == ["south", "-", "60", "0", "never"]


def test_lots_and_cameras_json_is_the_api_document(nodes):
    (a,) = nodes(1)
    a.routes.update({"/api/v1/lots": (200, LOTS), "/api/v1/cameras": (200, CAMERAS)})
    code, out, _ = run("--cluster", a.address, "--json", "lots")
    assert code == 0 and json.loads(out) == LOTS
    code, out, _ = run("cameras", "--json", "--cluster", a.address)  # options after the command too
    assert code == 0 and json.loads(out) == CAMERAS


def test_cameras_table(nodes):
    (a,) = nodes(1)
    a.routes["/api/v1/cameras"] = (200, CAMERAS)
    code, out, _ = run("--cluster", a.address, "cameras")
    assert code == 0
    header, row = out.splitlines()
    assert header.split() == ["CAMERA", "LOT", "FREE", "LAST", "SEQ", "LAST", "SEEN", "STATUS"]
    assert row.split()[:4] == ["7", "north", "41", "12"] and row.split()[-1] == "stale"


def test_an_unreachable_node_is_skipped(nodes):
    (b,) = nodes(1)
    b.routes["/api/v1/lots"] = (200, LOTS)
    code, out, _ = run("--cluster", f"{closed_port()},{b.address}", "--json", "lots")
    assert code == 0 and json.loads(out) == LOTS


def test_a_node_without_leader_is_left_for_the_leader_it_names(nodes):
    a, b, c = nodes(3)
    members = {1: a.address, 2: b.address, 3: c.address}
    a.routes.update({"/api/v1/lots": NO_LEADER, "/api/v1/cluster": (200, view(1, "follower", 3, members))})
    c.routes["/api/v1/lots"] = (200, LOTS)
    code, out, _ = run("--cluster", f"{a.address},{b.address}", "--json", "lots")
    assert code == 0 and json.loads(out) == LOTS
    assert b.asked == []  # went straight to node 3, the leader node 1 named


def test_no_node_can_answer_is_exit_1_with_one_line(nodes):
    a, b = nodes(2)
    for n in (a, b):
        n.routes.update({"/api/v1/lots": NO_LEADER, "/api/v1/cluster": (200, view(1, "candidate", None, {}))})
    code, out, err = run("--cluster", f"{a.address},{b.address},{closed_port()}", "lots")
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and err.startswith("parkctl: no node could answer (")
    assert "503: no leader known" in err and "connection refused" in err


def test_a_refusal_other_than_503_is_exit_1(nodes):
    (a,) = nodes(1)
    a.routes["/api/v1/lots"] = (400, {"error": "bad"})
    code, _, err = run("--cluster", a.address, "lots")
    assert code == 1 and "HTTP 400: bad" in err and err.count("\n") == 1


# ------------------------------------------------------------------ status


def test_status_asks_every_member_and_shows_replication(nodes):
    a, b = nodes(2)
    gone = closed_port()
    members = {1: a.address, 2: b.address, 3: gone}
    a.routes["/api/v1/cluster"] = (200, view(1, "leader", 1, members, matches={1: 50, 2: 47, 3: 30}))
    b.routes["/api/v1/cluster"] = (200, view(2, "follower", 1, members, commit=49, applied=48))
    code, out, err = run("--cluster", b.address, "status")  # one address is enough
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].split() == ["NODE", "HTTP", "ROLE", "TERM", "COMMIT", "APPLIED", "MATCH", "LAG"]
    assert lines[1].split() == ["1", a.address, "leader", "*", "4", "50", "50", "50", "0"]
    assert lines[2].split() == ["2", b.address, "follower", "4", "49", "48", "47", "3"]
    assert lines[3].split()[:4] == ["3", gone, "down", "(connection"]
    assert lines[4] == "leader: node 1, term 4"


def test_status_json(nodes):
    (a,) = nodes(1)
    a.routes["/api/v1/cluster"] = (200, view(1, "candidate", None, {1: a.address}, term=9))
    code, out, _ = run("--cluster", a.address, "--json", "status")
    assert code == 0
    assert json.loads(out) == {
        "leader_id": None,
        "term": 9,
        "cluster_id": None,
        "cluster_ids": [],
        "nodes": [{"id": 1, "http": a.address, "reachable": True, "role": "candidate", "term": 9, "leader_id": None,
                   "commit_index": 50, "last_applied": 50, "match_index": None, "lag": None, "data_dir": None}],
    }  # fmt: skip


def test_status_without_leader_says_so(nodes):
    (a,) = nodes(1)
    a.routes["/api/v1/cluster"] = (200, view(1, "candidate", None, {1: a.address}))
    code, out, _ = run("--cluster", a.address, "status")
    assert code == 0 and out.splitlines()[-2].startswith("leader: none known")
    assert out.splitlines()[-1] == "cluster: id not known yet"


def test_status_shows_the_cluster_id_and_a_member_back_with_a_new_data_dir(nodes):
    """CONTRACT §10: the cluster id in ``parkctl status``; the leader's view of each data dir."""
    a, b = nodes(2)
    leader = view(1, "leader", 1, {1: a.address, 2: b.address})
    leader["cluster_id"] = "c" * 32
    leader["members"][1]["data_dir"] = "changed"
    a.routes["/api/v1/cluster"] = (200, leader)
    b.routes["/api/v1/cluster"] = (200, {**view(2, "follower", None, {1: a.address, 2: b.address}),
                                         "cluster_id": None})  # fmt: skip
    code, out, _ = run("--cluster", f"{a.address},{b.address}", "status")
    assert code == 0
    assert "node 2 came back with a new data dir: the cluster refuses it" in out
    assert out.splitlines()[-1] == "cluster: " + "c" * 32
    b.routes["/api/v1/cluster"] = (200, {**view(2, "leader", 2, {2: b.address}, term=3), "cluster_id": "d" * 32})
    code, out, _ = run("--cluster", f"{a.address},{b.address}", "status")
    assert out.splitlines()[-1] == f"cluster: {'c' * 32} (nodes answered for clusters {'c' * 32}, {'d' * 32})"


def test_version_names_the_package_and_the_raft_protocol(capsys):
    from parkd import __version__
    from parkd.wire import PROTOCOL_VERSION

    with pytest.raises(SystemExit) as exit_:
        ctl.main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out == f"parkctl {__version__} (raft protocol {PROTOCOL_VERSION})\n"


def test_status_with_no_node_up_is_exit_1():
    code, out, err = run("--cluster", f"{closed_port()},{closed_port()}", "status")
    assert code == 1 and out == "" and err.startswith("parkctl: no node answered (") and err.count("\n") == 1


# ------------------------------------------------------------------ finding the cluster


def test_config_file_gives_the_http_addresses(tmp_path, nodes):
    path = write_config(str(tmp_path / "parkd.toml"), nodes=1)
    from parkd.config import load_config

    http = load_config(path).members[0].http
    code, _, err = run("--config", path, "lots")
    assert code == 1 and f"{http}: connection refused" in err  # it asked the configured node


def test_environment_variable(nodes):
    (a,) = nodes(1)
    a.routes["/api/v1/lots"] = (200, LOTS)
    code, out, _ = run("--json", "lots", environ={"PARKD_CLUSTER": a.address})
    assert code == 0 and json.loads(out) == LOTS


def test_default_config_in_the_working_directory(tmp_path, monkeypatch):
    (tmp_path / "etc").mkdir()
    write_config(str(tmp_path / "etc" / "parkd.toml"), nodes=1)
    monkeypatch.chdir(tmp_path)
    code, _, err = run("lots")
    assert code == 1 and "connection refused" in err


@pytest.mark.parametrize(
    "argv, message",
    [
        ([], "the following arguments are required: COMMAND"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        (["--cluster", "nohost", "lots"], "bad address 'nohost'"),
        (["--cluster", "a:1", "--config", "x.toml", "lots"], "give --cluster or --config, not both"),
        (["--config", "/nonexistent/parkd.toml", "lots"], "no such file '/nonexistent/parkd.toml'"),
        (["--timeout", "0", "--cluster", "a:1", "lots"], "--timeout must be positive"),
        (["--cluster", "a:1", "remove-node", "x"], "argument id: invalid node id 'x'"),
        (["--cluster", "a:1", "remove-node", "0"], "argument id: invalid node id '0'"),
        (["--cluster", "a:1", "add-node", "4"], "the following arguments are required: raft, client, http"),
        (["--cluster", "a:1", "add-node", "4", "h:1", "nohost", "h:3"], "CLIENT: bad address 'nohost'"),
        (["--cluster", "a:1", "add-node", "4", "h:1", "h:2", "h:99999"], "HTTP: bad address 'h:99999'"),
        (["--cluster", "a:1", "transfer-leader", "1", "2"], "unrecognized arguments: 2"),
        (["lots"], "where is the cluster?"),
    ],
)
def test_usage_errors_are_exit_2_with_one_line(tmp_path, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)  # no etc/parkd.toml here
    code, out, err = run(*argv)
    assert code == 2 and out == ""
    assert err.startswith("parkctl: ") and err.count("\n") == 1
    assert message in err


def test_bad_environment_variable_is_a_usage_error():
    code, _, err = run("lots", environ={"PARKD_CLUSTER": "nope"})
    assert code == 2 and err.startswith("parkctl: $PARKD_CLUSTER: ")


# ------------------------------------------------------------------ membership and leadership


ADD = "/api/v1/admin/add-node"
REMOVE = "/api/v1/admin/remove-node"
TRANSFER = "/api/v1/admin/transfer-leader"


def changed(node_id, status, voters, learners=()):
    return {"node_id": node_id, "status": status, "config_index": 40, "voters": list(voters),
            "learners": list(learners), "members": []}  # fmt: skip


def not_leader(leader_id, leader_http):
    return (421, {"error": f"node 2 is not the leader; send this to node {leader_id} at {leader_http}",
                  "leader_id": leader_id, "leader_http": leader_http})  # fmt: skip


def test_add_node_follows_the_leader_and_waits_for_the_promotion(nodes):
    follower, leader = nodes(2)
    follower.routes[ADD] = not_leader(1, leader.address)
    leader.routes[ADD] = (200, changed(4, "voter", (1, 2, 3, 4)))
    code, out, err = run("--cluster", follower.address, "add-node", "4", "127.0.0.1:7104", "127.0.0.1:7204",
                         "127.0.0.1:7304")  # fmt: skip
    assert (code, err) == (0, "")
    assert out == "node 4 added and promoted to voter (voters 1, 2, 3, 4; learners none)\n"
    body = {"id": 4, "raft": "127.0.0.1:7104", "client": "127.0.0.1:7204", "http": "127.0.0.1:7304",
            "wait": "voter", "timeout": 30.0}  # fmt: skip
    assert follower.posted == [(ADD, "application/json", body)]
    assert leader.posted == [(ADD, "application/json", body)]


def test_add_node_without_waiting(nodes):
    (leader,) = nodes(1)
    leader.routes[ADD] = (200, changed(4, "learner", (1, 2, 3), (4,)))
    code, out, _ = run("--cluster", leader.address, "--timeout", "7", "add-node", "--no-wait", "4", "h:1", "h:2",
                       "h:3")  # fmt: skip
    assert code == 0 and out.startswith("node 4 added as a learner; the leader promotes it to voter once")
    assert leader.posted[0][2]["wait"] == "learner" and leader.posted[0][2]["timeout"] == 7.0


def test_remove_node_json(nodes):
    (leader,) = nodes(1)
    leader.routes[REMOVE] = (200, changed(3, "removed", (1, 2)))
    code, out, _ = run("--cluster", leader.address, "--json", "remove-node", "3")
    assert code == 0 and json.loads(out) == changed(3, "removed", (1, 2))
    assert leader.posted == [(REMOVE, "application/json", {"id": 3, "timeout": 30.0})]
    code, out, _ = run("--cluster", leader.address, "remove-node", "3")
    assert out == "node 3 removed (voters 1, 2; learners none); stop its process\n"


@pytest.mark.parametrize(
    "status, error",
    [
        (409, "the membership change at index 12 is not committed yet"),
        (409, "node 9 is not a member (members: 1, 2, 3)"),
        (409, "node 1 is the last voter; removing it would leave no cluster"),
        (504, "removing node 3 (index 40) did not commit within 30 s; it may still commit (see parkctl status)"),
        (400, "id: expected a node id"),
    ],
)
def test_a_refused_change_is_exit_1_with_the_reason(nodes, status, error):
    a, b = nodes(2)
    a.routes[REMOVE] = (status, {"error": error})
    code, out, err = run("--cluster", f"{a.address},{b.address}", "remove-node", "3")
    assert (code, out) == (1, "") and err == f"parkctl: {error}\n"
    assert b.posted == []  # a refusal is final: not asked elsewhere


def test_an_unreachable_node_is_skipped_and_no_leader_is_retried(nodes):
    (a,) = nodes(1)
    answers = iter([(503, {"error": "node 1 knows no leader; try again shortly", "leader_id": None}),
                    (200, changed(3, "removed", (1, 2)))])  # fmt: skip
    a.routes[REMOVE] = lambda: next(answers)
    code, out, err = run("--cluster", f"{closed_port()},{a.address}", "remove-node", "3")
    assert code == 0 and len(a.posted) == 2, err


def test_no_leader_until_the_deadline_is_exit_1(nodes):
    (a,) = nodes(1)
    a.routes[TRANSFER] = (503, {"error": "node 1 knows no leader; try again shortly", "leader_id": None})
    code, _, err = run("--cluster", a.address, "--timeout", "0.2", "transfer-leader")
    assert code == 1 and err.startswith("parkctl: no leader could take the request (") and err.count("\n") == 1


def test_a_request_without_answer_is_not_repeated_elsewhere(nodes):
    a, b = nodes(2)
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen()
    try:
        address = f"127.0.0.1:{silent.getsockname()[1]}"
        code, _, err = run("--cluster", f"{address},{b.address}", "--timeout", "0.3", "remove-node", "3")
    finally:
        silent.close()
    assert code == 1 and "the change may have been made, see parkctl status" in err
    assert b.posted == []


def test_transfer_leader(nodes):
    (a,) = nodes(1)
    a.routes[TRANSFER] = (200, {"leader_id": 3, "previous_leader_id": 1, "term": 8})
    code, out, _ = run("--cluster", a.address, "transfer-leader", "3")
    assert code == 0 and out == "leadership moved from node 1 to node 3\n"
    assert a.posted[-1][2] == {"id": 3, "timeout": 30.0}
    code, out, _ = run("--cluster", a.address, "transfer-leader")
    assert a.posted[-1][2] == {"timeout": 30.0}
    a.routes[TRANSFER] = (200, {"leader_id": 1, "previous_leader_id": 1, "term": 8})
    code, out, _ = run("--cluster", a.address, "transfer-leader", "1")
    assert out == "node 1 is already the leader (term 8)\n"
    a.routes[TRANSFER] = (200, {"leader_id": 1, "previous_leader_id": 1, "term": 8, "cancelled": 3})
    code, out, _ = run("--cluster", a.address, "transfer-leader", "1")
    assert code == 0 and out == "node 1 stays the leader: the transfer to node 3 is cancelled\n"


def test_following_leader_hints_is_bounded(nodes):
    a, b = nodes(2)
    a.routes[TRANSFER] = not_leader(2, b.address)
    b.routes[TRANSFER] = not_leader(1, a.address)
    code, _, err = run("--cluster", a.address, "--timeout", "0.2", "transfer-leader")
    assert code == 1 and "no leader could take the request" in err
    assert len(a.posted) + len(b.posted) <= 2 * (ctl_client.MAX_HOPS + 1)


def test_status_marks_learners_and_non_members(nodes):
    a, b, c = nodes(3)
    members = {1: a.address, 2: b.address}
    leader_view = view(1, "leader", 1, members, matches={1: 50, 2: 44})
    leader_view["members"][1]["membership"] = "learner"
    leader_view["members"][0]["membership"] = "voter"
    a.routes["/api/v1/cluster"] = (200, leader_view)
    b.routes["/api/v1/cluster"] = (200, view(2, "follower", 1, members))
    c.routes["/api/v1/cluster"] = (200, {**view(3, "follower", None, {}), "members": []})
    code, out, _ = run("--cluster", f"{a.address},{c.address}", "status")
    lines = out.splitlines()
    assert lines[1].split()[2:4] == ["leader", "*"]
    assert lines[2].split()[2:4] == ["follower", "(learner)"]
    assert lines[3].split()[2:5] == ["follower", "(not", "a"]


def test_the_installed_script(nodes):
    (a,) = nodes(1)
    a.routes["/api/v1/lots"] = (200, LOTS)
    script = os.path.join(os.path.dirname(sys.executable), "parkctl")
    done = subprocess.run(
        [script, "--cluster", a.address, "--json", "lots"], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0 and json.loads(done.stdout) == LOTS
    done = subprocess.run([script, "--cluster", a.address, "nope"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    done = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0 and "status" in done.stdout and "PARKD_CLUSTER" in done.stdout


# ------------------------------------------------------------------ the camera registry

DISABLE = "/api/v1/admin/camera-disable"
ENABLE = "/api/v1/admin/camera-enable"
REGISTRY = {"cameras": [
    {"camera_id": 7, "lot": "north", "free": 41, "last_seq": 12, "last_seen": 1_700_000_000.0, "status": "stale",
     "incarnation": 2**64 - 1, "enabled": False},
    {"camera_id": 8, "lot": "south", "free": 3, "last_seq": 2, "last_seen": 1_700_000_000.0, "status": "stale",
     "incarnation": 0, "enabled": True},
]}  # fmt: skip


def test_camera_list_shows_enabled_and_the_incarnation(nodes):
    (a,) = nodes(1)
    a.routes["/api/v1/cameras"] = (200, REGISTRY)
    code, out, _ = run("--cluster", a.address, "camera", "list")
    assert code == 0
    header, disabled, enabled = out.splitlines()
    assert header.split()[:4] == ["CAMERA", "LOT", "ENABLED", "INCARNATION"]
    assert disabled.split()[:5] == ["7", "north", "no", "(disabled)", str(2**64 - 1)]  # exact, all 20 digits
    assert enabled.split()[:4] == ["8", "south", "yes", "0"]
    code, out, _ = run("--cluster", a.address, "camera", "list", "--json")
    assert json.loads(out) == REGISTRY


def test_camera_disable_and_enable_follow_the_leader_and_say_what_happens(nodes):
    follower, leader = nodes(2)
    follower.routes[DISABLE] = not_leader(1, leader.address)
    leader.routes[DISABLE] = (200, {"camera_id": 7, "enabled": False, "index": 42})
    leader.routes[ENABLE] = (200, {"camera_id": 7, "enabled": True, "index": 43})
    code, out, err = run("--cluster", follower.address, "camera", "disable", "7")
    assert (code, err) == (0, "")
    assert out == ("camera 7 disabled (index 42): its frames are refused and kept in its outbox until "
                   "`parkctl camera enable 7`\n")  # fmt: skip
    assert leader.posted == [(DISABLE, "application/json", {"id": 7, "timeout": 30.0})]
    code, out, _ = run("--cluster", leader.address, "--timeout", "4", "camera", "enable", "7")
    assert out == "camera 7 enabled (index 43): it sends the frames it kept\n"
    assert leader.posted[-1] == (ENABLE, "application/json", {"id": 7, "timeout": 4.0})
    code, out, _ = run("--cluster", leader.address, "camera", "enable", "7", "--json")
    assert json.loads(out) == {"camera_id": 7, "enabled": True, "index": 43}


def test_camera_disable_of_an_unknown_camera_is_exit_1(nodes):
    (leader,) = nodes(1)
    leader.routes[DISABLE] = (404, {"error": "camera 9 has sent no frame to this cluster"})
    assert run("--cluster", leader.address, "camera", "disable", "9") == (
        1, "", "parkctl: camera 9 has sent no frame to this cluster\n"
    )  # fmt: skip


@pytest.mark.parametrize(
    "argv, message",
    [
        (("camera",), "the following arguments are required: list|disable|enable"),
        (("camera", "disable"), "the following arguments are required: id"),
        (("camera", "disable", "0"), "invalid camera id '0'"),
        (("camera", "enable", "4294967296"), "invalid camera id '4294967296'"),
        (("camera", "pause", "7"), "invalid choice: 'pause'"),
    ],
)
def test_camera_usage_errors_are_exit_2(nodes, argv, message):
    (a,) = nodes(1)
    code, out, err = run("--cluster", a.address, *argv)
    assert (code, out) == (2, "") and message in err and err.count("\n") == 1
    assert a.asked == []
