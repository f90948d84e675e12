"""A snapshot file in transit: the stream with its digest trailer, and the resumable receiver."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from parkd.db import open_engine
from parkd.node.snapshot_stream import (
    DIGEST_SIZE,
    Received,
    SnapshotReceiver,
    file_sha256,
    iter_chunks,
    read_chunk,
    snapshot_sha256,
    transfer_size,
)
from parkd.parking.codec import FrameResult, encode
from parkd.parking.snapshot import SnapshotInfo, pin_state, read_snapshot_meta
from parkd.parking.state import ParkingState
from parkd.raft.types import Entry, EntryKind

LOTS = {"north": 100, "south": 60}


def make_snapshot(directory: Path, name: str, last: int, term: int) -> SnapshotInfo:
    """A snapshot file of a parking state that applied frames 1..last."""
    db = str(directory / f"{name}-state.db")
    engine = open_engine(db)
    frames = [FrameResult(1 + i % 4, "north" if i % 2 else "south", i, 1_000.0 + i, i % 50) for i in range(1, last + 1)]
    ParkingState(engine, LOTS).apply([Entry(i, term, EntryKind.NORMAL, encode(f)) for i, f in enumerate(frames, 1)])
    engine.dispose()
    members = [{"id": i} for i in (1, 2, 3)]
    info = pin_state(db).write(
        str(directory / f"{name}.db"), term=term, voters=(1, 2, 3), learners=(), config_index=0, members=members
    )
    assert (info.index, info.term) == (last, term)
    return info


@pytest.fixture
def snap(tmp_path) -> SnapshotInfo:
    return make_snapshot(tmp_path, "snap", 300, 2)


# -- checksums and chunks ---------------------------------------------------------------------------


def test_the_digest_is_kept_next_to_the_file(snap):
    digest = snapshot_sha256(snap.path)
    assert digest == file_sha256(snap.path) == hashlib.sha256(Path(snap.path).read_bytes()).hexdigest()
    assert Path(snap.path + ".sha256").read_text().split()[0] == digest
    assert snapshot_sha256(snap.path) == digest  # now from the side file


def test_the_transfer_stream_is_the_file_then_its_digest(snap):
    data = Path(snap.path).read_bytes()
    stream = data + hashlib.sha256(data).digest()
    assert transfer_size(snap.path) == len(stream) == snap.size_bytes + DIGEST_SIZE
    for size in (7, 1000, 4096, len(stream), len(stream) + 5):
        assert b"".join(c for _, c, _ in iter_chunks(snap.path, size)) == stream
    chunks = list(iter_chunks(snap.path, 4096))
    assert [done for _, _, done in chunks] == [False] * (len(chunks) - 1) + [True]
    assert read_chunk(snap.path, len(data) - 3, 10) == stream[len(data) - 3 : len(data) + 7]  # straddles
    assert read_chunk(snap.path, len(data) + 30, 10) == stream[-2:]
    assert read_chunk(snap.path, len(stream), 10) == b""
    with pytest.raises(ValueError):
        read_chunk(snap.path, -1, 10)


def test_a_stale_digest_file_is_recomputed(snap, tmp_path):
    old_digest = snapshot_sha256(snap.path)
    other = make_snapshot(tmp_path, "other", 200, 2)
    os.replace(other.path, snap.path)  # a new snapshot at the old path, digest file left behind
    assert snapshot_sha256(snap.path) == file_sha256(snap.path) != old_digest
    Path(snap.path + ".sha256").unlink()
    assert snapshot_sha256(snap.path) == file_sha256(snap.path)
    assert Path(snap.path + ".sha256").exists()


# -- receiving ---------------------------------------------------------------------------------------------


def send(receiver, path, index, term, size=4096, start=0, stop=None) -> Received:
    """Send the transfer stream of ``path`` from ``start`` up to ``stop``; the last answer."""
    answer = None
    for offset, data, done in iter_chunks(path, size, start):
        if stop is not None and offset >= stop:
            break
        answer = receiver.accept(index, term, offset, data, done)
        assert answer.accepted, answer
    return answer


def test_a_whole_transfer_arrives_verified(snap, tmp_path):
    receiver = SnapshotReceiver(tmp_path / "in")
    answer = send(receiver, snap.path, 300, 2)
    final = str(tmp_path / "in" / "snapshot-300-2.db")
    assert answer == Received(True, transfer_size(snap.path), True, final)
    assert Path(answer.path).read_bytes() == Path(snap.path).read_bytes()
    assert snapshot_sha256(answer.path) == file_sha256(snap.path)
    assert read_snapshot_meta(answer.path) == read_snapshot_meta(snap.path)
    assert receiver.expecting is None
    names = sorted(p.name for p in (tmp_path / "in").iterdir())
    assert names == ["snapshot-300-2.db", "snapshot-300-2.db.sha256"]


def test_the_digest_may_be_split_across_chunks(snap, tmp_path):
    receiver = SnapshotReceiver(tmp_path / "in", fsync=False)
    stream = b"".join(c for _, c, _ in iter_chunks(snap.path))
    cut = snap.size_bytes + 10
    assert receiver.accept(300, 2, 0, stream[:cut], False).accepted
    assert receiver.accept(300, 2, cut, stream[cut : cut + 1], False).accepted
    assert receiver.accept(300, 2, cut + 1, stream[cut + 1 :], True).done


def test_a_chunk_at_the_wrong_offset_is_refused_with_the_expected_one(snap, tmp_path):
    receiver = SnapshotReceiver(tmp_path / "in")
    first = read_chunk(snap.path, 0, 1000)
    assert receiver.accept(300, 2, 0, first, False) == Received(True, 1000)
    assert receiver.accept(300, 2, 2000, read_chunk(snap.path, 2000, 1000), False) == Received(
        False, 1000, error="chunk at 2000, expected 1000"
    )
    assert receiver.accept(300, 2, 0, first, False).next_offset == 1000  # a resent chunk
    assert receiver.expecting == (300, 2, 1000)
    assert send(receiver, snap.path, 300, 2, 1000, start=1000).done


def test_a_transfer_resumes_after_a_dropped_connection_and_a_restart(snap, tmp_path):
    receiver = SnapshotReceiver(tmp_path / "in")
    send(receiver, snap.path, 300, 2, 1000, stop=5000)
    assert receiver.expecting == (300, 2, 5000)
    restarted = SnapshotReceiver(tmp_path / "in")  # same directory, e.g. after a node restart
    assert restarted.expecting == (300, 2, 5000)
    refused = restarted.accept(300, 2, 0, read_chunk(snap.path, 0, 1000), False)
    assert (refused.accepted, refused.next_offset) == (False, 5000)
    answer = send(restarted, snap.path, 300, 2, 1000, start=5000)
    assert answer.done and Path(answer.path).read_bytes() == Path(snap.path).read_bytes()


def test_a_corrupted_transfer_is_refused_and_starts_over(snap, tmp_path):
    receiver = SnapshotReceiver(tmp_path / "in")
    chunks = list(iter_chunks(snap.path, 4096))
    for offset, data, done in chunks:
        if offset == 4096:
            data = bytes([data[0] ^ 1]) + data[1:]
        answer = receiver.accept(300, 2, offset, data, done)
    assert (answer.accepted, answer.next_offset, answer.path) == (False, 0, None)
    assert "checksum" in answer.error
    assert list((tmp_path / "in").iterdir()) == [] and receiver.expecting is None
    assert send(receiver, snap.path, 300, 2).done


def test_an_offset_zero_chunk_of_another_snapshot_abandons_the_current_one(snap, tmp_path):
    newer = make_snapshot(tmp_path, "newer", 310, 3)
    receiver = SnapshotReceiver(tmp_path / "in")
    send(receiver, snap.path, 300, 2, 1000, stop=3000)
    refused = receiver.accept(310, 3, 1000, read_chunk(newer.path, 1000, 1000), False)
    assert (refused.accepted, refused.next_offset) == (False, 0)
    assert receiver.expecting == (300, 2, 3000)
    answer = send(receiver, newer.path, 310, 3, 1000)
    assert answer.path.endswith("snapshot-310-3.db")
    names = sorted(p.name for p in (tmp_path / "in").iterdir())
    assert names == ["snapshot-310-3.db", "snapshot-310-3.db.sha256"]


def test_a_chunk_resent_after_completion_gets_the_same_answer(snap, tmp_path):
    receiver = SnapshotReceiver(tmp_path / "in")
    chunks = list(iter_chunks(snap.path, 4096))
    answer = send(receiver, snap.path, 300, 2)
    offset, data, done = chunks[-1]
    assert receiver.accept(300, 2, offset, data, done) == answer


def test_a_stream_claiming_another_snapshot_is_refused(snap, tmp_path):
    receiver = SnapshotReceiver(tmp_path / "in")
    *_, answer = (receiver.accept(299, 2, o, d, done) for o, d, done in iter_chunks(snap.path))
    assert not answer.accepted and "not 299/2" in answer.error
    junk = b"not a database" * 100
    stream = junk + hashlib.sha256(junk).digest()
    answer = receiver.accept(5, 1, 0, stream, True)
    assert not answer.accepted and "not a snapshot" in answer.error
    assert list((tmp_path / "in").iterdir()) == []
