"""Linearizable reads (ReadIndex, dissertation §6.4) versus local reads, on a node double.

The core is scripted: the test decides when the leader's ReadState arrives and
when the entries are applied, and moves a ``task.Clock`` for timeouts.
"""

from __future__ import annotations

from twisted.internet import defer

from parkd.node.reads import BATCH_PATIENCE, READ_ATTEMPTS, READ_RETRY_DELAY, READ_TIMEOUT


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
    first = node.request("/api/v1/lots")
    node.core.ready_count += 1  # the request left: the next read waits for its answer
    second = node.request("/api/v1/cameras?lot=north")
    (ctx1,) = node.core.asked
    node.read_state(ctx1 + 1000, 1)  # not ours: ignored
    node.read_state(ctx1, 2)
    (_, ctx2) = node.core.asked  # the second read's request went once the first was answered
    assert ctx1 != ctx2
    node.read_state(ctx2, 1)
    node.apply(7, 1, 40)
    assert second.response().status == 200 and first.response() is None
    node.apply(7, 2, 41)
    assert first.response().json()["lots"][0]["free"] == 41
    assert node.reads.pending == 0


def test_6_4_reads_before_the_request_leaves_share_it(node):
    """§6.4 batching: reads that arrive before the request left the node ride on it."""
    node.apply(7, 1, 40)
    requests = [node.request("/api/v1/lots/north") for _ in range(5)]
    assert len(node.core.asked) == 1 and node.reads.requests == 1
    node.read_state(node.core.asked[0], 1)
    assert [r.response().json()["free"] for r in requests] == [40] * 5
    metrics = node.get("/metrics").body.decode()
    assert "parkd_read_index_requests_total 1.0" in metrics
    assert 'parkd_http_reads_total{consistency="linearizable",outcome="ok"} 5.0' in metrics


def test_6_4_reads_after_the_request_left_wait_for_it_then_share_the_next(node):
    """A read that started after the request left must not take its answer (the
    leader may have recorded its commit index before a write acked meanwhile)."""
    node.apply(7, 1, 40)
    first = node.request("/api/v1/lots/north")
    node.core.ready_count += 1
    later = [node.request("/api/v1/lots/north") for _ in range(3)]
    assert len(node.core.asked) == 1  # one request in flight
    node.apply(7, 2, 41)  # a write acked after the first request left, before the later reads
    node.read_state(node.core.asked[0], 1)
    assert first.response().json()["free"] == 41
    assert [r.response() for r in later] == [None] * 3
    assert len(node.core.asked) == 2  # the three went together
    node.read_state(node.core.asked[1], 2)
    assert [r.response().json()["free"] for r in later] == [41] * 3
    assert node.reads.requests == 2 and node.reads.pending == 0


def test_a_request_never_answered_holds_the_next_batch_back_only_for_patience(node):
    node.apply(7, 1, 40)
    lost = node.request("/api/v1/lots/north")
    node.core.ready_count += 1
    second = node.request("/api/v1/lots/north")
    node.clock.advance(BATCH_PATIENCE - 0.001)
    assert len(node.core.asked) == 1
    node.clock.advance(0.001)
    assert len(node.core.asked) == 2
    node.read_state(node.core.asked[1], 1)
    assert second.response().status == 200 and lost.response() is None
    node.read_state(node.core.asked[0], 1)  # a late answer still serves its reads
    assert lost.response().status == 200


def test_6_4_a_batch_whose_leader_lost_leadership_asks_again_together(node):
    node.apply(7, 1, 40)
    requests = [node.request("/api/v1/lots/north") for _ in range(3)]
    node.read_state(node.core.asked[0], 0)
    node.clock.advance(READ_RETRY_DELAY)
    assert len(node.core.asked) == 2  # one request for the three retries
    node.read_state(node.core.asked[1], 1)
    assert [r.response().status for r in requests] == [200] * 3


def test_reads_that_all_went_away_leave_nothing_behind(node):
    node.apply(7, 1, 40)
    gone = [node.request("/api/v1/lots/north") for _ in range(2)]
    node.core.ready_count += 1
    queued = node.request("/api/v1/lots/north")
    for request in [*gone, queued]:
        request.disconnect()
    assert node.reads.pending == 0
    node.clock.advance(BATCH_PATIENCE)
    assert len(node.core.asked) == 1  # nothing left to ask for
    node.read_state(node.core.asked[0], 1)  # an answer for no one
    after = node.request("/api/v1/lots/north")
    assert len(node.core.asked) == 2  # nothing in flight any more: asked at once
    node.read_state(node.core.asked[1], 1)
    assert after.response().status == 200 and node.reads.pending == 0


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


class FailingBarrier:
    """A read barrier whose read fails with a bug (not ReadUnavailable)."""

    pending = 0

    def read(self):
        return defer.fail(RuntimeError("barrier bug"))


def test_a_read_barrier_that_fails_unexpectedly_is_a_500_and_logged(node, logged_errors):
    node.reads = FailingBarrier()
    node.build_site()
    r = node.get("/api/v1/lots")
    assert (r.status, r.json()) == (500, {"error": "internal error"})
    [event] = logged_errors
    assert event["log_format"] == "read barrier failed"
    assert event["log_failure"].check(RuntimeError) and str(event["log_failure"].value) == "barrier bug"


def test_a_read_that_fails_unexpectedly_is_a_500_and_logged(node, logged_errors, monkeypatch):
    monkeypatch.setattr(node.state, "lots", lambda: 1 / 0)  # a bug in the state's query
    r = node.get("/api/v1/lots?consistency=local")
    assert (r.status, r.json()) == (500, {"error": "internal error; see the node's log"})
    [event] = logged_errors
    assert event["log_format"] == "HTTP {path} failed" and event["path"] == "/api/v1/lots"
    assert event["log_failure"].check(ZeroDivisionError)
