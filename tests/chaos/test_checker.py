"""The checker finds every kind of violation it promises to (planted in synthetic evidence)."""

from parkd.chaos.checker import Evidence, check


def good():
    frames = {(1, 1): (3, 10), (1, 2): (4, 11), (2, 1): (5, 7)}
    return Evidence(
        acked={(1, 1): (3, 10), (1, 2): (4, 11)},
        applied_events={1: [{"camera_id": 1, "seq": 1, "index": 3}], 2: []},
        leaders=[{"term": 1, "leader_id": 1}, {"term": 2, "leader_id": 2}],
        frames={1: dict(frames), 2: dict(frames)},
        cameras={1: {1: (2, 11), 2: (1, 7)}, 2: {1: (2, 11), 2: (1, 7)}},
    )


def test_clean_run_has_no_violations():
    assert check(good()) == []


def test_acked_frame_missing_on_a_node():
    ev = good()
    del ev.frames[2][1, 1]
    assert any("acked frames never applied" in p for p in check(ev))


def test_acked_result_differs_from_applied():
    ev = good()
    ev.frames[2][1, 2] = (4, 99)
    assert any("acked result differs" in p for p in check(ev))


def test_frame_applied_twice():
    ev = good()
    ev.applied_events[1].append({"camera_id": 1, "seq": 1, "index": 9})
    assert any("applied twice" in p for p in check(ev))


def test_histories_differ_at_an_index():
    ev = good()
    ev.frames[2][2, 1] = (4, 7)  # another frame at index 4 on node 2
    assert any("differ at index 4" in p or "share a log index" in p for p in check(ev))


def test_two_leaders_in_one_term():
    ev = good()
    ev.leaders.append({"term": 2, "leader_id": 3})
    assert "term 2: leaders [2, 3]" in check(ev)


def test_current_value_not_the_highest_seq():
    ev = good()
    ev.cameras[1][1] = (1, 10)
    assert any("current seq 1, highest applied 2" in p for p in check(ev))


def test_conflicting_acks():
    ev = good()
    ev.conflicting_acks.append("(1, 1) acked as (3, 10) and as (8, 10)")
    assert check(ev) == ["(1, 1) acked as (3, 10) and as (8, 10)"]
