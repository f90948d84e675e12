"""The checker finds every kind of violation it promises to (planted in synthetic evidence).

One test per violation message of :func:`parkd.chaos.checker.check`; each plants
exactly that fault in otherwise good evidence and expects exactly that message.
Frames are keyed (camera_id, incarnation, seq); these cameras are in incarnation 0
unless a test says otherwise.
"""

from parkd.chaos.checker import Evidence, check


def good():
    frames = {(1, 0, 1): (3, 10), (1, 0, 2): (4, 11), (2, 0, 1): (5, 7)}
    return Evidence(
        acked={(1, 0, 1): (3, 10), (1, 0, 2): (4, 11)},
        applied_events={1: [{"camera_id": 1, "seq": 1, "index": 3}], 2: []},
        leaders=[{"term": 1, "leader_id": 1}, {"term": 2, "leader_id": 2}],
        frames={1: dict(frames), 2: dict(frames)},
        cameras={1: {1: (0, 2, 11), 2: (0, 1, 7)}, 2: {1: (0, 2, 11), 2: (0, 1, 7)}},
    )


def test_clean_run_has_no_violations():
    assert check(good()) == []


def test_conflicting_acks():
    ev = good()
    ev.conflicting_acks.append("(1, 1) acked as (3, 10) and as (8, 10)")
    assert check(ev) == ["(1, 1) acked as (3, 10) and as (8, 10)"]


def test_acked_frame_missing_on_a_node():
    ev = good()
    del ev.frames[2][1, 0, 1]
    assert check(ev) == ["node 2: 1 acked frames never applied, e.g. [(1, 0, 1)]"]


def test_acked_result_differs_from_applied():
    ev = good()
    for node in (1, 2):  # the same on both nodes, and the current value follows it
        ev.frames[node][1, 0, 2] = (4, 99)
        ev.cameras[node][1] = (0, 2, 99)
    assert check(ev) == [
        "node 1: acked result differs from applied (key, acked, applied): [((1, 0, 2), (4, 11), (4, 99))]",
        "node 2: acked result differs from applied (key, acked, applied): [((1, 0, 2), (4, 11), (4, 99))]",
    ]


def test_frame_applied_twice():
    ev = good()
    ev.applied_events[1].append({"camera_id": 1, "seq": 1, "index": 9})
    assert check(ev) == ["node 1: (1, 0, 1) applied twice, at 3 and 9"]


def test_two_frames_share_a_log_index():
    ev = good()
    for node in (1, 2):  # the same on both nodes: their histories agree
        ev.frames[node][2, 0, 1] = (4, 7)  # camera 2's frame at index 4, where (1, 0, 2) is
    assert check(ev) == ["node 1: two frames share a log index", "node 2: two frames share a log index"]


def test_histories_differ_at_an_index():
    ev = good()
    del ev.frames[2][2, 0, 1]
    ev.frames[2][3, 0, 1] = (5, 7)  # node 2 applied camera 3's frame at index 5, node 1 camera 2's
    ev.cameras[2] = {1: (0, 2, 11), 3: (0, 1, 7)}
    assert check(ev) == ["nodes 1 and 2 differ at index 5: ((2, 0, 1), 7) vs ((3, 0, 1), 7)"]


def test_two_leaders_in_one_term():
    ev = good()
    ev.leaders.append({"term": 2, "leader_id": 3})
    assert check(ev) == ["term 2: leaders [2, 3]"]


def test_current_value_not_the_highest_seq():
    ev = good()
    ev.cameras[1][2] = (0, 2, 7)  # camera 2 (never acked) claims a seq nobody applied
    assert check(ev) == ["node 1: camera 2 current seq 2, highest applied 1"]


def test_current_value_not_that_of_the_highest_seq():
    ev = good()
    ev.cameras[1][1] = (0, 2, 99)
    assert check(ev) == ["node 1: camera 1 shows 99, its seq 2 gave 11"]


def test_current_value_below_an_acked_seq():
    """Never alone: an acked seq that was applied is at most the highest applied, so a
    current seq below it is also not the highest applied one."""
    ev = good()
    ev.cameras[1][1] = (0, 1, 10)
    assert check(ev) == [
        "node 1: camera 1 current seq 1, highest applied 2",
        "node 1: camera 1 at seq 1 below acked 2",
    ]


def test_an_acked_camera_unknown_on_a_node():
    ev = good()
    del ev.cameras[2][1]
    assert check(ev) == ["node 2: acked camera 1 unknown"]


def test_a_camera_never_acked_may_be_unknown_to_a_node():
    """Only acked cameras must be known everywhere (a node may not have applied a
    camera's first frame yet); the checker used to count every camera it had seen."""
    ev = good()
    del ev.frames[2][2, 0, 1]
    del ev.cameras[2][2]
    assert check(ev) == []


def with_new_incarnation(ev, node=(1, 2)):
    """Camera 1's state dir was replaced: incarnation 9 starts at seq 1 (index 6), acked, current."""
    ev.acked[1, 9, 1] = (6, 30)
    for n in node:
        ev.frames[n][1, 9, 1] = (6, 30)
        ev.cameras[n][1] = (9, 1, 30)
    return ev


def test_a_camera_with_a_new_incarnation_from_seq_1_is_good():
    ev = with_new_incarnation(good())
    ev.frames[1][1, 0, 3] = ev.frames[2][1, 0, 3] = (7, 12)  # a late frame of the old incarnation
    assert check(ev) == []


def test_the_same_seq_applied_in_two_incarnations_is_not_applied_twice():
    ev = with_new_incarnation(good())
    ev.applied_events[1].append({"camera_id": 1, "incarnation": 9, "seq": 1, "index": 6})
    assert check(ev) == []


def test_current_value_not_that_of_the_newest_incarnation():
    ev = with_new_incarnation(good())
    ev.cameras[2][1] = (0, 2, 11)  # node 2 kept the old incarnation's value
    assert check(ev) == ["node 2: camera 1 current incarnation 0, newest 9"]


def test_a_node_database_is_read_per_incarnation(tmp_path):
    from parkd.db import open_engine
    from parkd.parking.codec import FrameResult, encode
    from parkd.parking.state import ParkingState
    from parkd.raft.types import Entry, EntryKind

    from parkd.chaos.checker import read_cameras, read_frames, read_node

    path = str(tmp_path / "node.db")
    engine = open_engine(path)
    results = [FrameResult(1, "north", 1, 10.0, 5), FrameResult(1, "north", 2, 11.0, 6),
               FrameResult(1, "north", 1, 20.0, 7, incarnation=2**64 - 1)]  # fmt: skip
    entries = [Entry(i, 1, EntryKind.NORMAL, encode(r)) for i, r in enumerate(results, start=1)]
    ParkingState(engine, {"north": 100}).apply(entries)
    engine.dispose()
    assert read_frames(path) == {(1, 0, 1): (1, 5), (1, 0, 2): (2, 6), (1, 2**64 - 1, 1): (3, 7)}
    assert read_cameras(path) == {1: (2**64 - 1, 1, 7)}
    assert read_node(path) == (read_frames(path), read_cameras(path))  # both from one read transaction
