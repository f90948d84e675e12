"""Admin endpoints (``POST /api/v1/admin/...``): bodies, leader redirection, outcomes.

On the node double: the real MembershipManager answers "not the leader" from
the scripted core; a stub manager stands in where an outcome is scripted.
"""

from __future__ import annotations

import pytest
from twisted.internet import defer

from parkd.config import Member, parse_address
from parkd.node.membership import ChangeLost, ChangeRefused, ChangeTimeout, NotLeader
from parkd.raft.core import Role
from parkd.raft.types import Membership

ADD = "/api/v1/admin/add-node"
REMOVE = "/api/v1/admin/remove-node"
TRANSFER = "/api/v1/admin/transfer-leader"
NEW = {"id": 4, "raft": "127.0.0.1:7104", "client": "127.0.0.1:7204", "http": "127.0.0.1:7304"}
DISABLE = "/api/v1/admin/camera-disable"
ENABLE = "/api/v1/admin/camera-enable"


class StubMembership:
    """Records operations; each returns a Deferred the test fires."""

    def __init__(self, real):
        self.real = real
        self.calls: list[tuple] = []
        self.pending: list[defer.Deferred] = []

    def address(self, node_id):
        return self.real.address(node_id)

    def members(self):
        return [{"id": 1, "membership": "voter"}]

    def _call(self, *call):
        self.calls.append(call)
        d = defer.Deferred()
        self.pending.append(d)
        return d

    def add_node(self, member, wait_voter=False, timeout=None):
        return self._call("add", member, wait_voter, timeout)

    def remove_node(self, node_id, timeout=None):
        return self._call("remove", node_id, timeout)

    def transfer_leader(self, target=None, timeout=None):
        return self._call("transfer", target, timeout)


@pytest.fixture
def stub(node):
    node.membership = StubMembership(node.membership)
    node.build_site()
    return node.membership


def answer(request):
    response = request.response()
    assert response is not None, "no answer yet"
    assert response.headers["content-type"] == "application/json"
    return response.status, response.json()


# ------------------------------------------------------------------ where to send it


@pytest.mark.parametrize("path, body", [(ADD, NEW), (REMOVE, {"id": 3}), (TRANSFER, {}), (TRANSFER, None),
                                        (DISABLE, {"id": 7}), (ENABLE, {"id": 7})])  # fmt: skip
def test_a_follower_names_the_leader_and_its_http_address(node, path, body):
    status, doc = answer(node.post(path, body))
    assert status == 421
    assert doc == {
        "error": "node 2 is not the leader; send this to node 1 at 127.0.0.1:7301",
        "leader_id": 1,
        "leader_http": "127.0.0.1:7301",
    }


def test_without_a_leader_it_is_503_with_retry_after(node):
    node.core.leader_id = None
    response = node.post(REMOVE, {"id": 3}).response()
    assert response.status == 503 and response.headers["retry-after"] == "1"
    assert response.json() == {"error": "node 2 knows no leader; try again shortly", "leader_id": None,
                               "leader_http": None}  # fmt: skip


# ------------------------------------------------------------------ outcomes


def test_add_node_answers_once_the_change_committed(node, stub):
    request = node.post(ADD, {**NEW, "wait": "voter", "timeout": 45})
    assert request.response() is None  # waits for the commit
    (call,) = stub.calls
    member = Member(4, *(parse_address(NEW[k], k) for k in ("raft", "client", "http")))
    assert call == ("add", member, True, 45.0)
    stub.pending[0].callback(Membership((1, 2, 3, 4), (), 17))
    status, doc = answer(request)
    assert status == 200
    assert doc == {"node_id": 4, "status": "voter", "config_index": 17, "voters": [1, 2, 3, 4], "learners": [],
                   "members": [{"id": 1, "membership": "voter"}]}  # fmt: skip


def test_default_waits(node, stub):
    node.post(ADD, NEW)
    node.post(REMOVE, {"id": 3})
    node.post(TRANSFER, {"id": 3})
    assert [c[-1] for c in stub.calls] == [10.0, 10.0, 10.0]
    assert stub.calls[0][2] is False  # add-node waits for the learner only, unless asked


