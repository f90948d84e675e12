"""The camera outbox (CONTRACT §5): seq never reused, frames kept until acked, bounded."""

from parkd.camera.outbox import Outbox


def test_seq_survives_reopen_and_is_never_reused(tmp_path):
    path = str(tmp_path / "outbox.db")
    box = Outbox(path, limit=100)
    first, _ = box.add(b"a", 1.0)
    second, _ = box.add(b"b", 2.0)
    assert (first.seq, second.seq) == (1, 2)
    assert box.ack(1) and box.ack(2)
    box.close()
    box = Outbox(path, limit=100)
    third, _ = box.add(b"c", 3.0)
    assert third.seq == 3  # acked frames are gone, their seqs are not reused


def test_unacked_frames_survive_reopen_in_order(tmp_path):
    path = str(tmp_path / "outbox.db")
    box = Outbox(path, limit=100)
    for i in range(5):
        box.add(b"p%d" % i, float(i))
    box.ack(2)
    box.close()
    box = Outbox(path, limit=100)
    assert [f.seq for f in box.pending()] == [1, 3, 4, 5]
    assert [f.seq for f in box.pending(after=3)] == [4, 5]
    assert [f.seq for f in box.pending(limit=2)] == [1, 3]
    assert box.pending()[0].payload == b"p0"
    assert not box.ack(2)  # a second ack of the same frame changes nothing


def test_full_outbox_drops_the_oldest_and_counts(tmp_path):
    box = Outbox(str(tmp_path / "outbox.db"), limit=3)
    drops = [box.add(b"x", float(i))[1] for i in range(5)]
    assert drops == [0, 0, 0, 1, 1]
    assert [f.seq for f in box.pending()] == [3, 4, 5]
    assert box.counter("dropped") == 2


def test_discard_counts_a_refused_frame(tmp_path):
    box = Outbox(str(tmp_path / "outbox.db"), limit=3)
    box.add(b"x", 1.0)
    assert box.discard(1)
    assert box.pending() == [] and box.counter("dropped") == 1
