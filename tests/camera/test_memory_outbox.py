"""The load generator's in-memory outbox answers ``pending`` as the SQLite outbox does."""

import random

from parkd.camera.memory_outbox import MemoryOutbox


def test_pending_is_the_unacked_frames_after_a_seq_in_order_up_to_a_limit_whichever_way_it_looks():
    outbox = MemoryOutbox(on_ack=lambda client, frame: None, rng=random.Random(1))
    for n in range(1, 201):
        outbox.add(b"x", float(n))
    for seq in [*range(1, 120, 3), 150, 151, 199]:  # acked out of order: holes
        outbox.ack(seq)
    unacked = sorted(outbox.frames)
    for after in (0, 1, 50, 119, 149, 150, 190, 198, 199, 200, 250):
        for limit in (None, 1, 2, 7, 1000):
            expected = [s for s in unacked if s > after][:limit]
            assert [f.seq for f in outbox.pending(after=after, limit=limit)] == expected, (after, limit)
    assert [f.captured_at for f in outbox.pending(after=197)] == [198.0, 200.0]
