"""Linearizable reads (ReadIndex, dissertation §6.4) versus local reads, on a node double.

The core is scripted: the test decides when the leader's ReadState arrives and
when the entries are applied, and moves a ``task.Clock`` for timeouts.
"""

from __future__ import annotations

from parkd.node.reads import READ_ATTEMPTS, READ_RETRY_DELAY, READ_TIMEOUT


def free_of(response, lot="north"):
    return {lot["id"]: lot["free"] for lot in response.json()["lots"]}[lot]


def test_a_local_read_answers_at_once_from_applied_state(node):
    node.apply(7, 1, 40)
    r = node.get("/api/v1/lots?consistency=local")
    assert r.status == 200 and free_of(r) == 40
    assert node.core.asked == []


def test_a_linearizable_read_waits_for_the_read_index_then_for_the_apply(node):
    node.apply(7, 1, 40)
    request = node.request("/api/v1/lots")
    assert request.response() is None and len(node.core.asked) == 1
    # The leader has committed a newer frame (index 2) that this node has not applied yet.
    node.read_state(node.core.asked[0], 2)
    assert request.response() is None
    node.apply(7, 2, 41)
    r = request.response()
    assert r.status == 200 and free_of(r) == 41  # the frame acked before the read is included


def test_a_read_index_already_applied_answers_at_once(node):
    node.apply(7, 1, 40)
    request = node.request("/api/v1/cameras/7")
    node.read_state(node.core.asked[0], 1)
    assert request.response().json()["free"] == 40


def test_reads_complete_in_index_order_and_ignore_other_contexts(node):
    first, second = node.request("/api/v1/lots"), node.request("/api/v1/cameras?lot=north")
    ctx1, ctx2 = node.core.asked
    assert ctx1 != ctx2
    node.read_state(ctx1 + ctx2 + 1000, 1)  # not ours: ignored
    node.read_state(ctx2, 2)
    node.read_state(ctx1, 1)
    node.apply(7, 1, 40)
    assert first.response().status == 200 and second.response() is None
    node.apply(7, 2, 41)
    assert second.response().json()["cameras"][0]["last_seq"] == 2
    assert node.reads.pending == 0


def test_no_leader_known_is_503_with_retry_after(node):
    node.core.leader_id = None
    r = node.get("/api/v1/lots")
    assert r.status == 503
    assert r.headers["retry-after"] == "1"
    assert r.json() == {"error": "no leader known; try again shortly"}
    assert node.get("/api/v1/lots?consistency=local").status == 200  # local still answers


def test_a_failed_read_index_is_asked_again_then_refused(node):
    request = node.request("/api/v1/lots")
    for attempt in range(READ_ATTEMPTS):
        assert len(node.core.asked) == attempt + 1
        node.read_state(node.core.asked[-1], 0)  # leadership lost under the read
        node.clock.advance(READ_RETRY_DELAY)
    r = request.response()
    assert r.status == 503 and r.headers["retry-after"] == "1"
    assert "leader changed" in r.json()["error"]


def test_a_retry_that_succeeds_answers(node):
    node.apply(7, 1, 40)
    request = node.request("/api/v1/lots")
    node.read_state(node.core.asked[-1], 0)
    node.clock.advance(READ_RETRY_DELAY)
    node.read_state(node.core.asked[-1], 1)
    assert request.response().status == 200


def test_no_answer_from_the_leader_times_out_with_503(node):
    request = node.request("/api/v1/lots")
    node.clock.advance(READ_TIMEOUT - 0.01)
    assert request.response() is None
    node.clock.advance(0.01)
    r = request.response()
    assert r.status == 503 and r.headers["retry-after"] == "1"
    assert "no leader confirmed the read within 2 s" in r.json()["error"]
    node.read_state(node.core.asked[0], 1)  # a late answer changes nothing
    assert node.reads.pending == 0


def test_not_catching_up_in_time_is_503(node):
    request = node.request("/api/v1/lots")
    node.read_state(node.core.asked[0], 5)
    node.clock.advance(READ_TIMEOUT)
    r = request.response()
    assert r.status == 503 and "commit index 5" in r.json()["error"]


def test_a_client_that_goes_away_drops_its_read(node):
    request = node.request("/api/v1/lots")
    assert node.reads.pending == 1
    request.disconnect()
    assert node.reads.pending == 0
    assert [c for c in node.clock.getDelayedCalls() if c.func.__name__ == "_expire"] == []
    node.read_state(node.core.asked[0], 0)  # nothing is retried for it
    node.clock.advance(READ_RETRY_DELAY)
    assert len(node.core.asked) == 1


def test_a_client_that_goes_away_while_waiting_for_the_apply(node):
    request = node.request("/api/v1/lots")
    node.read_state(node.core.asked[0], 1)
    request.disconnect()
    node.apply(7, 1, 40)  # nothing to write to, nothing raised
    assert node.reads.pending == 0