def test_remove_node_and_transfer_answers(node, stub):
    removing = node.post(REMOVE, {"id": 3})
    stub.pending[0].callback(Membership((1, 2), (), 20))
    assert answer(removing)[1]["status"] == "removed"
    node.core.leader_id = 2
    moving = node.post(TRANSFER, {"id": 3})
    node.core.term = 4  # the new leader's term, as known when the answer is written
    stub.pending[1].callback(3)
    assert answer(moving) == (200, {"leader_id": 3, "previous_leader_id": 2, "term": 4, "cancelled": None})
    assert stub.calls[1] == ("transfer", 3, 10.0)


def test_3_10_a_transfer_to_the_leader_itself_says_what_it_cancelled(node, stub):
    node.core.leader_id, node.core.transferee = 2, 3  # node 2 leads and hands over to 3
    request = node.post(TRANSFER, {"id": 2})
    stub.pending[0].callback(2)
    assert answer(request) == (200, {"leader_id": 2, "previous_leader_id": 2, "term": 3, "cancelled": 3})


@pytest.mark.parametrize(
    "error, status, message",
    [
        (ChangeRefused("the membership change at index 12 is not committed yet"), 409,
         "the membership change at index 12 is not committed yet"),
        (ChangeRefused("node 9 is not a member (members: 1, 2, 3)"), 409, "node 9 is not a member"),
        (ChangeTimeout("removing node 3 (index 40) did not commit within 10 s"), 504, "did not commit within 10 s"),
        (ChangeLost("leadership changed before the change at index 40 committed"), 503, "leadership changed"),
        (NotLeader(3), 421, "send this to node 3 at 127.0.0.1:7303"),
    ],
)  # fmt: skip
def test_failures_map_to_statuses(node, stub, error, status, message):
    request = node.post(REMOVE, {"id": 9})
    stub.pending[0].errback(error)
    got, doc = answer(request)
    assert got == status and message in doc["error"]


def test_an_unexpected_failure_is_a_500_and_logged(node, stub, logged_errors):
    request = node.post(REMOVE, {"id": 3})
    stub.pending[0].errback(RuntimeError("boom"))
    assert answer(request) == (500, {"error": "internal error; see the node's log"})
    [event] = logged_errors
    assert event["log_format"] == "admin {operation} failed" and event["operation"] == "remove-node"
    assert event["log_failure"].check(RuntimeError) and str(event["log_failure"].value) == "boom"


def test_an_answer_that_cannot_be_written_is_a_500_and_logged(node, stub, logged_errors):
    request = node.post(REMOVE, {"id": 3})
    stub.pending[0].callback(object())  # no Membership: the answer cannot be made (a bug)
    assert answer(request) == (500, {"error": "internal error; see the node's log"})
    [event] = logged_errors
    assert event["log_format"] == "HTTP {path} failed" and event["path"] == REMOVE


def outcome(deferred):
    """What a fired Deferred's callback chain ended with (a Failure if a callback raised)."""
    results = []
    deferred.addBoth(results.append)
    [result] = results
    return result


@pytest.mark.parametrize(
    "fire",
    [lambda d: d.callback(Membership((1, 2), (), 20)), lambda d: d.errback(ChangeTimeout("did not commit"))],
    ids=["done", "failed"],
)
def test_the_client_going_away_is_harmless(node, stub, logged_errors, fire):
    request = node.post(REMOVE, {"id": 3})
    request.disconnect()
    fire(stub.pending[0])  # nothing to write to: nothing is written, nothing raises
    assert outcome(stub.pending[0]) is None
    assert logged_errors == [] and request.transport.value() == b""


# ------------------------------------------------------------------ bad requests


