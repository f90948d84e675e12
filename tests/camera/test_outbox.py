"""The camera outbox (CONTRACT §5, §9): seq never reused, frames kept until acked, bounded; its incarnation."""

import random
import sqlite3
from pathlib import Path

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


# -- the incarnation (CONTRACT §9) -------------------------------------------------------------

OUTBOX_BEFORE_INCARNATIONS = Path(__file__).parent / "data" / "outbox-before-incarnations.sql"


class FixedBits(random.Random):
    """An rng whose 64-bit draws are given (to see 0 skipped and big values stored)."""

    def __init__(self, *draws: int):
        super().__init__(0)
        self.draws = list(draws)

    def getrandbits(self, k: int) -> int:
        assert k == 64
        return self.draws.pop(0)


def test_a_new_state_dir_gets_a_random_nonzero_incarnation_that_stays(tmp_path):
    path = str(tmp_path / "outbox.db")
    box = Outbox(path, limit=10)
    incarnation = box.incarnation
    assert 0 < incarnation < 2**64
    box.add(b"a", 1.0)
    box.close()
    assert Outbox(path, limit=10).incarnation == incarnation
    assert Outbox(str(tmp_path / "other" / "outbox.db"), limit=10).incarnation != incarnation


def test_zero_is_never_a_new_incarnation_and_every_64_bit_value_is_kept(tmp_path):
    path = str(tmp_path / "outbox.db")
    assert Outbox(path, limit=10, rng=FixedBits(0, 2**64 - 1)).incarnation == 2**64 - 1
    assert Outbox(path, limit=10, rng=FixedBits()).incarnation == 2**64 - 1  # read back, not drawn


def test_a_state_dir_of_the_previous_release_keeps_incarnation_0_and_its_frames(tmp_path):
    path = tmp_path / "outbox.db"
    conn = sqlite3.connect(path)
    conn.executescript(OUTBOX_BEFORE_INCARNATIONS.read_text())
    conn.close()
    box = Outbox(str(path), limit=100, rng=FixedBits())  # draws nothing
    assert box.incarnation == 0
    assert [(f.seq, f.payload) for f in box.pending()] == [(5, b"payload-5"), (6, b"payload-6"), (7, b"payload-7")]
    assert box.add(b"x", 3000.0)[0].seq == 8  # the seqs go on: the old frames stay exactly-once
    box.close()
    assert Outbox(str(path), limit=100).incarnation == 0