@pytest.mark.parametrize(
    "path, body, message",
    [
        (ADD, {**NEW, "id": 0}, "body.id: must be in 1..4294967295, got 0"),
        (ADD, {**NEW, "id": "4"}, "body.id: expected a whole number, got '4'"),
        (ADD, {**NEW, "id": True}, "body.id: expected a whole number"),
        (ADD, {k: v for k, v in NEW.items() if k != "client"}, "body.client: missing"),
        (ADD, {**NEW, "raft": "localhost"}, "body.raft: bad address 'localhost' (expected host:port)"),
        (ADD, {**NEW, "http": "h:0"}, "body.http: bad address 'h:0'"),
        (ADD, {**NEW, "http": 7304}, "body.http: expected a \"host:port\" string"),
        (ADD, {**NEW, "wait": "forever"}, "wait: expected one of learner, voter, got 'forever'"),
        (ADD, {**NEW, "timeout": 0}, "timeout: expected seconds in (0, 600]"),
        (ADD, {**NEW, "timeout": 601}, "timeout: expected seconds in (0, 600]"),
        (ADD, {**NEW, "colour": "red"}, "unknown field 'colour'"),
        (REMOVE, {}, "id: missing (a node id)"),
        (REMOVE, {"id": -1}, "id: expected a node id in 1..4294967295, got -1"),
        (REMOVE, {"id": 1.5}, "id: expected a node id"),
        (TRANSFER, {"id": "x"}, "id: expected a node id"),
        (TRANSFER, {"target": 3}, "unknown field 'target' (allowed: id, timeout)"),
        (DISABLE, {}, "id: missing (a camera id)"),
        (DISABLE, {"id": 0}, "id: expected a camera id in 1..4294967295, got 0"),
        (ENABLE, {"id": 2**32}, "id: expected a camera id in 1..4294967295"),
        (ENABLE, {"id": "7"}, "id: expected a camera id"),
        (DISABLE, {"id": True}, "id: expected a camera id"),
        (DISABLE, {"id": 7, "lot": "north"}, "unknown field 'lot' (allowed: id, timeout)"),
        (ADD, [1, 2], "body must be a JSON object"),
        (ADD + "?id=4", NEW, "admin operations take a JSON body, not query parameters"),
    ],
)
def test_bad_bodies_are_400_before_anything_happens(node, stub, path, body, message):
    status, doc = answer(node.post(path, body))
    assert status == 400 and message in doc["error"], doc
    assert stub.calls == []


def test_not_json_wrong_type_too_large(node, stub):
    assert answer(node.post(REMOVE, raw=b"{id: 3}")) == (400, {"error": "body is not valid JSON"})
    status, doc = answer(node.post(REMOVE, raw=b'{"id": 3}', content_type="text/plain"))
    assert status == 415 and "application/json" in doc["error"]  # a cross-site form cannot do this
    status, doc = answer(node.post(REMOVE, raw=b'{"id": 3, "x": "' + b"y" * 70_000 + b'"}'))
    assert status == 413
    assert stub.calls == []


def test_methods_and_unknown_operations(node, stub):
    response = node.get(ADD)
    assert response.status == 405 and response.headers["allow"] == "POST"
    assert "use POST" in response.json()["error"]
    status, doc = answer(node.post("/api/v1/admin/frobnicate", {}))
    assert status == 404
    assert "known: add-node, remove-node, transfer-leader, camera-disable, camera-enable" in doc["error"]
    status, _ = answer(node.post("/api/v1/admin", {}))
    assert status == 404
    assert node.get("/api/v1/lots?consistency=local", method="POST").status == 405  # reads stay GET-only


# ------------------------------------------------------------------ the camera registry


@pytest.fixture
def leader(node):
    """Node 2 leads; camera 7 has sent a frame."""
    node.core.role, node.core.leader_id = Role.LEADER, 2
    node.apply(7, 1, 40)
    return node


def test_disable_and_enable_answer_once_the_entry_is_applied(leader):
    request = leader.post(DISABLE, {"id": 7})
    assert request.response() is None  # proposed, waiting for the commit
    leader.commit_proposed()
    assert answer(request) == (200, {"camera_id": 7, "enabled": False, "index": 2})
    assert leader.get("/api/v1/cameras/7?consistency=local").json()["enabled"] is False
    request = leader.post(ENABLE, {"id": 7, "timeout": 3})
    leader.commit_proposed()
    assert answer(request) == (200, {"camera_id": 7, "enabled": True, "index": 3})


def test_a_camera_that_never_sent_a_frame_is_404(leader):
    status, doc = answer(leader.post(DISABLE, {"id": 8}))
    assert (status, doc) == (404, {"error": "camera 8 has sent no frame to this cluster"})
    assert leader.driver.proposed == []


def test_a_registry_change_not_applied_in_time_is_504_and_a_lost_one_503(leader):
    slow = leader.post(DISABLE, {"id": 7, "timeout": 2})
    leader.clock.advance(2.5)
    status, doc = answer(slow)
    assert status == 504 and "disabling camera 7 (index 2) did not commit within 2 s" in doc["error"]
    lost = leader.post(DISABLE, {"id": 7})
    leader.core.term = 4  # a new leader's entry took index 3
    leader.commit_proposed()
    status, doc = answer(lost)
    assert status == 503 and "leadership changed before the registry change" in doc["error"]
